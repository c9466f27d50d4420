"""vla-prune dataset from-bag on real rosbag2 files written with rosbags (MCAP and sqlite3).

The bags hold what a robot records: the sim arm's URDF on robot_description, joint states at
100 Hz, one camera as sensor_msgs/Image and one as CompressedImage (JPEG) at 30 Hz, instructions
on std_msgs/String. Joint motion is analytic, so the expected actions are the forward kinematics
of q(t) at the grid times.
"""
import json
import math
import shutil

import numpy as np
import pinocchio as pin
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from vla_prune_ros.bag_dataset import BagError, RecordingConfig, convert_bags
from vla_prune_ros.bag_dataset.convert import ConversionError
from vla_prune_ros.cli import main as vla_prune
from vla_prune_ros.control.kinematics import EndEffectorVelocity, ProprioBuilder
from vla_prune_ros.data.demonstrations import load_episodes
from vla_prune_ros.data.images import rgb_to_compressed
from vla_prune_ros.data.rosbag import make_typestore
from vla_prune_ros.paths import SIM_ROBOT_CONFIG, URDF_PATH

CONFIG = RecordingConfig.load(SIM_ROBOT_CONFIG)
ARM = [f'joint{i}' for i in range(1, 7)]
FINGERS = ['finger_left_joint', 'finger_right_joint']
HOME = np.array([0.0, 0.3, 1.6, 0.0, 1.24, 0.0])
T0 = 1_700_000_000.0
TYPES = make_typestore()


def joints_at(t: float) -> np.ndarray:
    """Arm joints sweeping smoothly (a few cm per 0.1 s at the TCP) and fingers closing from open."""
    arm = HOME + np.array([0.3, 0.1, -0.1, 0.2, 0.15, 0.4]) * np.sin(0.8 * t + np.arange(6))
    finger = 0.04 * max(0.0, 1.0 - t / 3.0)
    return np.concatenate([arm, [finger, finger]])


def header(t: float):
    Time, Header = TYPES.types['builtin_interfaces/msg/Time'], TYPES.types['std_msgs/msg/Header']
    sec = int(math.floor(t))
    return Header(stamp=Time(sec=sec, nanosec=int(round((t - sec) * 1e9))), frame_id='')


def frame(t: float, size: int = 32) -> np.ndarray:
    value = int(t * 30) % 256
    return np.full((size, size, 3), value, dtype=np.uint8)


def write_bag(path, duration=3.0, storage='mcap', encoding='rgb8', joint_names=None, instructions=((0.0, 'touch the red cube'),),
              camera_gap=None, backwards_at=None, cameras=('/camera/primary/image_raw', '/camera/wrist/image_raw')):
    """A bag of ``duration`` s of the moving arm; every option breaks one thing on purpose."""
    t = TYPES.types
    writer = Writer(path, version=Writer.VERSION_LATEST,
                    storage_plugin=StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3)
    writer.open()
    connections = {}

    def write(topic, msgtype, stamp, msg):
        if topic not in connections:
            connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPES)
        writer.write(connections[topic], int(stamp * 1e9), TYPES.serialize_cdr(msg, msgtype))

    messages = [(T0 - 0.01, '/robot_description', 'std_msgs/msg/String', t['std_msgs/msg/String'](data=URDF_PATH.read_text()))]
    for offset, text in instructions:
        messages.append((T0 + offset, '/instruction', 'std_msgs/msg/String', t['std_msgs/msg/String'](data=text)))
    names = joint_names or ARM + FINGERS
    for k in range(-10, int(duration * 100) + 11):    # joint states a little beyond the cameras at both ends
        stamp = T0 + 0.003 + k * 0.01
        late = 0.5 if backwards_at is not None and k == int(backwards_at * 100) else 0.0   # stamped in the past
        msg = t['sensor_msgs/msg/JointState'](header=header(stamp - late), name=list(names),
                                               position=joints_at(stamp - T0), velocity=np.zeros(0), effort=np.zeros(0))
        messages.append((stamp, '/joint_states', 'sensor_msgs/msg/JointState', msg))
    for k in range(int(duration * 30) + 1):
        stamp = T0 + 0.011 + k / 30
        if camera_gap is not None and camera_gap[0] <= stamp - T0 < camera_gap[1]:
            continue
        rgb = frame(stamp - T0)
        if '/camera/primary/image_raw' in cameras:
            image = t['sensor_msgs/msg/Image'](header=header(stamp), height=32, width=32, encoding=encoding,
                                               is_bigendian=0, step=32 * 3, data=rgb.reshape(-1))
            messages.append((stamp, '/camera/primary/image_raw', 'sensor_msgs/msg/Image', image))
        if '/camera/wrist/image_raw' in cameras:
            compressed = rgb_to_compressed(rgb, 'png')
            image = t['sensor_msgs/msg/CompressedImage'](header=header(stamp), format=compressed['format'],
                                                         data=np.frombuffer(compressed['data'], dtype=np.uint8))
            messages.append((stamp, '/camera/wrist/image_raw', 'sensor_msgs/msg/CompressedImage', image))
    for stamp, topic, msgtype, msg in sorted(messages, key=lambda m: m[0]):
        write(topic, msgtype, stamp + 0.002, msg)   # received a little after the stamp
    writer.close()
    return path


