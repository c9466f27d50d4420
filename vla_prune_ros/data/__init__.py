"""Data on disk and on the wire, without ROS: image conversion, demonstrations, rosbag2 read/write."""
