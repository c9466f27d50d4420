"""The node's inputs: the newest message per camera and per joint-state layout, and the rules that
decide whether they make an :class:`Observation`.

Intake costs almost nothing: a camera callback ticks a rate meter, checks a raw image's layout (a few
comparisons, no pixels touched) and stores the message with its arrival time. Joint states, at robot
rates (500 Hz and more), never wake the executor: their subscription is *pulled* (:class:`PulledGroup`)
and :meth:`LatestInputs.drain_joint_states` takes what DDS holds in one batch, every
``JOINT_DRAIN_PERIOD`` on a steady timer and again whenever a goal reads the joints. Each message keeps
the arrival time rmw measured, so ages and a layout's period are those of the arrival, not of the batch.
(An executor-driven subscription costs a fraction of a millisecond of Python per message:
benchmarks/subscription_cost.md.) Pixels are converted (or JPEG/PNG decoded), joint positions merged,
the end-effector twist and the proprio computed only for the sample a goal actually uses, on the
execute thread, when it uses it.

Freshness uses both clocks (see README, "Freshness"): a message is stale when its header stamp is older
than ``max_input_age`` by the node's clock, or when it *arrived* longer ago than that; a stamp more than
``future_stamp_tolerance`` ahead of the node's clock warns (throttled, naming the topic) and is stale; a
zero stamp warns and the arrival time stands in for it.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
from rclpy.callback_groups import CallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidHandle
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool

from ..control.kinematics import EndEffectorVelocity, ProprioBuilder
from ..data.images import check_image_layout, compressed_image_to_rgb, msg_to_rgb
from .messages import time_to_ns

WARN_PERIOD = 2.0             # s between repeated warnings about the same thing
MAX_JOINT_LAYOUTS = 16        # distinct JointState name lists kept (arm and gripper often publish apart)
LAYOUT_SLACK_NS = 5_000_000   # scheduling jitter allowed on top of two periods of a joint layout
LAYOUT_FIRST_NS = 100_000_000  # a layout seen once counts as current this long
JOINT_DRAIN_PERIOD = 0.05     # s between batch takes of the joint states while no goal asks for them
# Sensor-data QoS, but deep enough to hold every joint state between two drains at 1 kHz, with a forward
# pass (the executor's pause) in between: rates and layout periods count every message.
JOINT_STATE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.BEST_EFFORT,
                             durability=DurabilityPolicy.VOLATILE)


class PulledGroup(CallbackGroup):
    """A callback group no executor ever runs or waits on: its subscriptions are taken by hand."""

    def can_execute(self, entity) -> bool:
        return False

    def beginning_execution(self, entity) -> bool:
        return False

    def ending_execution(self, entity) -> None:
        pass


class StaleInput(RuntimeError):
    """The latest inputs are missing or too old; the message says which and how old."""


class RateMeter:
    """Messages per second over the last ``window`` seconds (or since the first message, if sooner)."""

    def __init__(self, window: float = 2.0):
        self.window, self.times, self.first = window, deque(), None

    def tick(self, now: float) -> None:
        """Count a message that arrived at ``now`` (monotonic s; ticks come in arrival order)."""
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


class Arrival(NamedTuple):
    """A message as a callback stored it."""
    msg: object
    received_ns: int       # node clock (sim time under use_sim_time)
    period_ns: int = 0     # since the previous message of the same joint layout (0: first one)


@dataclass
class Frame:
    rgb: np.ndarray
    stamp_ns: int          # header stamp (arrival time when the stamp is zero)
    received_ns: int


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
    stamp_ns: int                    # oldest camera stamp, never ahead of the node's clock
    proprio: Optional[np.ndarray]
    linear: Optional[np.ndarray]
    angular: Optional[np.ndarray]
    velocity_stamp: float            # s, for the controller
    picked_up: float                 # perf_counter when observe() began (before any conversion)
    conversion_s: float              # time spent converting/decoding frames for this observation


@dataclass(frozen=True)
class InputRate:
    topic: str                       # resolved name
    rate_hz: float
    dropped: Optional[int]           # frames dropped as unconvertible (cameras only)
    age_at_inference: Optional[float] = None   # s since the sample the last inference used arrived


class Freshness:
    """The two-clock rule for one message; warnings throttled per topic."""

    def __init__(self, node, future_tolerance: float):
        self._node, self.future_tolerance = node, future_tolerance
        self._last_warning: dict[str, float] = {}

    def warn_throttled(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(key, -math.inf) >= WARN_PERIOD:
            self._last_warning[key] = now
            self._node.get_logger().warning(message)

    def stamp(self, topic: str, msg, received_ns: int) -> int:
        """The header stamp in ns; a zero stamp warns and is replaced by the arrival time."""
        stamp = time_to_ns(msg.header.stamp)
        if stamp == 0:
            self.warn_throttled(f'zero {topic}', f'{topic}: header stamp is zero; using the arrival time')
            return received_ns
        return stamp

    def check(self, topic: str, what: str, stamp_ns: int, received_ns: int, now_ns: int, max_age: float) -> None:
        """Raise StaleInput when the message is stamped in the future, old by its stamp, or arrived too long ago."""
        ahead = (stamp_ns - now_ns) * 1e-9
        if ahead > self.future_tolerance:
            self.warn_throttled(f'future {topic}', f'{topic}: header stamp is {ahead:.3f} s ahead of the node clock '
                                f'(future_stamp_tolerance {self.future_tolerance:g} s); treated as stale')
            raise StaleInput(f'{topic}: {what} is stamped {ahead:.2f} s in the future '
                             f'(future_stamp_tolerance {self.future_tolerance:g} s)')
        age = (now_ns - stamp_ns) * 1e-9
        if age > max_age:
            raise StaleInput(f'{topic}: {what} is {age:.2f} s old (max_input_age {max_age} s)')
        arrived = (now_ns - received_ns) * 1e-9
        if arrived > max_age:
            raise StaleInput(f'{topic}: {what} arrived {arrived:.2f} s ago (max_input_age {max_age} s)')


class LatestInputs:
    """Subscribes to the cameras, joint states and success topic of ``node``; keeps only the newest."""

    def __init__(self, node, camera_topics: list[str], joint_states_topic: str, success_topic: str,
                 velocity: Optional[EndEffectorVelocity], proprio: ProprioBuilder, wants_proprio: bool,
                 camera_transports: Optional[list[str]] = None, future_stamp_tolerance: float = 0.1,
                 callback_group=None):
        self._node, self._velocity, self._proprio, self._wants_proprio = node, velocity, proprio, wants_proprio
        self._topics = list(camera_topics)
        self._compressed = [t == 'compressed' for t in (camera_transports or ['raw'] * len(self._topics))]
        self._names = [node.resolve_topic_name(topic) for topic in self._topics]
        self._joint_topic, self._joint_name = joint_states_topic, node.resolve_topic_name(joint_states_topic)
        self.freshness = Freshness(node, future_stamp_tolerance)
        # Written by the executor thread, read by the execute thread: single assignments, no lock needed.
        self._latest: list[Optional[Arrival]] = [None] * len(self._topics)
        # name list -> newest message with it; readers iterate a copy (dict.copy is atomic under the GIL)
        self._joint_layouts: dict[tuple, Arrival] = {}
        self._success_at = -math.inf      # monotonic time of the last True on success_topic
        self._rates = {topic: RateMeter() for topic in self._topics + [joint_states_topic]}
        self._dropped = {topic: 0 for topic in self._topics}
        # Execute-thread state: the converted frame per camera, the joint message fed to the estimator.
        self._converted: list[Optional[tuple[object, Frame]]] = [None] * len(self._topics)
        self._fed = None
        self._velocity_sample: Optional[VelocitySample] = None
        self._velocity_lock = threading.Lock()
        self._ages: dict[str, float] = {}       # resolved topic -> arrival age (s) of what the last inference used

        for index, topic in enumerate(self._topics):
            kind = CompressedImage if self._compressed[index] else Image
            node.create_subscription(kind, topic, lambda msg, i=index: self._on_image(msg, i),
                                     qos_profile_sensor_data, callback_group=callback_group)
        self._joint_subscription = node.create_subscription(JointState, joint_states_topic, lambda msg: None,
                                                            JOINT_STATE_QOS, callback_group=PulledGroup())
        self._drain_lock = threading.Lock()
        # A steady clock: under use_sim_time a paused /clock must not stop the intake.
        node.create_timer(JOINT_DRAIN_PERIOD, self.drain_joint_states, callback_group=callback_group,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        node.create_subscription(Bool, success_topic, self._on_success, 10, callback_group=callback_group)

    def _now_ns(self) -> int:
        return self._node.get_clock().now().nanoseconds

    # --- callbacks (executor thread): store, nothing more ---------------------------------------

    def _on_image(self, msg, index: int) -> None:
        topic = self._topics[index]
        self._rates[topic].tick(time.monotonic())
        if not self._compressed[index]:
            try:
                check_image_layout(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))
            except ValueError as error:
                self._dropped[topic] += 1
                self.freshness.warn_throttled(f'image {topic}', f'{self._names[index]}: dropped frame: {error}')
                return
        self._latest[index] = Arrival(msg, self._now_ns())

    def drain_joint_states(self) -> int:
        """Take every joint state DDS holds, oldest first, and store each with its arrival time; returns how
        many. Called by the timer (executor thread) and before each read (execute thread)."""
        taken = 0
        with self._drain_lock:
            try:
                with self._joint_subscription.handle:
                    while (sample := self._joint_subscription.handle.take_message(JointState, False)) is not None:
                        if not taken:   # one clock reading per batch keeps the arrivals in order
                            node_now, system_now, monotonic_now = self._now_ns(), time.time_ns(), time.monotonic()
                        msg, info = sample
                        # rmw's receive time is system time; 0 where the middleware does not measure it
                        waited = max(0, system_now - info['received_timestamp']) if info['received_timestamp'] else 0
                        self._store_joint_state(msg, node_now - waited, monotonic_now - waited * 1e-9)
                        taken += 1
            except InvalidHandle:       # destroyed at shutdown
                pass
        return taken

    def _store_joint_state(self, msg: JointState, received: int, arrived_monotonic: float) -> None:
        self._rates[self._joint_topic].tick(arrived_monotonic)
        layouts = self._joint_layouts
        layout = tuple(msg.name)
        previous = layouts.get(layout)
        if previous is None and len(layouts) >= MAX_JOINT_LAYOUTS:
            layouts.pop(min(layouts, key=lambda key: layouts[key].received_ns))
        layouts[layout] = Arrival(msg, received, received - previous.received_ns if previous else 0)

    def _on_success(self, msg: Bool) -> None:
        if msg.data:
            self._success_at = time.monotonic()

    # --- reads (execute and diagnostics threads) ----------------------------------------------------

    def success_since(self, monotonic_time: float) -> bool:
        return self._success_at > monotonic_time

    def _frame(self, index: int, now_ns: int, max_age: float) -> tuple[Frame, float]:
        """The newest convertible frame of camera ``index`` (converted now if new) and the time converting took."""
        arrival, name, spent = self._latest[index], self._names[index], 0.0
        if arrival is None:
            raise StaleInput(f'{name}: no valid image received yet')
        cached = self._converted[index]
        if cached is None or cached[0] is not arrival.msg:
            start = time.perf_counter()
            msg = arrival.msg
            try:
                rgb = compressed_image_to_rgb(msg.format, msg.data) if self._compressed[index] else msg_to_rgb(msg)
            except Exception as error:  # noqa: BLE001 - a bad frame is dropped, never fatal
                self._dropped[self._topics[index]] += 1
                self.freshness.warn_throttled(f'image {name}', f'{name}: dropped frame: {error}')
            else:
                cached = (msg, Frame(rgb, self.freshness.stamp(name, msg, arrival.received_ns), arrival.received_ns))
                self._converted[index] = cached
            spent = time.perf_counter() - start
        if cached is None:
            raise StaleInput(f'{name}: no valid image received yet')
        frame = cached[1]
        self.freshness.check(name, 'latest image', frame.stamp_ns, frame.received_ns, now_ns, max_age)
        return frame, spent

    def _joint_positions(self, now_ns: int, max_age: float) -> dict[str, float]:
        """Positions of the joints the proprio needs, merged over the stored layouts (newest wins)."""
        merged: dict[str, tuple[float, int, int]] = {}
        for arrival in sorted(self._joint_layouts.copy().values(), key=lambda a: a.received_ns):
            msg = arrival.msg
            if len(msg.position) != len(msg.name):
                self.freshness.warn_throttled('joint positions', f'{self._joint_name}: {len(msg.name)} names but '
                                              f'{len(msg.position)} positions; positions ignored')
                continue
            if len(set(msg.name)) != len(msg.name):
                duplicates = sorted({n for n in msg.name if list(msg.name).count(n) > 1})
                self.freshness.warn_throttled('joint duplicates', f'{self._joint_name}: duplicate joint names '
                                              f'{duplicates} in one message; the last copy is used')
            stamp = self.freshness.stamp(self._joint_name, msg, arrival.received_ns)
            for name, position in zip(msg.name, msg.position):
                merged[name] = (float(position), stamp, arrival.received_ns)
        positions = {}
        for name in self._proprio.required_joints:
            if name not in merged:
                raise StaleInput(f'{self._joint_name}: no position received for joint {name!r}')
            position, stamp, received = merged[name]
            if not math.isfinite(position):
                raise StaleInput(f'{self._joint_name}: position of joint {name!r} is {position}')
            self.freshness.check(self._joint_name, f'position of joint {name!r}', stamp, received, now_ns, max_age)
            positions[name] = position
        return positions

    def _velocity_source(self) -> Optional[Arrival]:
        """The newest joint message that covers the estimator's joints, among the layouts still arriving
        (else the newest of all, which then says why the velocity is unknown)."""
        arrivals = sorted(self._joint_layouts.copy().values(), key=lambda a: a.received_ns, reverse=True)
        if not arrivals:
            return None
        wanted, newest = set(self._velocity.joint_names), arrivals[0].received_ns
        for arrival in arrivals:
            # Still arriving: not silent for longer than two of its own periods (arm and gripper may
            # publish apart, at different rates); a layout that stopped must not pass for the current one.
            silent_ns = newest - arrival.received_ns
            if arrival.period_ns and silent_ns > 2 * arrival.period_ns + LAYOUT_SLACK_NS:
                continue
            if not arrival.period_ns and silent_ns > LAYOUT_FIRST_NS:
                continue
            if wanted.issubset(arrival.msg.name):
                return arrival
        return arrivals[0]

    def velocity(self) -> Optional[VelocitySample]:
        """The twist from the newest joint state (computed now if that state is new); None when unknown."""
        if self._velocity is None:
            return None
        self.drain_joint_states()
        with self._velocity_lock:
            arrival = self._velocity_source()
            if arrival is None:
                return None
            if arrival.msg is not self._fed:
                self._fed = arrival.msg
                self._velocity_sample = self._estimate(arrival)
            sample = self._velocity_sample
        if sample is not None and (sample.stamp_s * 1e9 - self._now_ns()) * 1e-9 > self.freshness.future_tolerance:
            return None     # stamped in the future: the controller's dwell clock must not jump ahead
        return sample

    def _estimate(self, arrival: Arrival) -> Optional[VelocitySample]:
        msg = arrival.msg
        stamp = self.freshness.stamp(self._joint_name, msg, arrival.received_ns)
        try:
            estimate = self._velocity.update(list(msg.name), list(msg.position), list(msg.velocity), stamp * 1e-9)
        except Exception as error:  # noqa: BLE001 - a bad message means "velocity unknown", never fatal
            self.freshness.warn_throttled('joint velocity', f'{self._joint_name}: velocity unknown: {error}')
            return None
        if not estimate.valid:      # throttled per kind of fault: a new fault is always told at once
            self.freshness.warn_throttled(f'joint velocity {estimate.reason.split("(")[0]}',
                                          f'{self._joint_name}: end-effector velocity unknown '
                                          f'({estimate.reason}); the controller falls to fine')
            return None
        if estimate.reason:      # valid, but something was odd (e.g. unknown joints ignored)
            self.freshness.warn_throttled('joint note', f'{self._joint_name}: {estimate.reason}')
        return VelocitySample(np.asarray(estimate.linear, float), np.asarray(estimate.angular, float),
                              stamp * 1e-9, arrival.received_ns)

    def observe(self, max_age: float) -> Observation:
        """The newest inputs, converted now; raises StaleInput when any is missing, too old or from the future."""
        picked_up = time.perf_counter()
        self.drain_joint_states()
        now = self._now_ns()
        frames, conversion = [], 0.0
        for index in range(len(self._topics)):
            frame, spent = self._frame(index, now, max_age)
            frames.append(frame)
            conversion += spent
        positions = self._joint_positions(now, max_age)
        newest_joint = max((a.received_ns for a in self._joint_layouts.copy().values()), default=None)
        self._ages = {name: (now - frame.received_ns) * 1e-9 for name, frame in zip(self._names, frames)}
        if newest_joint is not None:
            self._ages[self._joint_name] = (now - newest_joint) * 1e-9
        proprio = self._proprio.build(positions) if self._wants_proprio else None
        linear = angular = None
        velocity_stamp = now * 1e-9
        velocity = self.velocity()
        if velocity is not None and (now - velocity.received_ns) * 1e-9 <= max_age:
            linear, angular, velocity_stamp = velocity.linear, velocity.angular, velocity.stamp_s
        # A chunk is stamped with its observation time, never later than now (tolerated future stamps included).
        stamp = min(min(f.stamp_ns for f in frames), now)
        return Observation(images=[f.rgb for f in frames], stamp_ns=stamp, proprio=proprio, linear=linear,
                           angular=angular, velocity_stamp=velocity_stamp, picked_up=picked_up,
                           conversion_s=conversion)

    def rates(self) -> list[InputRate]:
        now = time.monotonic()
        names = self._names + [self._joint_name]
        return [InputRate(name, meter.rate(now), self._dropped.get(topic), self._ages.get(name))
                for name, (topic, meter) in zip(names, self._rates.items())]
