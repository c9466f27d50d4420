"""ROS-free simulation: a MuJoCo tabletop suite for a 6-DoF arm and a scripted expert.

``TabletopEnv`` (in ``env``) builds the scene from ``assets/arm.urdf`` so that the simulated
kinematic chain is exactly the one pinocchio reads in ``vla_prune_ros.kinematics``.
Importing this package does not import rclpy; the ROS wrapper lives in ``sim_node``.
"""
from vla_prune_ros.sim.env import (
    ACTION_NAMES,
    TASK_KINDS,
    Observation,
    TabletopEnv,
    TaskSpec,
)
from vla_prune_ros.sim.expert import ScriptedExpert

__all__ = [
    'ACTION_NAMES',
    'TASK_KINDS',
    'Observation',
    'ScriptedExpert',
    'TabletopEnv',
    'TaskSpec',
]
