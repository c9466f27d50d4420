"""What decides how hard to prune: the coarse/fine controller and the end-effector kinematics. No ROS, no torch."""
