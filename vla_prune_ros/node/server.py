"""``vla_prune_node``: the VLA policy as a ROS 2 action server (``run_instruction``).

A thin rclpy shell over the ROS-free core: :class:`~vla_prune_ros.policy.VLAPolicy` (model +
pruning method), :class:`~vla_prune_ros.controller.CoarseFineController` (coarse/fine from the
*measured* end-effector velocity), :mod:`~vla_prune_ros.kinematics` and
:mod:`~vla_prune_ros.image_conversion`. Parameters, their checks and the launch merge live in
:mod:`~vla_prune_ros.node_config`.

Threads. Sensor callbacks only convert and store the latest sample (each topic in its own
mutually exclusive group), so they never queue behind a forward pass. The policy runs in the
action's execute callback; one goal runs at a time (``_execution_lock``), a new goal preempts
the running one, and the executor has enough threads that a running and a waiting goal cannot
starve the sensor callbacks.

One goal: ``policy.reset()``, ``controller.reset()``, then repeat: take the latest frames and
joint state, check their age (abort or wait), step the controller with the measured velocity,
infer, reject non-finite actions, clip, publish ``action_chunk`` (+ ``inference_stats``,
optional ``JointTrajectory``, feedback), and wait until the chunk is consumed
(``control_dt * execute_steps``) unless the controller switches coarse -> fine (flush: infer at
once). It ends on ``success_topic`` True (SUCCEEDED), ``max_chunks`` (CHUNK_LIMIT), ``timeout``
(TIMEOUT), cancel (CANCELED), a newer goal (PREEMPTED) or bad input (FAILED). Goal states:
SUCCEEDED and CHUNK_LIMIT end *succeeded*, CANCELED *canceled*, the rest *aborted*; the result's
``status`` and ``reason`` say which and why.
"""
from __future__ import annotations

import math
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration as DurationMsg
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from vla_prune_interfaces.action import RunInstruction
from vla_prune_interfaces.msg import ActionChunk, InferenceStats

from ..parameters import table as node_config
from ..control.controller import CoarseFineController
from ..data.images import msg_to_rgb
from ..control.kinematics import ProprioBuilder
from ..parameters.table import NODE_NAME, ModelInfo, ParameterError

Result = RunInstruction.Result
EXECUTOR_THREADS = 8          # sensors + diagnostics + parameter services + a running and a waiting goal
WARN_PERIOD = 2.0             # s between repeated warnings about the same thing
POLL_PERIOD = 0.005           # s between checks while a chunk is being consumed or input awaited
STATUS_NAMES = {Result.STATUS_SUCCEEDED: 'SUCCEEDED', Result.STATUS_CHUNK_LIMIT: 'CHUNK_LIMIT',
                Result.STATUS_TIMEOUT: 'TIMEOUT', Result.STATUS_CANCELED: 'CANCELED',
                Result.STATUS_PREEMPTED: 'PREEMPTED', Result.STATUS_FAILED: 'FAILED'}

_ROS_TYPES = {'bool': Parameter.Type.BOOL, 'integer': Parameter.Type.INTEGER, 'double': Parameter.Type.DOUBLE,
              'string': Parameter.Type.STRING, 'bool_array': Parameter.Type.BOOL_ARRAY,
              'integer_array': Parameter.Type.INTEGER_ARRAY, 'double_array': Parameter.Type.DOUBLE_ARRAY,
              'string_array': Parameter.Type.STRING_ARRAY}


class StartupError(RuntimeError):
    """The node cannot start; the message is the one line it logs before exiting non-zero."""


# --- plain helpers (no ROS state) -----------------------------------------------------------------

