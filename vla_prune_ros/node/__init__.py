"""``vla_prune_node``: the rclpy shell around the ROS-free core."""