def expected_action(t: float, dt: float) -> np.ndarray:
    kinematics = EndEffectorVelocity(URDF_PATH.read_text(), 'tool0', ARM)
    here, there = kinematics.forward_kinematics(joints_at(t)[:6]), kinematics.forward_kinematics(joints_at(t + dt)[:6])
    finger = joints_at(t + dt)[6]
    return np.concatenate([there.translation - here.translation, pin.log3(there.rotation @ here.rotation.T),
                           [2.0 * (0.04 - finger) / 0.04 - 1.0]])


def test_mcap_with_raw_and_compressed_cameras_two_instructions_converts_and_loads(tmp_path):
    bag = write_bag(tmp_path / 'bag', instructions=((0.0, 'touch the red cube'), (1.5, 'touch the blue cube')))
    report = convert_bags([bag], tmp_path / 'data', CONFIG)
    meta, episodes = load_episodes(tmp_path / 'data')
    assert meta['camera_names'] == ['primary', 'wrist'] and meta['control_dt'] == 0.1
    assert [e.instruction for e in episodes] == ['touch the red cube', 'touch the blue cube']
    assert report['episodes'] == 2 and report['steps'] == sum(len(e) for e in episodes) >= 24
    assert report['bags'][0]['dropped_steps'] == {'across an instruction change': 1}
    builder = ProprioBuilder('ee_pose', 8, URDF_PATH.read_text(), 'tool0', FINGERS, [0.0, math.pi, 0.0])
    for entry, episode in zip(report['episode_index'], episodes):
        assert episode.frames['primary'].shape == (len(episode), 128, 128, 3)
        for k in range(len(episode)):
            t = entry['start_stamp'] + 0.1 * k - T0
            # Grid times follow the cameras' phase; each step's frames are that camera's frame at t.
            assert abs((t - 0.011) * 30 - round((t - 0.011) * 30)) < 1e-4
            assert episode.frames['wrist'][k, 0, 0, 0] == episode.frames['primary'][k, 0, 0, 0] == frame(t)[0, 0, 0]
            np.testing.assert_allclose(episode.actions[k], expected_action(t, 0.1), atol=2e-5)
            joints = joints_at(t)
            np.testing.assert_allclose(episode.proprio[k], builder.build(dict(zip(ARM + FINGERS, joints))),
                                       atol=1e-5)
    stats = json.loads((tmp_path / 'data' / 'dataset_statistics.json').read_text())
    assert stats['num_transitions'] == report['steps'] and len(stats['action']['q01']) == 7
    ranges = report['action_ranges']
    assert ranges['gripper'][0] < -0.5 < 0.5 < ranges['gripper'][1]    # the fingers close during the bag


