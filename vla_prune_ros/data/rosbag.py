"""Record and read rosbag2 bags (MCAP or sqlite3) without the ROS 2 CLI.

``ros2 bag`` is not installable from PyPI, but ``rosbags`` (pure Python) writes
real rosbag2 bags (format version 9) that ``ros2 bag`` on a robot reads. The
live recorder here subscribes with ``raw=True``, so rclpy hands over the CDR
bytes as they arrived, and writes those bytes straight into the bag with their
receive time: no decode/encode round trip, and any message type whose Python
package is importable can be recorded.

The bag also stores each type's definition, taken from a ``rosbags`` typestore.
Standard types come with the typestore of the ROS distro (Kilted here; Jazzy
is compatible). Our custom interfaces (``vla_prune_interfaces``) and any other
missing type are registered from their installed ``.msg`` files, looked up via
``ament_index_python`` (needs AMENT_PREFIX_PATH), then ``<sys.prefix>/share``
(the venv, where the wheels and our interfaces are installed), then this
source tree.

rclpy is imported lazily, inside :class:`BagRecorder` (and ``vla-prune record``),
so :func:`read_bag` works on a machine without ROS.
"""
import importlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

from rosbags.interfaces import Nodetype, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from ..paths import SOURCE_ROOT

CUSTOM_INTERFACE_PACKAGES = ('vla_prune_interfaces',)
STORAGE_PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}

# ROS_DISTRO -> rosbags typestore; Kilted is what the PyPI wheels are.
_DISTRO_STORES = {
    'humble': 'ROS2_HUMBLE', 'iron': 'ROS2_IRON', 'jazzy': 'ROS2_JAZZY', 'kilted': 'ROS2_KILTED',
    'lyrical': 'ROS2_LYRICAL', 'rolling': 'LATEST',
}


# --- message definitions ---------------------------------------------------------

