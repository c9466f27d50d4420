"""config/fastdds_large_frames.xml delivers best-effort raw frames over 1 MB between processes.

A publisher process sends 1280x720 rgb8 frames (2.7 MB) with sensor-data QoS; a subscriber process
counts what arrives. With the profile both get a 64 MB shared-memory segment, and frames arrive.
"""
import os
import sys

from ros_helpers import REPO, Process, domain_id, ros_env

PROFILE = REPO / 'config' / 'fastdds_large_frames.xml'
WIDTH, HEIGHT = 1280, 720


def start(role: str, domain: int, profile: bool) -> Process:
    extra = {'FASTDDS_DEFAULT_PROFILES_FILE': str(PROFILE)} if profile else {}
    env = ros_env(domain, **extra)
    if not profile:
        env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    return Process([sys.executable, __file__, role], env)


def test_the_large_frame_profile_delivers_frames_over_one_megabyte():
    domain = domain_id(__name__)
    subscriber = start('subscribe', domain, profile=True)
    publisher = start('publish', domain, profile=True)
    try:
        assert subscriber.wait_for('subscribed', 30), subscriber.lines
        line = subscriber.wait_for(r'^received 10 frames of 2764800 bytes', 60)
        assert line is not None, subscriber.lines[-5:] + publisher.lines[-5:]
    finally:
        publisher.stop()
        subscriber.stop()


def _main(role: str) -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node(f'large_frames_{role}')
    if role == 'publish':
        publisher = node.create_publisher(Image, 'large_frames', qos_profile_sensor_data)
        frame = Image(height=HEIGHT, width=WIDTH, encoding='rgb8', step=WIDTH * 3, data=bytes(WIDTH * HEIGHT * 3))
        node.create_timer(0.1, lambda: publisher.publish(frame))
    else:
        count = [0]

        def on_frame(msg):
            count[0] += 1
            print(f'received {count[0]} frames of {len(msg.data)} bytes', flush=True)
        node.create_subscription(Image, 'large_frames', on_frame, qos_profile_sensor_data)
        print('subscribed', flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, Exception):  # noqa: BLE001 - Ctrl-C ends the helper
        pass
    os._exit(0)


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    _main(sys.argv[1])
