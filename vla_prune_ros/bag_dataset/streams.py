"""One bag's messages as checked, time-stamped streams: cameras, joint states, instructions, the URDF.

Stamps are the messages' ``header.stamp`` (when the sensor saw it), the bag's receive time for
messages without a header (``std_msgs/String``) or with a zero stamp. Problems with the content
raise :class:`BagError` naming the bag and the topic; a bag rosbags cannot read raises
:class:`UnreadableBag` (the converter skips it with a warning).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.images import ImageConversionError, compressed_image_to_rgb, image_fields_to_rgb, resize_rgb
from ..data.rosbag import read_bag

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
JOINT_STATE_TYPE = 'sensor_msgs/msg/JointState'
STRING_TYPE = 'std_msgs/msg/String'


class BagError(ValueError):
    """The bag is readable but its content cannot be converted; names the bag and the topic."""

    def __init__(self, bag, topic: str, message: str):
        self.bag, self.topic = str(bag), topic
        super().__init__(f'{bag}: {topic}: {message}' if topic else f'{bag}: {message}')


class UnreadableBag(Exception):
    """rosbags cannot open or read the bag (missing metadata, truncated or corrupt storage)."""


@dataclass
class CameraStream:
    topic: str
    stamps: np.ndarray                      # (N,) s
    frames: list[np.ndarray]                # N x (size, size, 3) uint8 RGB


@dataclass
class JointStream:
    topic: str
    names: list[str]                        # the columns of ``positions``
    stamps: np.ndarray                      # (N,) s
    positions: np.ndarray                   # (N, len(names))


@dataclass
class BagStreams:
    path: Path
    cameras: list[CameraStream]
    joints: JointStream
    instructions: list[tuple[float, str]]   # (stamp s, text), in order
    duplicate_stamps: dict[str, int] = field(default_factory=dict)   # topic -> messages dropped


def _messages(bag: Path, topics: list[str]):
    """read_bag, with anything rosbags raises turned into UnreadableBag."""
    iterator = read_bag(bag, topics=topics)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 - rosbags raises many kinds for a damaged file
            raise UnreadableBag(f'{bag}: cannot be read ({type(error).__name__}: {error})') from None
        yield item


def topic_types(bag: Path) -> dict[str, str]:
    """Topic -> message type of every connection in the bag."""
    from rosbags.rosbag2 import Reader
    try:
        with Reader(bag) as reader:
            return {connection.topic: connection.msgtype for connection in reader.connections}
    except Exception as error:  # noqa: BLE001 - see _messages
        raise UnreadableBag(f'{bag}: cannot be opened ({type(error).__name__}: {error})') from None


def require_topics(bag: Path, types: dict[str, str], wanted: dict[str, tuple[str, ...]],
                   hints: dict[str, str] | None = None) -> None:
    """Each wanted topic is in the bag with one of its accepted types; ``hints``: what to do when one is not."""
    for topic, accepted in wanted.items():
        if topic not in types:
            recorded = ', '.join(sorted(types)) or 'none'
            hint = (hints or {}).get(topic, '')
            raise BagError(bag, topic, f'missing from the bag (recorded topics: {recorded}){hint}')
        if types[topic] not in accepted:
            raise BagError(bag, topic, f'has type {types[topic]}, expected {" or ".join(accepted)}')


def first_string(bag: Path, topic: str) -> str | None:
    for _, _, _, msg in _messages(bag, [topic]):
        return msg.data
    return None


def _stamp(msg, bag_time_ns: int) -> float:
    header = getattr(msg, 'header', None)
    if header is not None and (header.stamp.sec or header.stamp.nanosec):
        return header.stamp.sec + header.stamp.nanosec * 1e-9
    return bag_time_ns * 1e-9


def _decode_image(bag: Path, topic: str, msgtype: str, msg, index: int, size: int) -> np.ndarray:
    try:
        if msgtype == IMAGE_TYPES[1]:
            rgb = compressed_image_to_rgb(msg.format, msg.data)
        else:
            rgb = image_fields_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)
    except ImageConversionError as error:
        raise BagError(bag, topic, f'message {index}: {error}') from None
    return resize_rgb(rgb, size)


def _joint_row(bag: Path, topic: str, msg, index: int, needed: list[str]) -> np.ndarray:
    names = list(msg.name)
    if len(msg.position) != len(names):
        raise BagError(bag, topic, f'message {index}: {len(msg.position)} positions for {len(names)} names')
    lookup = {name: i for i, name in enumerate(names)}
    missing = [name for name in needed if name not in lookup]
    if missing:
        raise BagError(bag, topic, f'message {index}: joints {missing} missing; the message names {names} '
                                   f'(the robot config and URDF need {needed})')
    return np.array([msg.position[lookup[name]] for name in needed], dtype=np.float64)


def _monotonic(bag: Path, topic: str, stamps: list[float]) -> np.ndarray:
    """The indices to keep: stamps must never decrease; a repeated stamp keeps its first message."""
    stamps_array = np.asarray(stamps, dtype=np.float64)
    steps = np.diff(stamps_array)
    if np.any(steps < 0):
        at = int(np.argmax(steps < 0)) + 1
        raise BagError(bag, topic, f'stamps are not monotonic: message {at} is {-steps[at - 1]:.6f} s older '
                                   f'than message {at - 1}')
    return np.concatenate([[True], steps > 0]) if len(stamps_array) else np.zeros(0, dtype=bool)


def read_streams(bag: Path, camera_topics: list[str], joint_topic: str, joints: list[str],
                 instruction_topic: str | None, image_size: int) -> BagStreams:
    """Every message of the given topics, decoded (frames resized to ``image_size``) and checked."""
    stamps: dict[str, list[float]] = {topic: [] for topic in [*camera_topics, joint_topic]}
    frames: dict[str, list[np.ndarray]] = {topic: [] for topic in camera_topics}
    rows, instructions = [], []
    topics = [*camera_topics, joint_topic] + ([instruction_topic] if instruction_topic else [])
    for topic, msgtype, bag_time, msg in _messages(bag, topics):
        if topic == instruction_topic:
            instructions.append((bag_time * 1e-9, str(msg.data)))
            continue
        index = len(stamps[topic])
        stamps[topic].append(_stamp(msg, bag_time))
        if topic == joint_topic:
            rows.append(_joint_row(bag, topic, msg, index, joints))
        else:
            frames[topic].append(_decode_image(bag, topic, msgtype, msg, index, image_size))
    duplicates, cameras = {}, []
    for topic in [*camera_topics, joint_topic]:
        if not stamps[topic]:
            raise BagError(bag, topic, 'no messages')
        keep = _monotonic(bag, topic, stamps[topic])
        if not keep.all():
            duplicates[topic] = int((~keep).sum())
        kept = np.asarray(stamps[topic])[keep]
        if topic == joint_topic:
            joint_stream = JointStream(topic, list(joints), kept, np.stack(rows)[keep])
        else:
            cameras.append(CameraStream(topic, kept, [f for f, k in zip(frames[topic], keep) if k]))
    return BagStreams(Path(bag), cameras, joint_stream, instructions, duplicates)