def test_sqlite3_bags_with_one_instruction_each_and_the_cli(tmp_path, capsys):
    bags = [write_bag(tmp_path / f'bag{i}', storage='sqlite3', instructions=()) for i in range(2)]
    code = vla_prune(['dataset', 'from-bag', *map(str, bags), '--out', str(tmp_path / 'data'),
                      '--instruction', 'wave', '--instruction', 'nod', '--control-dt', '0.2'])
    printed = capsys.readouterr().out
    assert code == 0, printed
    _, episodes = load_episodes(tmp_path / 'data')
    assert [e.instruction for e in episodes] == ['wave', 'nod'] and len(episodes[0]) >= 13
    assert '2 episodes' in printed and 'action ranges: dx [' in printed


def test_a_camera_gap_drops_and_splits_never_fills(tmp_path):
    bag = write_bag(tmp_path / 'bag', duration=4.0, camera_gap=(1.8, 2.3))
    report = convert_bags([bag], tmp_path / 'data', CONFIG)
    entry = report['bags'][0]
    assert entry['grid_times_without_input'] == {'/camera/primary/image_raw': 4, '/camera/wrist/image_raw': 4}
    assert entry['dropped_steps']['missing input'] == 5
    assert report['episodes'] == 2
    first, second = report['episode_index']
    assert first['start_stamp'] + 0.1 * first['steps'] < T0 + 1.8 + 0.04 < T0 + 2.3 - 0.04 < second['start_stamp']


@pytest.mark.parametrize('problem, topic, words', [
    (dict(cameras=('/camera/primary/image_raw',)), '/camera/wrist/image_raw', 'missing from the bag'),
    (dict(encoding='32FC1'), '/camera/primary/image_raw', "unsupported image encoding '32FC1'"),
    (dict(joint_names=[f'arm_{i}' for i in range(8)]), '/joint_states', "joints ['joint1'"),
    (dict(backwards_at=1.0), '/joint_states', 'stamps are not monotonic'),
    (dict(duration=0.5), '/joint_states', 'too short'),
    (dict(instructions=()), '/instruction', 'pass --instruction'),
])
def test_bad_input_is_an_error_naming_bag_and_topic(tmp_path, problem, topic, words):
    bag = write_bag(tmp_path / 'bad', **problem)
    with pytest.raises(ConversionError) as raised:
        convert_bags([bag], tmp_path / 'data', CONFIG)
    assert f'{bag}: {topic}: ' in str(raised.value) and words in str(raised.value), str(raised.value)
    assert not (tmp_path / 'data').exists() and not (tmp_path / 'data.partial').exists()


@pytest.mark.parametrize('node, dataset, words', [
    (dict(joint_names=[f'arm_{i}' for i in range(1, 7)]), {}, "joints ['arm_1', 'arm_2'"),
    ({}, dict(gripper_joints=('no_such_finger',)), "gripper_joints ['no_such_finger'] are not movable joints"),
])
def test_joint_names_not_in_the_urdf(tmp_path, node, dataset, words):
    bag = write_bag(tmp_path / 'bag')
    other = RecordingConfig(**{**CONFIG.__dict__, 'node': {**CONFIG.node, **node}, **dataset})
    with pytest.raises(ConversionError) as raised:
        convert_bags([bag], tmp_path / 'data', other)
    assert f'{bag}: /robot_description: ' in str(raised.value) and words in str(raised.value), str(raised.value)
    assert issubclass(BagError, ValueError)


def test_a_corrupt_bag_is_skipped_with_a_warning_and_the_others_convert(tmp_path):
    good = write_bag(tmp_path / 'good')
    corrupt = shutil.copytree(good, tmp_path / 'corrupt')
    storage = next(corrupt.glob('*.mcap'))
    storage.write_bytes(storage.read_bytes()[:len(storage.read_bytes()) // 3])   # truncated mid-file
    missing = tmp_path / 'not_a_bag'
    missing.mkdir()
    warnings = []
    report = convert_bags([corrupt, good, missing], tmp_path / 'data', CONFIG, warn=warnings.append)
    assert report['episodes'] == 1 and [b['bag'] for b in report['bags']] == [str(good)]
    assert len(warnings) == 2 and str(corrupt) in warnings[0] and str(missing) in warnings[1]
    assert report['skipped_bags'] == [w.removeprefix('warning: skipping ') for w in warnings]
