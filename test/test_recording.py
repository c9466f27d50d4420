"""Tests for vla_prune_ros.data.rosbag: real rosbag2 recording across two processes.

A separate Python process publishes sensor_msgs/Image (best-effort, like a camera),
sensor_msgs/JointState and vla_prune_interfaces/ActionChunk at 20 Hz over real DDS.
We record it into MCAP in this process, and into sqlite3 with `vla-prune record` in a
third process stopped by SIGINT, then read the bags back with rosbags and with
rclpy's own deserializer.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from vla_prune_ros.data.images import image_fields_to_rgb
from vla_prune_ros.cli import main as vla_prune
from vla_prune_ros.data.rosbag import BagRecorder, find_msg_file, make_typestore, read_bag

DOMAIN_ID = 1 + os.getpid() % 100
PREFIX = f'/test_recording_{os.getpid()}'
IMAGE_TOPIC, JOINT_TOPIC, CHUNK_TOPIC = f'{PREFIX}/camera/image', f'{PREFIX}/joint_states', f'{PREFIX}/action_chunk'
TOPICS = [IMAGE_TOPIC, JOINT_TOPIC, CHUNK_TOPIC]
IMAGE_H, IMAGE_W = 6, 8

# The publisher process. Every message carries its sequence number so the values read back
# from the bag can be checked against what was sent.
PUBLISHER = r'''
import sys, time
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from vla_prune_interfaces.msg import ActionChunk
from vla_prune_ros.data.images import fill_image_msg

prefix, lifetime, height, width = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rclpy.init()
node = rclpy.create_node('test_recording_publisher')
image_pub = node.create_publisher(Image, prefix + '/camera/image', qos_profile_sensor_data)
joint_pub = node.create_publisher(JointState, prefix + '/joint_states', 10)
chunk_pub = node.create_publisher(ActionChunk, prefix + '/action_chunk', 10)
seq = 0

def tick():
    global seq
    stamp = node.get_clock().now().to_msg()
    rgb = ((np.arange(height * width * 3) + seq) % 256).astype(np.uint8).reshape(height, width, 3)
    image_pub.publish(fill_image_msg(Image(), rgb, 'bgr8', stamp=stamp, frame_id=f'camera_{seq}'))
    joint_pub.publish(JointState(name=['j1', 'j2', 'j3'], position=[float(seq), seq / 2, -float(seq)],
                                 velocity=[0.1, 0.2, 0.3]))
    chunk = ActionChunk(dt=0.05, dimension_names=['dx', 'dy', 'dz'], chunk_length=2, action_dim=3,
                        actions=[seq + 0.25 * k for k in range(6)], sequence=seq, method='specprune',
                        controller_mode='fine' if seq % 2 else 'coarse')
    chunk.header.stamp = stamp
    chunk.header.frame_id = 'base_link'
    chunk_pub.publish(chunk)
    seq += 1

node.create_timer(0.05, tick)
print('publishing', flush=True)
deadline = time.monotonic() + lifetime
while rclpy.ok() and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
'''


def ros_env():
    return dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
                PYTHONUNBUFFERED='1')


@pytest.fixture(scope='module')
def publisher():
    saved = {k: os.environ.get(k) for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    os.environ.update(ROS_DOMAIN_ID=str(DOMAIN_ID), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    process = subprocess.Popen([sys.executable, '-c', PUBLISHER, PREFIX, '60', str(IMAGE_H), str(IMAGE_W)],
                               env=ros_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout.readline().strip() == 'publishing', 'publisher process failed to start'
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def expected_rgb(seq):
    return ((np.arange(IMAGE_H * IMAGE_W * 3) + seq) % 256).astype(np.uint8).reshape(IMAGE_H, IMAGE_W, 3)


def check_decoded_messages(records, window_ns):
    """Values, order and timestamps of messages read back from a bag."""
    by_topic = {topic: [] for topic in TOPICS}
    last_stamp = 0
    for topic, msgtype, stamp, msg in records:
        assert window_ns[0] <= stamp <= window_ns[1]
        assert stamp >= last_stamp
        last_stamp = stamp
        by_topic[topic].append((msgtype, msg))

    for topic in TOPICS:
        assert len(by_topic[topic]) >= 10, f'too few messages on {topic}: {len(by_topic[topic])}'

    # JointState (reliable): consecutive sequence numbers, exact values
    seqs = []
    for msgtype, msg in by_topic[JOINT_TOPIC]:
        assert msgtype == 'sensor_msgs/msg/JointState'
        seq = msg.position[0]
        assert seq == int(seq)
        np.testing.assert_array_equal(msg.position, [seq, seq / 2, -seq])
        assert list(msg.name) == ['j1', 'j2', 'j3']
        seqs.append(int(seq))
    assert np.all(np.diff(seqs) == 1)

    # ActionChunk (our custom type)
    for msgtype, msg in by_topic[CHUNK_TOPIC]:
        assert msgtype == 'vla_prune_interfaces/msg/ActionChunk'
        seq = msg.sequence
        np.testing.assert_allclose(msg.actions, [seq + 0.25 * k for k in range(6)])
        assert list(msg.dimension_names) == ['dx', 'dy', 'dz']
        assert (msg.chunk_length, msg.action_dim, msg.dt) == (2, 3, 0.05)
        assert msg.method == 'specprune' and msg.controller_mode == ('fine' if seq % 2 else 'coarse')
        assert msg.header.frame_id == 'base_link' and msg.header.stamp.sec > 0

    # Image (best effort): each frame's pixels match its sequence number
    for msgtype, msg in by_topic[IMAGE_TOPIC]:
        assert msgtype == 'sensor_msgs/msg/Image'
        seq = int(msg.header.frame_id.removeprefix('camera_'))
        rgb = image_fields_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)
        np.testing.assert_array_equal(rgb, expected_rgb(seq))
    return by_topic


def test_find_msg_file_and_typestore():
    path = find_msg_file('vla_prune_interfaces/msg/ActionChunk')
    assert path is not None and path.read_text().startswith('# A chunk of actions')
    assert find_msg_file('vla_prune_interfaces/InferenceStats').name == 'InferenceStats.msg'
    assert find_msg_file('no_such_pkg/msg/Nothing') is None
    typestore = make_typestore()
    assert 'vla_prune_interfaces/msg/ActionChunk' in typestore.fielddefs
    assert 'vla_prune_interfaces/msg/InferenceStats' in typestore.fielddefs
    # (that rosbags' type hash equals rosidl's is checked against a live publisher below)


def test_record_in_process_mcap_and_read_back(publisher, tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from vla_prune_interfaces.msg import ActionChunk

    bag = tmp_path / 'bag_mcap'
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    try:
        node = rclpy.create_node('test_recorder', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        recorder = BagRecorder(node, bag, topics=TOPICS, storage='mcap', discovery_timeout=20.0)
        started = time.time_ns()
        assert recorder.start() == []
        assert sorted(recorder.counts) == sorted(TOPICS)
        publisher_hash = str(node.get_publishers_info_by_topic(CHUNK_TOPIC)[0].topic_type_hash)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:
            executor.spin_once(timeout_sec=0.05)
        counts = recorder.stop()
        stopped = time.time_ns()
        assert not recorder.recording
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)

    # 20 Hz per topic: at least 2 s of it; at most what was published from subscribing to stopping
    # (a loaded machine can take seconds between the two, with messages queued meanwhile).
    window = (stopped - started) / 1e9
    for topic in TOPICS:
        assert 25 <= counts[topic] <= 20.0 * window * 1.25 + 5, (counts, window)
    assert len(list(bag.glob('*.mcap'))) == 1 and (bag / 'metadata.yaml').is_file()

    records = list(read_bag(bag))
    by_topic = check_decoded_messages(records, (started, stopped))
    assert {t: len(v) for t, v in by_topic.items()} == counts

    # the bag's metadata: type hash as rosidl computes it, best-effort QoS of the camera
    from rosbags.interfaces import QosReliability
    from rosbags.rosbag2 import Reader
    with Reader(bag) as reader:
        connections = {c.topic: c for c in reader.connections}
        assert reader.message_count == sum(counts.values())
    assert connections[CHUNK_TOPIC].digest == publisher_hash
    assert connections[IMAGE_TOPIC].ext.offered_qos_profiles[0].reliability == QosReliability.BEST_EFFORT
    assert connections[JOINT_TOPIC].ext.offered_qos_profiles[0].reliability == QosReliability.RELIABLE

    # raw bytes from the bag decode with rclpy into the real classes, with the same values
    raw = {topic: next(m for t, _, _, m in read_bag(bag, topics=[topic], raw=True)) for topic in TOPICS}
    first = {topic: next(m for t, _, _, m in records if t == topic) for topic in TOPICS}
    chunk = deserialize_message(raw[CHUNK_TOPIC], ActionChunk)
    assert isinstance(chunk, ActionChunk)
    assert chunk.sequence == first[CHUNK_TOPIC].sequence
    np.testing.assert_array_equal(np.asarray(chunk.actions), first[CHUNK_TOPIC].actions)
    assert list(chunk.dimension_names) == list(first[CHUNK_TOPIC].dimension_names)
    assert chunk.controller_mode == first[CHUNK_TOPIC].controller_mode
    assert (chunk.header.stamp.sec, chunk.header.stamp.nanosec) == (
        first[CHUNK_TOPIC].header.stamp.sec, first[CHUNK_TOPIC].header.stamp.nanosec)
    image = deserialize_message(raw[IMAGE_TOPIC], Image)
    assert isinstance(image, Image)
    assert (image.height, image.width, image.encoding, image.step, image.header.frame_id) == (
        IMAGE_H, IMAGE_W, 'bgr8', IMAGE_W * 3, first[IMAGE_TOPIC].header.frame_id)
    np.testing.assert_array_equal(np.frombuffer(bytes(image.data), np.uint8), first[IMAGE_TOPIC].data)


class LineReader:
    """Collects a subprocess's stdout lines in the background so the test can wait for one."""

    def __init__(self, stream):
        self.lines = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip('\n'))

    def wait_for(self, prefix, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return True
            time.sleep(0.05)
        return False

    def join(self):
        self._thread.join(timeout=5)


def test_record_main_sqlite3_stops_cleanly_on_sigint(publisher, tmp_path):
    bag = tmp_path / 'bag_sqlite'
    command = [sys.executable, '-c',
               'import sys; from vla_prune_ros.cli import main; sys.exit(main(["record", *sys.argv[1:]]))',
               str(bag), '--topics', *TOPICS, '--storage', 'sqlite3', '--discovery-timeout', '20']
    process = subprocess.Popen(command, env=ros_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = LineReader(process.stdout)
    try:
        assert output.wait_for('subscribed to 3 topic(s)', timeout=30), output.lines
        started = time.time_ns()
        time.sleep(2.0)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, output.lines
        stopped = time.time_ns()
    finally:
        if process.poll() is None:
            process.kill()
    output.join()

    printed = {}
    for line in output.lines:
        topic, _, rest = line.partition(': ')
        if topic in TOPICS and rest.endswith(' messages'):
            printed[topic] = int(rest.split()[0])
    assert sorted(printed) == sorted(TOPICS), output.lines
    assert any(line.startswith('total: ') for line in output.lines)

    assert len(list(bag.glob('*.db3'))) == 1 and (bag / 'metadata.yaml').is_file()
    # messages written right after "subscribed" may predate `started` slightly; allow 1 s
    by_topic = check_decoded_messages(read_bag(bag), (started - 1_000_000_000, stopped))
    assert {t: len(v) for t, v in by_topic.items()} == printed
    for topic in TOPICS:
        assert printed[topic] >= 25


def test_record_main_argument_errors(tmp_path, capsys):
    existing = tmp_path / 'exists'
    existing.mkdir()
    assert vla_prune(['record', str(existing), '--topics', '/x']) == 1
    assert 'exists already' in capsys.readouterr().err
    assert vla_prune(['record', str(tmp_path / 'new'), '--storage', 'rosbag1']) == 2
    assert vla_prune(['record', str(tmp_path / 'new'), '--duration', '-1']) == 2
    assert not (tmp_path / 'new').exists()


def test_read_bag_without_rclpy(tmp_path):
    """read_bag and make_typestore must work in a process where rclpy cannot be imported."""
    # a tiny bag written with rosbags alone
    from rosbags.rosbag2 import StoragePlugin, Writer
    typestore = make_typestore()
    ActionChunk = typestore.types['vla_prune_interfaces/msg/ActionChunk']
    Header = typestore.types['std_msgs/msg/Header']
    Time = typestore.types['builtin_interfaces/msg/Time']
    bag = tmp_path / 'offline'
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(CHUNK_TOPIC, ActionChunk.__msgtype__, typestore=typestore)
        msg = ActionChunk(header=Header(stamp=Time(sec=1, nanosec=2), frame_id='f'), start_time=Time(sec=1, nanosec=2),
                          dt=0.1, dimension_names=['a'], chunk_length=1, action_dim=1,
                          actions=np.array([3.5]), sequence=7, method='m', controller_mode='fine')
        writer.write(connection, 42, typestore.serialize_cdr(msg, ActionChunk.__msgtype__))

    script = (
        'import sys\n'
        'sys.modules["rclpy"] = None  # any import of rclpy now fails\n'
        'from vla_prune_ros.data.rosbag import read_bag\n'
        '[(topic, msgtype, stamp, msg)] = list(read_bag(sys.argv[1]))\n'
        'assert "rclpy" not in sys.modules or sys.modules["rclpy"] is None\n'
        'print(topic, msgtype, stamp, msg.sequence, msg.actions.tolist(), msg.header.frame_id)\n')
    result = subprocess.run([sys.executable, '-c', script, str(bag)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [CHUNK_TOPIC, 'vla_prune_interfaces/msg/ActionChunk', '42', '7', '[3.5]', 'f']
