"""The built-in simulated arm and the policy node: ``ros2 launch vla_prune_ros sim_demo.launch.py``.

Starts ``vla_prune_sim`` (MuJoCo arm, cameras, joint states, reset service) and
``vla_prune_node`` with ``config/sim_robot.yaml`` and the bundled default policy. Send goals
with ``ros2 action send_goal /run_instruction ...`` after ``ros2 service call /reset_episode ...``.
Without a ROS install, ``vla-prune demo`` does the same and plays the user's part.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vla_prune_ros.paths import DEFAULT_POLICY
from vla_prune_ros.parameters import NODE_NAME, resolve_launch_parameters


def _nodes(context):
    config_dir = os.path.join(get_package_share_directory('vla_prune_ros'), 'config')
    checkpoint = LaunchConfiguration('checkpoint').perform(context) or str(DEFAULT_POLICY)
    parameters = resolve_launch_parameters(LaunchConfiguration('method').perform(context),
                                           overrides={'checkpoint': checkpoint,
                                                      'execution': LaunchConfiguration('execution').perform(context)},
                                           config_files=[os.path.join(config_dir, 'sim_robot.yaml')],
                                           config_dir=config_dir)
    return [Node(package='vla_prune_ros', executable='vla_prune_sim', name='vla_prune_sim', output='screen'),
            Node(package='vla_prune_ros', executable='vla_prune_node', name=NODE_NAME, output='screen',
                 parameters=[parameters])]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('method', default_value='specprune',
                              description='none | specprune | lightvla | lightvla_star'),
        DeclareLaunchArgument('checkpoint', default_value='', description='default: the bundled policy'),
        DeclareLaunchArgument('execution', default_value='', description='sync | async (default: the files)'),
        OpaqueFunction(function=_nodes),
    ])
