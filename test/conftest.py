"""Test-wide environment: ROS traffic stays on this machine and in this run's own domain."""
import os

# Discovery only on localhost; ROS_LOCALHOST_ONLY is ignored by Kilted.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# A per-run domain so parallel runs on one machine never see each other's nodes.
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('PYOPENGL_PLATFORM', 'egl')
