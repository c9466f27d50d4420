"""Launch vla_prune_node: ``ros2 launch vla_prune_ros vla_prune.launch.py method:=specprune checkpoint:=/path``.

Thin on purpose: which files are merged and how is ``vla_prune_ros.parameters.resolve_launch_parameters``
(unit-tested without ``launch``). Arguments:
  method        none | specprune | lightvla | lightvla_star   (loads config/<method>.yaml)
  checkpoint    checkpoint directory
  config        extra params file merged last (optional)
  robot_config  robot params file (default: config/sim_robot.yaml)
  control_dt, max_input_age   overrides (empty: from the files)
  execution     sync | async (override; empty: from the files, default sync)
  dry_run       true: run the model and publish stats, feedback and diagnostics but no chunk (the robot
                does not move); a safe first run of a new policy
  record        true: also record the node's topics with ``ros2 bag record`` (MCAP; the topic list is
                ``vla_prune_ros.parameters.recorded_topics``, as ``vla-prune demo`` records)
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vla_prune_ros.parameters import NODE_NAME, recorded_topics, resolve_launch_parameters


def _node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    config_dir = os.path.join(get_package_share_directory('vla_prune_ros'), 'config')
    parameters = resolve_launch_parameters(
        arg('method'),
        overrides={'checkpoint': arg('checkpoint'), 'control_dt': arg('control_dt'),
                   'max_input_age': arg('max_input_age'), 'execution': arg('execution'), 'dry_run': arg('dry_run')},
        config_files=[arg('robot_config'), arg('config')],
        config_dir=config_dir)
    # The recorded topics follow the resolved parameters (camera and joint topics of the robot config).
    record = ExecuteProcess(cmd=['ros2', 'bag', 'record', '--storage', 'mcap', *recorded_topics(parameters)],
                            output='screen', condition=IfCondition(LaunchConfiguration('record')))
    return [Node(package='vla_prune_ros', executable='vla_prune_node', name=NODE_NAME, output='screen',
                 parameters=[parameters]), record]


def generate_launch_description():
    config_dir = os.path.join(get_package_share_directory('vla_prune_ros'), 'config')
    return LaunchDescription([
        DeclareLaunchArgument('method', default_value='specprune',
                              description='none | specprune | lightvla | lightvla_star'),
        DeclareLaunchArgument('checkpoint', description='checkpoint directory'),
        DeclareLaunchArgument('config', default_value='', description='extra params file, merged last'),
        DeclareLaunchArgument('robot_config', default_value=os.path.join(config_dir, 'sim_robot.yaml'),
                              description='robot params file'),
        DeclareLaunchArgument('control_dt', default_value='', description='s between chunk steps (override)'),
        DeclareLaunchArgument('max_input_age', default_value='', description='s before input is stale (override)'),
        DeclareLaunchArgument('execution', default_value='', description='sync | async (override)'),
        DeclareLaunchArgument('dry_run', default_value='',
                              description='true: publish no action_chunk / joint_trajectory (override)'),
        DeclareLaunchArgument('record', default_value='false', description='record the topics to a bag'),
        OpaqueFunction(function=_node),
    ])
