"""The node's parameters without ROS: the table, its checks, params files and the launch merge."""
