"""ROS-free simulation: a MuJoCo tabletop suite for a 6-DoF arm and a scripted expert.

``TabletopEnv`` (in ``env``) builds the scene from ``assets/arm.urdf`` so that the simulated
kinematic chain is exactly the one pinocchio reads in ``vla_prune_ros.control.kinematics``.
Importing this package does not import rclpy; the ROS wrapper lives in ``sim_node``.
"""
import os

# Headless rendering: must be set before mujoco is imported anywhere in the process, and this
# package's __init__ runs before any of its modules.
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('PYOPENGL_PLATFORM', 'egl')

from vla_prune_ros.sim.env import ACTION_NAMES, SimObservation, TabletopEnv  # noqa: E402
from vla_prune_ros.sim.expert import ScriptedExpert  # noqa: E402
from vla_prune_ros.sim.tasks import TASK_KINDS, TaskSpec  # noqa: E402

__all__ = [
    'ACTION_NAMES',
    'TASK_KINDS',
    'SimObservation',
    'ScriptedExpert',
    'TabletopEnv',
    'TaskSpec',
]
