"""vla_prune_ros: token-pruned OpenVLA-OFT policies behind a ROS 2 action server.

Everything except ``node/`` and ``sim/sim_node.py`` imports without ROS; ``data.rosbag``,
``sim.ros_episodes`` and ``commands.record`` import rclpy only inside the functions that use it.
"""
__version__ = '0.1.0'
