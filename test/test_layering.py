"""The ROS-free rule: every module of the package outside ``node/`` and ``sim/sim_node.py`` imports
with rclpy and the ROS message packages blocked. The modules are found by walking the package."""
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'vla_prune_ros'
ROS_SHELL = ('node', 'sim/sim_node.py')
ROS_PACKAGES = ['rclpy', 'sensor_msgs', 'std_msgs', 'trajectory_msgs', 'diagnostic_msgs', 'builtin_interfaces',
                'rcl_interfaces', 'action_msgs', 'vla_prune_interfaces']


def core_modules() -> list[str]:
    modules = []
    for path in sorted(PACKAGE.rglob('*.py')):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(ROS_SHELL) or path.name == '__main__.py':
            continue
        parts = ('vla_prune_ros/' + relative).removesuffix('.py').removesuffix('/__init__').split('/')
        modules.append('.'.join(parts))
    return modules


def test_the_walk_finds_the_core():
    modules = core_modules()
    assert {'vla_prune_ros.policy', 'vla_prune_ros.parameters.checks', 'vla_prune_ros.commands.demo',
            'vla_prune_ros.sim.env', 'vla_prune_ros.data.rosbag'} <= set(modules)
    assert not [m for m in modules if m.startswith('vla_prune_ros.node') or m.endswith('sim_node')]


@pytest.mark.parametrize('module', core_modules())
def test_core_module_imports_without_ros(module):
    blocked = '; '.join(f'sys.modules[{name!r}] = None' for name in ROS_PACKAGES)
    script = f'import sys; {blocked}\nimport {module}\nprint("ok")\n'
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-2000:]
