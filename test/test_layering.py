"""The core imports without ROS: model, pruning, policy, controller, kinematics, data, training, sim."""
import subprocess
import sys

import pytest

CORE_MODULES = ['vla_prune_ros.model', 'vla_prune_ros.model.checkpoint', 'vla_prune_ros.model.oft_checkpoint',
                'vla_prune_ros.model.flops', 'vla_prune_ros.pruning.specprune', 'vla_prune_ros.pruning.lightvla',
                'vla_prune_ros.pruning.lightvla_star', 'vla_prune_ros.policy', 'vla_prune_ros.control.controller',
                'vla_prune_ros.control.kinematics', 'vla_prune_ros.data.images', 'vla_prune_ros.parameters.table',
                'vla_prune_ros.data.demonstrations', 'vla_prune_ros.training', 'vla_prune_ros.sim.env',
                'vla_prune_ros.evaluation', 'vla_prune_ros.benchmark']
ROS_PACKAGES = ['rclpy', 'sensor_msgs', 'std_msgs', 'trajectory_msgs', 'diagnostic_msgs', 'vla_prune_interfaces']


@pytest.mark.parametrize('module', CORE_MODULES)
def test_core_module_imports_without_ros(module):
    blocked = '; '.join(f'sys.modules[{name!r}] = None' for name in ROS_PACKAGES)
    script = f'import sys; {blocked}\nimport {module}\nprint("ok")\n'
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-2000:]
