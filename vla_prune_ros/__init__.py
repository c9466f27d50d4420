"""vla_prune_ros: token-pruned OpenVLA-OFT policies behind a ROS 2 action server.

Everything except ``node``, ``sim.sim_node``, ``ros_io`` and ``recording`` imports without ROS.
"""
__version__ = '0.1.0'
