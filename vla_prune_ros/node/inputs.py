"""The node's inputs: the latest frame per camera, the latest joint positions and the measured
end-effector twist, and their freshness, which decides whether they make an :class:`Observation`.

Sensor callbacks only convert and store the latest sample (each topic in its own mutually exclusive
callback group), so they never queue behind a forward pass; the execute thread takes a snapshot.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool

from ..control.kinematics import EndEffectorVelocity, ProprioBuilder
from ..data.images import msg_to_rgb
from .messages import time_to_ns

WARN_PERIOD = 2.0             # s between repeated warnings about the same thing


class StaleInput(RuntimeError):
    """The latest inputs are missing or too old; the message says which and how old."""


class RateMeter:
    """Messages per second over the last ``window`` seconds (or since the first message, if sooner)."""

    def __init__(self, window: float = 2.0):
        self.window, self.times, self.first = window, deque(), None

    def tick(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.times.append(now)
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()

    def rate(self, now: float) -> float:
        self._expire(now)
        if self.first is None:
            return 0.0
        span = min(self.window, now - self.first)
        return len(self.times) / span if span > 0.1 else 0.0


@dataclass
class Frame:
    rgb: np.ndarray
    stamp_ns: int          # header stamp (receive time when the header has none)
    received_ns: int
    conversion_s: float    # time spent converting the message


class VelocitySample(NamedTuple):
    """The last valid end-effector twist estimate."""
    linear: np.ndarray
    angular: np.ndarray
    stamp_s: float         # joint-state stamp: the controller's clock
    received_ns: int


@dataclass
class Observation:
    """What one inference sees: fresh frames, proprio and the measured twist (None when unknown)."""
    images: list
    stamp_ns: int                    # oldest camera stamp: the observation time of the chunk
    proprio: Optional[np.ndarray]
    linear: Optional[np.ndarray]
    angular: Optional[np.ndarray]
    velocity_stamp: float            # s, for the controller
    picked_up: float                 # perf_counter when the inputs were taken
    conversion_s: float              # conversion time of the frames used


@dataclass(frozen=True)
class InputRate:
    topic: str                       # resolved name
    rate_hz: float
    dropped: Optional[int]           # frames dropped as unconvertible (cameras only)


class LatestInputs:
    """Subscribes to the cameras, joint states and success topic of ``node``; keeps only the latest."""

    def __init__(self, node, camera_topics: list[str], joint_states_topic: str, success_topic: str,
                 velocity: Optional[EndEffectorVelocity], proprio: ProprioBuilder, wants_proprio: bool):
        self._node, self._velocity, self._proprio, self._wants_proprio = node, velocity, proprio, wants_proprio
        self._lock = threading.Lock()
        self._topics = list(camera_topics)
        self._joint_topic = joint_states_topic
        self._frames: list[Optional[Frame]] = [None] * len(self._topics)
        self._joint_positions: dict[str, tuple[float, int]] = {}     # name -> (position, stamp ns)
        self._velocity_sample: Optional[VelocitySample] = None
        self._success_at = -math.inf      # monotonic time of the last True on success_topic
        self._rates = {topic: RateMeter() for topic in self._topics + [joint_states_topic]}
        self._dropped = {topic: 0 for topic in self._topics}
        self._last_warning: dict[str, float] = {}

        for index, topic in enumerate(self._topics):
            node.create_subscription(Image, topic, lambda msg, i=index: self._on_image(msg, i),
                                     qos_profile_sensor_data, callback_group=MutuallyExclusiveCallbackGroup())
        node.create_subscription(JointState, joint_states_topic, self._on_joint_state, qos_profile_sensor_data,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        node.create_subscription(Bool, success_topic, self._on_success, 10,
                                 callback_group=MutuallyExclusiveCallbackGroup())

    # --- callbacks (sensor threads) ---------------------------------------------------------------

    def _warn_throttled(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(key, -math.inf) >= WARN_PERIOD:
            self._last_warning[key] = now
            self._node.get_logger().warning(message)

    def _now_ns(self) -> int:
        return self._node.get_clock().now().nanoseconds

    def _name(self, topic: str) -> str:
        return self._node.resolve_topic_name(topic)

    def _on_image(self, msg: Image, index: int) -> None:
        received = self._now_ns()
        topic = self._topics[index]
        self._rates[topic].tick(time.monotonic())
        start = time.perf_counter()
        try:
            rgb = msg_to_rgb(msg)
        except Exception as error:  # noqa: BLE001 - a bad frame is dropped, never fatal
            self._dropped[topic] += 1
            self._warn_throttled(f'image {topic}', f'{self._name(topic)}: dropped frame: {error}')
            return
        conversion = time.perf_counter() - start
        stamp = time_to_ns(msg.header.stamp) or received
        with self._lock:
            self._frames[index] = Frame(rgb, stamp, received, conversion)

    def _on_joint_state(self, msg: JointState) -> None:
        received = self._now_ns()
        topic = self._joint_topic
        self._rates[topic].tick(time.monotonic())
        stamp = time_to_ns(msg.header.stamp) or received
        names, positions = list(msg.name), list(msg.position)
        if len(positions) == len(names):
            with self._lock:
                for name, position in zip(names, positions):
                    if math.isfinite(position):
                        self._joint_positions[name] = (float(position), stamp)
        else:
            self._warn_throttled('joint positions', f'{self._name(topic)}: {len(names)} names but '
                                 f'{len(positions)} positions; positions ignored')
        if self._velocity is None:
            return
        try:
            estimate = self._velocity.update(names, positions, list(msg.velocity), stamp * 1e-9)
        except Exception as error:  # noqa: BLE001 - a bad message means "velocity unknown", never fatal
            self._warn_throttled('joint velocity', f'{self._name(topic)}: velocity unknown: {error}')
            return
        if estimate.valid:
            with self._lock:
                self._velocity_sample = VelocitySample(np.asarray(estimate.linear, float),
                                                       np.asarray(estimate.angular, float), stamp * 1e-9, received)
            if estimate.reason:      # valid, but something was odd (e.g. unknown joints ignored)
                self._warn_throttled('joint note', f'{self._name(topic)}: {estimate.reason}')
        else:
            with self._lock:
                self._velocity_sample = None
            self._warn_throttled('joint velocity', f'{self._name(topic)}: end-effector velocity unknown '
                                 f'({estimate.reason}); the controller falls to fine')

    def _on_success(self, msg: Bool) -> None:
        if msg.data:
            self._success_at = time.monotonic()

    # --- reads (execute and diagnostics threads) ----------------------------------------------------

    def success_since(self, monotonic_time: float) -> bool:
        return self._success_at > monotonic_time

    def velocity(self) -> Optional[VelocitySample]:
        with self._lock:
            return self._velocity_sample

    def observe(self, max_age: float) -> Observation:
        """The latest inputs; raises StaleInput when any is missing or older than ``max_age`` seconds."""
        now = self._now_ns()
        with self._lock:
            frames = list(self._frames)
            joints = dict(self._joint_positions)
            velocity = self._velocity_sample
        picked_up = time.perf_counter()
        for topic, frame in zip(self._topics, frames):
            if frame is None:
                raise StaleInput(f'{self._name(topic)}: no valid image received yet')
            age = (now - frame.stamp_ns) * 1e-9
            if age > max_age:
                raise StaleInput(f'{self._name(topic)}: latest image is {age:.2f} s old (max_input_age {max_age} s)')
        positions = {}
        joint_topic = self._name(self._joint_topic)
        for name in self._proprio.required_joints:
            if name not in joints:
                raise StaleInput(f'{joint_topic}: no position received for joint {name!r}')
            position, stamp = joints[name]
            age = (now - stamp) * 1e-9
            if age > max_age:
                raise StaleInput(f'{joint_topic}: position of joint {name!r} is {age:.2f} s old '
                                 f'(max_input_age {max_age} s)')
            positions[name] = position
        proprio = self._proprio.build(positions) if self._wants_proprio else None
        linear = angular = None
        velocity_stamp = now * 1e-9
        if velocity is not None and (now - velocity.received_ns) * 1e-9 <= max_age:
            linear, angular, velocity_stamp = velocity.linear, velocity.angular, velocity.stamp_s
        return Observation(images=[f.rgb for f in frames], stamp_ns=min(f.stamp_ns for f in frames), proprio=proprio,
                           linear=linear, angular=angular, velocity_stamp=velocity_stamp, picked_up=picked_up,
                           conversion_s=max(f.conversion_s for f in frames))

    def rates(self) -> list[InputRate]:
        now = time.monotonic()
        return [InputRate(self._name(topic), meter.rate(now), self._dropped.get(topic))
                for topic, meter in self._rates.items()]