def time_to_ns(stamp: TimeMsg) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_time(nanoseconds: int) -> TimeMsg:
    return TimeMsg(sec=int(nanoseconds // 1_000_000_000), nanosec=int(nanoseconds % 1_000_000_000))


def duration_to_s(duration: DurationMsg) -> float:
    return duration.sec + duration.nanosec * 1e-9


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


@dataclass
class Observation:
    images: list
    stamp_ns: int                    # oldest camera stamp: the observation time of the chunk
    proprio: Optional[np.ndarray]
    linear: Optional[np.ndarray]     # measured EE velocity, None when unknown
    angular: Optional[np.ndarray]
    velocity_stamp: float            # s, for the controller
    picked_up: float                 # perf_counter when the inputs were taken
    conversion_s: float              # conversion time of the frames used


@dataclass
class GoalRun:
    """One accepted goal. ``lock`` orders its terminal state change against preemption."""
    handle: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    preempted: bool = False

    @property
    def active(self) -> bool:
        return self.handle.is_active and not self.preempted


# --- the node ---------------------------------------------------------------------------------

class VLAPruneNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._values = self._declare_parameters()
        try:
            node_config.validate(self._values)
        except ParameterError as error:
            raise StartupError(f'invalid parameter {error}') from None
        if not self._values['checkpoint']:
            raise StartupError('parameter checkpoint is not set: pass -p checkpoint:=<checkpoint directory>')

        if self._values['torch_threads']:
            import torch
            torch.set_num_threads(self._values['torch_threads'])
        self.policy = self._load_policy()
        self._applied_method = (self._values['method'], node_config.method_options(self._values))
        config = self.policy.config
        self.model_info = ModelInfo(action_dim=config.action_dim, chunk_len=config.chunk_len,
                                    num_cameras=config.num_cameras, proprio_dim=config.proprio_dim,
                                    camera_names=tuple(config.camera_names), action_names=tuple(config.action_names))
        try:
            node_config.validate(self._values, self.model_info)
            urdf = node_config.resolve_urdf(self._values)
        except ParameterError as error:
            raise StartupError(f'invalid parameter {error}') from None
        self.controller = CoarseFineController(node_config.controller_config(self._values))
        self._velocity = self._make_velocity_estimator(urdf)
        try:
            self._proprio = ProprioBuilder(
                self._values['proprio_source'], config.proprio_dim, urdf, self._values['ee_frame'],
                self._values['proprio_joint_names'], self._values['proprio_reference_rotvec'])
        except ValueError as error:
            raise StartupError(f'proprio: {error}') from None
        try:
            self.policy.warmup()
        except (RuntimeError, ValueError) as error:
            raise StartupError(f'warm-up inference failed on device {self.policy.device} with dtype '
                               f'{self.policy.dtype}: {error}') from None

        # Latest inputs, shared between the sensor callbacks and the execute thread.
        self._input_lock = threading.Lock()
        self._topics = list(self._values['camera_topics'])
        self._frames: list[Optional[Frame]] = [None] * len(self._topics)
        self._joint_positions: dict[str, tuple[float, int]] = {}     # name -> (position, stamp ns)
        self._velocity_sample = None      # (linear, angular, stamp s, received ns) of the last valid estimate
        self._success_at = -math.inf      # monotonic time of the last True on success_topic
        self._rates = {topic: RateMeter() for topic in self._topics + [self._values['joint_states_topic']]}
        self._dropped = {topic: 0 for topic in self._topics}
        self._last_warning: dict[str, float] = {}

        # Parameter changes apply at the next inference.
        self._config_lock = threading.Lock()
        self._config_dirty = False
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)

        # Goals.
        self._goal_lock = threading.Lock()
        self._execution_lock = threading.Lock()
        self._runs: dict[bytes, GoalRun] = {}
        self._current: Optional[GoalRun] = None
        self._stopping = threading.Event()
        self._last_latency = math.nan
        self._chunks_published = 0
        self._overheads = deque(maxlen=200)   # s: node time per chunk outside the model forward

        sensor_qos = qos_profile_sensor_data
        for index, topic in enumerate(self._topics):
            self.create_subscription(Image, topic, lambda msg, i=index: self._on_image(msg, i), sensor_qos,
                                     callback_group=MutuallyExclusiveCallbackGroup())
        self.create_subscription(JointState, self._values['joint_states_topic'], self._on_joint_state, sensor_qos,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.create_subscription(Bool, self._values['success_topic'], self._on_success, 10,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self._chunk_pub = self.create_publisher(ActionChunk, 'action_chunk', 10)
        self._stats_pub = self.create_publisher(InferenceStats, 'inference_stats', 10)
        self._trajectory_pub = self.create_publisher(JointTrajectory, self._values['joint_trajectory_topic'], 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup())

        # Last: the action server, so no goal arrives before the model is ready.
        self._action_server = ActionServer(
            self, RunInstruction, 'run_instruction', execute_callback=self._execute,
            goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
            cancel_callback=self._on_cancel, callback_group=ReentrantCallbackGroup())
        self.get_logger().info(
            f"ready: method {self.policy.method.name}, {config.num_cameras} cameras {self._topics}, "
            f"chunk {config.chunk_len} x {config.action_dim}, device {self.policy.device}, dtype {self.policy.dtype}")

    # --- startup ---------------------------------------------------------------------------

    def _declare_parameters(self) -> dict[str, Any]:
        errors = []
        for spec in node_config.PARAMETERS.values():
            descriptor = ParameterDescriptor(
                name=spec.name, type=_ROS_TYPES[spec.type].value, description=spec.description,
                additional_constraints=spec.constraints(), read_only=spec.read_only)
            if spec.low is not None and spec.type == 'integer':
                descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=0)]
            elif spec.low is not None and spec.type == 'double':
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(spec.low), to_value=float(spec.high), step=0.0)]
            # An empty list has no ROS type of its own, so empty arrays are declared by type.
            default = _ROS_TYPES[spec.type] if spec.is_array and not spec.default else spec.default
            try:
                self.declare_parameter(spec.name, default, descriptor)
            except (ParameterException, TypeError, ValueError) as error:
                errors.append(str(error).removesuffix(f': {spec.name}'))
        if errors:
            raise StartupError('invalid parameter: ' + '; '.join(errors))
        # rclpy ignores overrides nobody declares; a typo in a params file deserves a word.
        unknown = sorted(set(getattr(self, '_parameter_overrides', {})) - set(node_config.PARAMETERS)
                         - {'use_sim_time', 'start_type_description_service'})
        if unknown:
            self.get_logger().warning(f'ignoring unknown parameter(s) {unknown}')
        return {name: self._read(name) for name in node_config.PARAMETERS}

    def _read(self, name: str):
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:    # an array declared by type, left empty
            value = None
        return self._plain(node_config.PARAMETERS[name], value)

    @staticmethod
    def _plain(spec, value):
        if spec.is_array:
            return [] if value is None else list(value)
        return value

    def _load_policy(self):
        from ..model.checkpoint import CheckpointError
        from ..policy import VLAPolicy
        values = self._values
        method = values['method']
        try:
            return VLAPolicy.from_checkpoint(values['checkpoint'], device=values['device'], dtype=values['dtype'],
                                             method=method, method_options=node_config.method_options(values))
        except CheckpointError as error:
            raise StartupError(f'cannot load checkpoint: {error}') from None
        except (ValueError, OSError) as error:
            raise StartupError(f"cannot load checkpoint {values['checkpoint']}: {error}") from None

    def _make_velocity_estimator(self, urdf: str):
        if not urdf:
            self.get_logger().warning('no robot_description or urdf_path: the end-effector velocity is unknown '
                                      '(the controller acts per controller.unknown_velocity_mode)')
            return None
        from ..control.kinematics import EndEffectorVelocity
        try:
            return EndEffectorVelocity(urdf, self._values['ee_frame'], self._values['joint_names'] or None,
                                       self._values['velocity_smoothing'])
        except (ValueError, KeyError, RuntimeError) as error:
            raise StartupError(f'kinematics: {error}') from None

    # --- parameters ---------------------------------------------------------------------------

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        changes = {p.name: self._plain(node_config.PARAMETERS[p.name], p.value) for p in parameters
                   if p.name in node_config.PARAMETERS}
        unknown = [p.name for p in parameters if p.name not in node_config.PARAMETERS]
        if unknown:
            return SetParametersResult(successful=False, reason=f'{unknown[0]}: unknown parameter of {NODE_NAME}')
        with self._config_lock:
            reason = node_config.validate_update(self._values, changes, self.model_info)
        if reason:
            self.get_logger().warning(f'refused parameter change: {reason}')
        return SetParametersResult(successful=not reason, reason=reason)

    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        with self._config_lock:
            for p in parameters:
                self._values[p.name] = self._plain(node_config.PARAMETERS[p.name], p.value)
            self._config_dirty = True
        self.get_logger().info('parameters set: ' + ', '.join(f'{p.name}={p.value}' for p in parameters))

    def _apply_parameter_changes(self) -> None:
        """Called by the execute thread before an inference: the method and the controller follow."""
        with self._config_lock:
            if not self._config_dirty:
                return
            values = dict(self._values)
            self._config_dirty = False
        method, options = values['method'], node_config.method_options(values)
        if (method, options) != self._applied_method:
            self.policy.set_method(method, **options)
            self._applied_method = (method, options)
            self.get_logger().info(f'method {method} with {options}')
        self.controller.update_config(node_config.controller_config(values))
        if self._velocity is not None:
            self._velocity.smoothing = values['velocity_smoothing']

    def _value(self, name: str):
        with self._config_lock:
            return self._values[name]

    # --- sensors ------------------------------------------------------------------------------

    def _warn_throttled(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(key, -math.inf) >= WARN_PERIOD:
            self._last_warning[key] = now
            self.get_logger().warning(message)

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_image(self, msg: Image, index: int) -> None:
        received = self._now_ns()
        topic = self._topics[index]
        self._rates[topic].tick(time.monotonic())
        start = time.perf_counter()
        try:
            rgb = msg_to_rgb(msg)
        except Exception as error:  # noqa: BLE001 - a bad frame is dropped, never fatal
            self._dropped[topic] += 1
            self._warn_throttled(f'image {topic}', f'{self.resolve_topic_name(topic)}: dropped frame: {error}')
            return
        conversion = time.perf_counter() - start
        stamp = time_to_ns(msg.header.stamp) or received
        with self._input_lock:
            self._frames[index] = Frame(rgb, stamp, received, conversion)

    def _on_joint_state(self, msg: JointState) -> None:
        received = self._now_ns()
        topic = self._values['joint_states_topic']
        self._rates[topic].tick(time.monotonic())
        stamp = time_to_ns(msg.header.stamp) or received
        names, positions = list(msg.name), list(msg.position)
        if len(positions) == len(names):
            with self._input_lock:
                for name, position in zip(names, positions):
                    if math.isfinite(position):
                        self._joint_positions[name] = (float(position), stamp)
        else:
            self._warn_throttled('joint positions', f'{self.resolve_topic_name(topic)}: {len(names)} names but '
                                 f'{len(positions)} positions; positions ignored')
        if self._velocity is None:
            return
        try:
            estimate = self._velocity.update(names, positions, list(msg.velocity), stamp * 1e-9)
        except Exception as error:  # noqa: BLE001 - a bad message means "velocity unknown", never fatal
            self._warn_throttled('joint velocity', f'{self.resolve_topic_name(topic)}: velocity unknown: {error}')
            return
        if estimate.valid:
            with self._input_lock:
                self._velocity_sample = (np.asarray(estimate.linear, float), np.asarray(estimate.angular, float),
                                         stamp * 1e-9, received)
            if estimate.reason:      # valid, but something was odd (e.g. unknown joints ignored)
                self._warn_throttled('joint note', f'{self.resolve_topic_name(topic)}: {estimate.reason}')
        else:
            with self._input_lock:
                self._velocity_sample = None
            self._warn_throttled('joint velocity', f'{self.resolve_topic_name(topic)}: end-effector velocity unknown '
                                 f'({estimate.reason}); the controller falls to fine')

    def _on_success(self, msg: Bool) -> None:
        if msg.data:
            self._success_at = time.monotonic()

    def _observe(self) -> tuple[Optional[Observation], str]:
        """The latest inputs if fresh enough, else (None, why not)."""
        now = self._now_ns()
        max_age = self._value('max_input_age')
        with self._input_lock:
            frames = list(self._frames)
            joints = dict(self._joint_positions)
            velocity = self._velocity_sample
        picked_up = time.perf_counter()
        for topic, frame in zip(self._topics, frames):
            if frame is None:
                return None, f'{self.resolve_topic_name(topic)}: no valid image received yet'
            age = (now - frame.stamp_ns) * 1e-9
            if age > max_age:
                return None, (f'{self.resolve_topic_name(topic)}: latest image is {age:.2f} s old '
                              f'(max_input_age {max_age} s)')
        positions = {}
        joint_topic = self.resolve_topic_name(self._values['joint_states_topic'])
        for name in self._proprio.required_joints:
            if name not in joints:
                return None, f'{joint_topic}: no position received for joint {name!r}'
            position, stamp = joints[name]
            age = (now - stamp) * 1e-9
            if age > max_age:
                return None, f'{joint_topic}: position of joint {name!r} is {age:.2f} s old (max_input_age {max_age} s)'
            positions[name] = position
        proprio = self._proprio.build(positions) if self.policy.config.proprio_dim else None
        linear = angular = None
        velocity_stamp = now * 1e-9
        if velocity is not None and (now - velocity[3]) * 1e-9 <= max_age:
            linear, angular, velocity_stamp = velocity[0], velocity[1], velocity[2]
        return Observation(images=[f.rgb for f in frames], stamp_ns=min(f.stamp_ns for f in frames), proprio=proprio,
                           linear=linear, angular=angular, velocity_stamp=velocity_stamp, picked_up=picked_up,
                           conversion_s=max(f.conversion_s for f in frames)), ''

    # --- goals -----------------------------------------------------------------------------------

    def _on_goal(self, goal: RunInstruction.Goal) -> GoalResponse:
        if not goal.instruction.strip():
            self.get_logger().warning('rejected goal: empty instruction')
            return GoalResponse.REJECT
        if self.policy is None:
            self.get_logger().warning('rejected goal: model not loaded')
            return GoalResponse.REJECT
        if self._stopping.is_set():
            self.get_logger().warning('rejected goal: node shutting down')
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_accepted(self, handle) -> None:
        # Under one lock, so the goal being replaced has always been moved to EXECUTING by its own
        # execute() call first (rcl_action allows no ACCEPTED -> ABORTED transition).
        run = GoalRun(handle)
        with self._goal_lock:
            previous, self._current = self._current, run
            self._runs[bytes(handle.goal_id.uuid)] = run
            if previous is not None:
                with previous.lock:
                    if previous.handle.is_active:
                        previous.preempted = True
                        try:
                            previous.handle.abort()
                        except Exception as error:  # noqa: BLE001 - never let a state race kill the node
                            self.get_logger().error(f'could not abort the preempted goal: {error}')
                        self.get_logger().info('goal preempted by a newer goal')
            handle.execute()

    def _on_cancel(self, handle) -> CancelResponse:
        return CancelResponse.ACCEPT

    def _end_condition(self, run: GoalRun, started: float, chunks: int) -> Optional[tuple[int, str]]:
        goal = run.handle.request
        if run.preempted or not run.handle.is_active:
            return Result.STATUS_PREEMPTED, 'preempted by a newer goal'
        if run.handle.is_cancel_requested:
            return Result.STATUS_CANCELED, 'canceled by the client'
        if self._stopping.is_set():
            return Result.STATUS_FAILED, 'node shutting down'
        if self._success_at > started:
            return Result.STATUS_SUCCEEDED, f'{self.resolve_topic_name(self._values["success_topic"])} reported success'
        if goal.max_chunks and chunks >= goal.max_chunks:
            return Result.STATUS_CHUNK_LIMIT, f'executed max_chunks={goal.max_chunks} chunks'
        timeout = duration_to_s(goal.timeout)
        if timeout > 0 and time.monotonic() - started >= timeout:
            return Result.STATUS_TIMEOUT, f'timeout of {timeout:g} s reached'
        return None

    def _execute(self, handle):
        run = self._runs.get(bytes(handle.goal_id.uuid)) or GoalRun(handle)
        # One goal at a time: wait for the previous one to notice its preemption and stop.
        while not self._execution_lock.acquire(timeout=0.05):
            if not run.active:
                return self._finish(run, Result.STATUS_PREEMPTED, 'preempted by a newer goal', [], [], 0)
        try:
            if not run.active:
                return self._finish(run, Result.STATUS_PREEMPTED, 'preempted by a newer goal', [], [], 0)
            return self._run_goal(run)
        except Exception as error:  # noqa: BLE001 - a goal must end with a reason, never kill the node
            if self._stopping.is_set() or not self.context.ok():    # Ctrl-C: the context is already gone
                return Result(status=Result.STATUS_FAILED, reason='node shutting down')
            reason = f'internal error: {type(error).__name__}: {error}'
            self.get_logger().error(reason)
            return self._finish(run, Result.STATUS_FAILED, reason, [], [], 0)
        finally:
            self._execution_lock.release()
            with self._goal_lock:
                self._runs.pop(bytes(handle.goal_id.uuid), None)

    def _run_goal(self, run: GoalRun):
        instruction = run.handle.request.instruction
        started = time.monotonic()
        latencies, tokens, chunks = [], [], 0
        self.get_logger().info(f'goal: {instruction!r} (max_chunks {run.handle.request.max_chunks}, '
                               f'timeout {duration_to_s(run.handle.request.timeout):g} s)')
        self._apply_parameter_changes()
        self.policy.reset()
        self.controller.reset()
        last_velocity_stamp = None

        while True:
            end = self._end_condition(run, started, chunks)
            if end:
                return self._finish(run, *end, latencies, tokens, chunks)
            observation, failure = self._wait_for_input(run, started, chunks)
            if observation is None:
                if isinstance(failure, tuple):   # the goal ended while waiting
                    return self._finish(run, *failure, latencies, tokens, chunks)
                return self._finish(run, Result.STATUS_FAILED, f'stale or missing input: {failure}',
                                    latencies, tokens, chunks)

            self._apply_parameter_changes()
            decision = self.controller.step(observation.linear, observation.angular, False,
                                            observation.velocity_stamp)
            last_velocity_stamp = observation.velocity_stamp
            ee_speed = decision.linear_speed if decision.velocity_valid else None
            try:
                output = self.policy.infer(observation.images, observation.proprio, instruction, decision.mode,
                                           ee_speed)
            except (ValueError, RuntimeError) as error:
                return self._finish(run, Result.STATUS_FAILED, f'model error: {error}', latencies, tokens, chunks)
            actions = np.asarray(output.actions, dtype=np.float64)
            if not np.all(np.isfinite(actions)):
                bad = int(np.size(actions) - np.isfinite(actions).sum())
                return self._finish(run, Result.STATUS_FAILED,
                                    f'the model produced {bad} non-finite action values (NaN/Inf) in chunk {chunks}; '
                                    'nothing was published', latencies, tokens, chunks)
            actions = self._clip(actions)
            record = output.record

            with run.lock:     # publish only while this goal still owns the robot
                if not run.active or run.handle.is_cancel_requested:
                    continue
                published = self._publish(run, observation, actions, record, decision, chunks)
            latencies.append(record.timings.get('total', math.nan))
            tokens.append(record.tokens_kept)
            self._last_latency = latencies[-1]
            self._overheads.append(observation.conversion_s + (published - observation.picked_up)
                                   - record.timings.get('total', 0.0))
            chunks += 1
            last_velocity_stamp = self._consume(run, started, chunks, published, last_velocity_stamp)

    def _wait_for_input(self, run: GoalRun, started: float, chunks: int):
        """(Observation, '') or (None, reason) when input stays stale, or (None, end) when the goal ended."""
        observation, reason = self._observe()
        if observation is not None or self._value('stale_input_policy') == 'abort':
            return observation, reason
        deadline = time.monotonic() + self._value('wait_timeout')
        self.get_logger().info(f'waiting for fresh input: {reason}')
        while time.monotonic() < deadline:
            end = self._end_condition(run, started, chunks)
            if end:
                return None, end
            time.sleep(POLL_PERIOD)
            observation, reason = self._observe()
            if observation is not None:
                return observation, ''
        return None, f'{reason} (waited wait_timeout {self._value("wait_timeout")} s)'

    def _consume(self, run: GoalRun, started: float, chunks: int, published: float, last_velocity_stamp):
        """Wait while the chunk executes; returns early on a coarse -> fine switch or when the goal ends."""
        steps = self._value('execute_steps') or self.policy.config.chunk_len
        deadline = published + self._value('control_dt') * steps
        while time.perf_counter() < deadline:
            if self._end_condition(run, started, chunks):
                return last_velocity_stamp
            with self._input_lock:
                velocity = self._velocity_sample
            if velocity is not None and velocity[2] != last_velocity_stamp:
                last_velocity_stamp = velocity[2]
                decision = self.controller.step(velocity[0], velocity[1], True, velocity[2])
            elif velocity is None and self.controller.mode != 'fine':
                decision = self.controller.step(None, None, True, time.monotonic())
            else:
                decision = None
            if decision is not None and decision.flush_queue:
                self.get_logger().info(f'{decision.reason}: dropping the rest of the chunk, inferring now')
                return last_velocity_stamp
            time.sleep(min(POLL_PERIOD, max(0.0, deadline - time.perf_counter())))
        return last_velocity_stamp

    def _clip(self, actions: np.ndarray) -> np.ndarray:
        low, high = self._value('action_low'), self._value('action_high')
        if not low:
            return actions
        return np.clip(actions, np.asarray(low)[None, :], np.asarray(high)[None, :])

    def _publish(self, run: GoalRun, observation: Observation, actions: np.ndarray, record, decision,
                 sequence: int) -> float:
        config = self.policy.config
        stamp = ns_to_time(observation.stamp_ns)
        control_dt = self._value('control_dt')
        frame_id = self._value('action_frame_id')

        chunk = ActionChunk(dt=float(control_dt), dimension_names=list(config.action_names),
                            chunk_length=int(actions.shape[0]), action_dim=int(actions.shape[1]),
                            actions=[float(a) for a in actions.reshape(-1)], sequence=sequence,
                            method=record.method, controller_mode=record.mode)
        chunk.header.stamp, chunk.header.frame_id = stamp, frame_id
        self._chunk_pub.publish(chunk)
        published = time.perf_counter()
        self._chunks_published += 1

        if self._value('publish_joint_trajectory'):
            trajectory = JointTrajectory(joint_names=list(config.action_names))
            trajectory.header.stamp, trajectory.header.frame_id = stamp, frame_id
            for k, row in enumerate(actions):
                t = k * control_dt
                trajectory.points.append(JointTrajectoryPoint(
                    positions=[float(a) for a in row],
                    time_from_start=DurationMsg(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))))
            self._trajectory_pub.publish(trajectory)

        timings = record.timings
        stats = InferenceStats(
            method=record.method, controller_mode=record.mode, tokens_total=int(record.tokens_total),
            visual_tokens_total=int(record.visual_tokens_total),
            stage_names=[name for name, _ in record.stages], stage_tokens=[int(n) for _, n in record.stages],
            layer_tokens=[int(n) for n in record.layer_tokens], flops=float(record.flops),
            flops_unpruned=float(record.flops_unpruned),
            preprocess_time=float(timings.get('preprocess', 0.0)), vision_time=float(timings.get('vision', 0.0)),
            llm_time=float(timings.get('llm', 0.0)), head_time=float(timings.get('head', 0.0)),
            total_time=float(timings.get('total', 0.0)),
            ee_linear_speed=float(decision.linear_speed), ee_angular_speed=float(decision.angular_speed),
            ee_velocity_valid=bool(decision.velocity_valid))
        stats.header.stamp, stats.header.frame_id = stamp, frame_id
        self._stats_pub.publish(stats)

        feedback = RunInstruction.Feedback(
            chunks_done=sequence + 1, controller_mode=record.mode, tokens_kept=int(record.tokens_kept),
            tokens_total=int(record.tokens_total), last_latency=float(timings.get('total', 0.0)),
            ee_linear_speed=float(decision.linear_speed))
        run.handle.publish_feedback(feedback)
        return published

    def _finish(self, run: GoalRun, status: int, reason: str, latencies, tokens, chunks: int):
        """Set the goal's terminal state (unless preemption already did) and build its result."""
        with run.lock:
            if run.handle.is_active and not run.preempted:
                try:
                    if status in (Result.STATUS_SUCCEEDED, Result.STATUS_CHUNK_LIMIT):
                        run.handle.succeed()
                    elif status == Result.STATUS_CANCELED and run.handle.is_cancel_requested:
                        run.handle.canceled()
                    else:
                        run.handle.abort()
                except Exception as error:  # noqa: BLE001 - e.g. the context shut down by Ctrl-C
                    if self.context.ok():
                        self.get_logger().warning(f'could not set the goal state: {error}')
            elif run.preempted:
                status, reason = Result.STATUS_PREEMPTED, 'preempted by a newer goal'
        result = Result(status=status, reason=reason, chunks_executed=chunks,
                        mean_latency=float(statistics.fmean(latencies)) if latencies else 0.0,
                        mean_tokens_kept=float(statistics.fmean(tokens)) if tokens else 0.0)
        message = f'goal ended {STATUS_NAMES[status]}: {reason} ({chunks} chunks)'
        if status == Result.STATUS_FAILED:
            self.get_logger().warning(message)
        else:
            self.get_logger().info(message)
        return result

    # --- diagnostics and shutdown ---------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        steps = self._value('execute_steps') or self.policy.config.chunk_len
        period = self._value('control_dt') * steps
        latency = self._last_latency
        policy_status = DiagnosticStatus(name=f'{NODE_NAME}: policy', hardware_id=str(self._values['checkpoint']))
        if math.isfinite(latency) and latency > period:
            policy_status.level = DiagnosticStatus.WARN
            policy_status.message = f'inference {latency * 1e3:.1f} ms exceeds the chunk period {period * 1e3:.1f} ms'
        else:
            policy_status.level = DiagnosticStatus.OK
            policy_status.message = 'model loaded'
        overheads = sorted(self._overheads)

        def percentile(q):
            return f'{overheads[min(len(overheads) - 1, int(q * len(overheads)))] * 1e3:.3f}' if overheads else 'nan'

        with self._goal_lock:
            active = self._current is not None and self._current.active
        policy_status.values = [
            KeyValue(key='model_loaded', value='true'), KeyValue(key='method', value=self.policy.method.name),
            KeyValue(key='controller_mode', value=self.controller.mode),
            KeyValue(key='device', value=str(self.policy.device)),
            KeyValue(key='goal_active', value=str(active).lower()),
            KeyValue(key='chunks_published', value=str(self._chunks_published)),
            KeyValue(key='last_latency_ms', value=f'{latency * 1e3:.3f}'),
            KeyValue(key='chunk_period_ms', value=f'{period * 1e3:.3f}'),
            KeyValue(key='node_overhead_p50_ms', value=percentile(0.5)),
            KeyValue(key='node_overhead_p95_ms', value=percentile(0.95))]
        inputs = DiagnosticStatus(name=f'{NODE_NAME}: inputs', level=DiagnosticStatus.OK, message='receiving')
        silent = []
        for topic, meter in self._rates.items():
            rate = meter.rate(now)
            inputs.values.append(KeyValue(key=f'{self.resolve_topic_name(topic)} rate_hz', value=f'{rate:.2f}'))
            if topic in self._dropped:
                inputs.values.append(KeyValue(key=f'{self.resolve_topic_name(topic)} dropped',
                                              value=str(self._dropped[topic])))
            if rate == 0.0:
                silent.append(self.resolve_topic_name(topic))
        if silent:
            inputs.level, inputs.message = DiagnosticStatus.WARN, 'no messages on ' + ', '.join(silent)
        array = DiagnosticArray(status=[policy_status, inputs])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def shutdown(self) -> None:
        """Stop the running goal (it ends FAILED: node shutting down) and release the action server."""
        self._stopping.set()
        if self._execution_lock.acquire(timeout=5.0):
            self._execution_lock.release()
        self._action_server.destroy()


def main(args=None) -> int:
    try:
        rclpy.init(args=args)
    except Exception as error:  # noqa: BLE001 - e.g. a malformed --ros-args rule: one line, no traceback
        print(f'{NODE_NAME}: cannot initialise ROS: {error}', file=sys.stderr)
        return 2
    try:
        node = VLAPruneNode()
    except StartupError as error:
        rclpy.logging.get_logger(NODE_NAME).error(str(error))
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