def _package_share_dirs(package: str) -> list[Path]:
    """Where ``share/<package>`` may live, best first."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory(package)))
    except Exception:  # noqa: BLE001 - no AMENT_PREFIX_PATH, or package not indexed
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        candidates.append(Path(prefix) / 'share' / package)
    candidates.append(SOURCE_ROOT / package)  # source tree: <repo>/<package>/msg/*.msg
    return [path for path in candidates if path.is_dir()]


def find_msg_file(msgtype: str) -> Optional[Path]:
    """The ``.msg`` file of ``pkg/msg/Name`` (or ``pkg/Name``), or None if not found."""
    parts = msgtype.split('/')
    package, name = parts[0], parts[-1]
    for share in _package_share_dirs(package):
        path = share / 'msg' / f'{name}.msg'
        if path.is_file():
            return path
    return None


def _referenced_types(fielddefs) -> set[str]:
    """Message type names referenced by the fields of one rosbags type definition."""
    names = set()

    def visit(node):
        kind, detail = node
        if kind == Nodetype.NAME:
            names.add(detail)
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            visit(detail[0])

    for _, node in fielddefs[1]:
        visit(node)
    return names


def ensure_msg_type(typestore, msgtype: str) -> None:
    """Register ``msgtype`` and every type it references, from installed ``.msg`` files.

    Raises LookupError naming the type when a definition cannot be found.
    """
    msgtype = _normalise_msgtype(msgtype)
    pending, found = [msgtype], {}
    while pending:
        name = pending.pop()
        if name in typestore.fielddefs or name in found:
            continue
        path = find_msg_file(name)
        if path is None:
            raise LookupError(f'no .msg definition found for {name!r} (searched ament index, '
                              f'{sys.prefix}/share and {SOURCE_ROOT})')
        types = get_types_from_msg(path.read_text(), name)
        found.update(types)
        pending.extend(_referenced_types(types[name]))
    if found:
        typestore.register(found)


def _normalise_msgtype(msgtype: str) -> str:
    parts = msgtype.split('/')
    return f'{parts[0]}/msg/{parts[1]}' if len(parts) == 2 else msgtype


def make_typestore(distro: Optional[str] = None, custom_packages: Iterable[str] = CUSTOM_INTERFACE_PACKAGES):
    """A rosbags typestore for ``distro`` (default: $ROS_DISTRO, else Kilted) plus our custom messages.

    Custom packages whose ``.msg`` files cannot be found are skipped; their types
    can still be decoded from a bag, which embeds every definition it uses.
    """
    distro = (distro or os.environ.get('ROS_DISTRO') or 'kilted').lower()
    store_name = _DISTRO_STORES.get(distro, 'ROS2_KILTED')
    store = getattr(Stores, store_name, None) or getattr(Stores, 'ROS2_KILTED', None) or Stores.ROS2_JAZZY
    typestore = get_typestore(store)
    for package in custom_packages:
        for share in _package_share_dirs(package)[:1]:
            for path in sorted((share / 'msg').glob('*.msg')):
                ensure_msg_type(typestore, f'{package}/msg/{path.stem}')
    return typestore


# --- reading ---------------------------------------------------------------------

def read_bag(path, typestore=None, topics: Optional[Iterable[str]] = None,
             raw: bool = False) -> Iterator[tuple[str, str, int, object]]:
    """Yield ``(topic, msgtype, timestamp_ns, message)`` for every message of a rosbag2 bag.

    Messages are decoded with rosbags (its message dataclasses; e.g. an Image's
    ``data`` is a uint8 numpy array), or left as CDR bytes with ``raw=True``.
    Types unknown to the typestore are registered from the definitions stored
    in the bag. No rclpy needed.
    """
    typestore = typestore if typestore is not None else make_typestore()
    wanted = set(topics) if topics is not None else None
    with Reader(Path(path)) as reader:
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for connection in connections:
            if connection.msgtype not in typestore.fielddefs and connection.msgdef.data:
                typestore.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
        for connection, timestamp, data in reader.messages(connections=connections):
            message = bytes(data) if raw else typestore.deserialize_cdr(data, connection.msgtype)
            yield connection.topic, connection.msgtype, timestamp, message


# --- live recording --------------------------------------------------------------

def _import_message_class(msgtype: str):
    """The rclpy message class of ``pkg/msg/Name``."""
    package, _, name = _normalise_msgtype(msgtype).split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


def _qos_time(duration) -> QosTime:
    seconds, nanoseconds = divmod(int(duration.nanoseconds), 1_000_000_000)
    return QosTime(seconds, nanoseconds)


def _to_bag_qos(profile) -> Qos:
    """An rclpy QoSProfile as the rosbags record stored in the bag's metadata."""
    return Qos(
        history=QosHistory(int(profile.history)),
        depth=int(profile.depth),
        reliability=QosReliability(int(profile.reliability)),
        durability=QosDurability(int(profile.durability)),
        deadline=_qos_time(profile.deadline),
        lifespan=_qos_time(profile.lifespan),
        liveliness=QosLiveliness(int(profile.liveliness)),
        liveliness_lease_duration=_qos_time(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


class BagRecorder:
    """Record topics of a running ROS 2 graph into a rosbag2 bag.

    The caller owns the node and spins it; messages are written from the
    subscription callbacks. ``topics=None`` records every topic discovered
    (except ``/rosout`` and ``/parameter_events``), including ones that appear
    later; named topics that are not there yet are picked up when they appear.

    Subscription QoS follows the publishers, as ``ros2 bag record`` does:
    reliable only if every publisher is reliable, transient-local only if every
    publisher is, so a best-effort camera is still recorded.
    """

    IGNORED_TOPICS = ('/rosout', '/parameter_events')

    def __init__(self, node, output_path, topics: Optional[Iterable[str]] = None, storage: str = 'mcap',
                 discovery_timeout: float = 10.0, queue_depth: int = 100, typestore=None):
        if storage not in STORAGE_PLUGINS:
            raise ValueError(f'storage must be one of {sorted(STORAGE_PLUGINS)}, got {storage!r}')
        self.node = node
        self.output_path = Path(output_path)
        self.requested_topics = None if topics is None else [self._absolute(t) for t in topics]
        self.storage = storage
        self.discovery_timeout = float(discovery_timeout)
        self.queue_depth = int(queue_depth)
        self.typestore = typestore if typestore is not None else make_typestore()
        self.counts: dict[str, int] = {}
        self.skipped: dict[str, str] = {}   # topic -> why it is not recorded
        self._writer = None
        self._connections = {}
        self._subscriptions = []
        self._poll_timer = None
        self._lock = threading.Lock()

    def _absolute(self, topic: str) -> str:
        return topic if topic.startswith('/') else f'{self.node.get_namespace().rstrip("/")}/{topic}'

    @property
    def recording(self) -> bool:
        return self._writer is not None

    @property
    def missing_topics(self) -> list[str]:
        """Requested topics not (yet) being recorded."""
        wanted = self.requested_topics or []
        return [t for t in wanted if t not in self._connections and t not in self.skipped]

    def start(self) -> list[str]:
        """Open the bag, wait up to ``discovery_timeout`` for the requested topics, subscribe.

        Returns the requested topics still missing after the timeout; they keep
        being looked for (once a second while the node spins).
        """
        if self._writer is not None:
            raise RuntimeError('recorder already started')
        writer = Writer(self.output_path, version=Writer.VERSION_LATEST, storage_plugin=STORAGE_PLUGINS[self.storage])
        writer.open()
        self._writer = writer

        deadline = time.monotonic() + self.discovery_timeout
        while True:
            self.subscribe_new_topics()
            if self.requested_topics is not None and not self.missing_topics:
                break
            if self.requested_topics is None and self._connections:
                break  # "record everything": start with what is there, the timer adds the rest
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        self._poll_timer = self.node.create_timer(1.0, self.subscribe_new_topics)
        return self.missing_topics

    def subscribe_new_topics(self) -> None:
        """Subscribe to wanted topics that have appeared in the graph since the last call."""
        if self._writer is None:
            return
        for topic, types in self.node.get_topic_names_and_types():
            if topic in self._connections or topic in self.skipped:
                continue
            if self.requested_topics is None:
                if topic in self.IGNORED_TOPICS:
                    continue
            elif topic not in self.requested_topics:
                continue
            if not self.node.get_publishers_info_by_topic(topic):
                continue  # only subscribers so far: nothing to record, QoS unknown
            if len(types) > 1:
                self.node.get_logger().warning(f'{topic} has several types {types}; recording {types[0]}')
            self._subscribe(topic, types[0])

    def _subscribe(self, topic: str, msgtype: str) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        try:
            message_class = _import_message_class(msgtype)
            ensure_msg_type(self.typestore, msgtype)
        except (ImportError, AttributeError, LookupError) as err:
            self.skipped[topic] = f'cannot record type {msgtype}: {err}'
            self.node.get_logger().warning(f'not recording {topic}: {self.skipped[topic]}')
            return

        publishers = self.node.get_publishers_info_by_topic(topic)
        offered = [info.qos_profile for info in publishers]
        all_reliable = all(q.reliability == ReliabilityPolicy.RELIABLE for q in offered)
        all_latched = all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=self.queue_depth,
            reliability=ReliabilityPolicy.RELIABLE if all_reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if all_latched else DurabilityPolicy.VOLATILE)

        rihs01 = self.typestore.hash_rihs01(msgtype)
        published_hashes = {str(info.topic_type_hash) for info in publishers} - {'', 'None'}
        if published_hashes and published_hashes != {rihs01}:
            self.node.get_logger().warning(
                f'{topic}: publisher type hash {sorted(published_hashes)} differs from the recorded '
                f'definition {rihs01}; the message definitions differ')

        with self._lock:
            connection = self._writer.add_connection(
                topic, msgtype, typestore=self.typestore, offered_qos_profiles=[_to_bag_qos(q) for q in offered])
            self._connections[topic] = connection
            self.counts[topic] = 0

        def on_message(data: bytes, info, topic=topic, connection=connection):
            stamp = int(info.get('received_timestamp') or 0) if isinstance(info, dict) else 0
            with self._lock:
                if self._writer is None:
                    return  # a callback racing with stop()
                self._writer.write(connection, stamp or time.time_ns(), data)
                self.counts[topic] += 1

        self._subscriptions.append(self.node.create_subscription(message_class, topic, on_message, qos, raw=True))

    def stop(self) -> dict[str, int]:
        """Stop recording and close the bag (writes metadata.yaml); returns messages per topic."""
        if self._poll_timer is not None:
            self.node.destroy_timer(self._poll_timer)
            self._poll_timer = None
        for subscription in self._subscriptions:
            self.node.destroy_subscription(subscription)
        self._subscriptions = []
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return dict(self.counts)
