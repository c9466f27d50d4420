"""rosbag2 recordings of a robot -> the demonstrations ``vla-prune train`` reads (``vla-prune dataset from-bag``).

ROS-free (rosbags, numpy, pinocchio, OpenCV): it runs on a laptop without ROS.

  robot.py      what the converter takes from the robot config YAML the node uses
  streams.py    one bag's camera, joint-state, instruction and URDF messages, checked (``BagError``)
  alignment.py  the control grid, stamp matching with a tolerance, contiguous runs
  convert.py    delta-pose actions and proprio per step, episodes, statistics, the report
"""
from .convert import convert_bags  # noqa: F401
from .robot import RecordingConfig  # noqa: F401
from .streams import BagError  # noqa: F401
