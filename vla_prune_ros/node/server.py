"""``vla_prune_node``: the VLA policy as a ROS 2 action server (``run_instruction``).

A thin rclpy shell over the ROS-free core: :class:`~vla_prune_ros.policy.VLAPolicy` (model +
pruning method) and :class:`~vla_prune_ros.control.controller.CoarseFineController` (coarse/fine
from the *measured* end-effector velocity). Inputs live in :mod:`.inputs`, parameters in
:mod:`.parameters`, message building in :mod:`.messages`.

Threads. The policy runs in the action's execute callback; one goal runs at a time
(``_execution_lock``), a new goal preempts the running one, and the executor has enough threads
that a running and a waiting goal cannot starve the sensor callbacks.

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
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory
from vla_prune_interfaces.action import RunInstruction
from vla_prune_interfaces.msg import ActionChunk, InferenceStats

from ..control.controller import CoarseFineController
from ..control.kinematics import EndEffectorVelocity, ProprioBuilder
from ..parameters import NODE_NAME, ModelInfo, ParameterError, controller_config, method_options, \
    resolve_urdf, validate
from . import messages
from .inputs import LatestInputs, Observation, StaleInput
from .parameters import NodeParameters, StartupError

Result = RunInstruction.Result
EXECUTOR_THREADS = 8          # sensors + diagnostics + parameter services + a running and a waiting goal
POLL_PERIOD = 0.005           # s between checks while a chunk is being consumed or input awaited
PREEMPTED = 'preempted by a newer goal'


class Ending(NamedTuple):
    status: int
    reason: str


class GoalEnded(Exception):
    """Raised inside a goal's execution when it has to end; carries the Ending."""

    def __init__(self, ending: Ending):
        super().__init__(ending.reason)
        self.ending = ending


@dataclass
class GoalRun:
    """One accepted goal and its running totals. ``lock`` orders its terminal state change against preemption."""
    handle: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    preempted: bool = False
    started: float = 0.0           # monotonic, when it began executing
    chunks: int = 0
    latencies: list = field(default_factory=list)
    tokens: list = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.handle.is_active and not self.preempted


def load_policy(values: dict):
    from ..model.checkpoint import CheckpointError
    from ..policy import VLAPolicy
    try:
        return VLAPolicy.from_checkpoint(values['checkpoint'], device=values['device'], dtype=values['dtype'],
                                         method=values['method'], method_options=method_options(values))
    except CheckpointError as error:
        raise StartupError(f'cannot load checkpoint: {error}') from None
    except (ValueError, OSError) as error:
        raise StartupError(f"cannot load checkpoint {values['checkpoint']}: {error}") from None


def velocity_estimator(values: dict, urdf: str, logger) -> Optional[EndEffectorVelocity]:
    if not urdf:
        logger.warning('no robot_description or urdf_path: the end-effector velocity is unknown '
                       '(the controller acts per controller.unknown_velocity_mode)')
        return None
    try:
        return EndEffectorVelocity(urdf, values['ee_frame'], values['joint_names'] or None,
                                   values['velocity_smoothing'])
    except (ValueError, KeyError, RuntimeError) as error:
        raise StartupError(f'kinematics: {error}') from None


class VLAPruneNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self.parameters = NodeParameters(self)
        values = self.parameters.values
        try:
            validate(values)
        except ParameterError as error:
            raise StartupError(f'invalid parameter {error}') from None
        if not values['checkpoint']:
            raise StartupError('parameter checkpoint is not set: pass -p checkpoint:=<checkpoint directory>')
        if values['torch_threads']:
            import torch
            torch.set_num_threads(values['torch_threads'])

        self.policy = load_policy(values)
        config = self.policy.config
        model = ModelInfo(action_dim=config.action_dim, chunk_len=config.chunk_len, num_cameras=config.num_cameras,
                          proprio_dim=config.proprio_dim, camera_names=tuple(config.camera_names),
                          action_names=tuple(config.action_names), refused_methods=self.policy.method_refusals())
        try:
            validate(values, model)
            urdf = resolve_urdf(values)
        except ParameterError as error:
            raise StartupError(f'invalid parameter {error}') from None
        self.controller = CoarseFineController(controller_config(values))
        self._velocity = velocity_estimator(values, urdf, self.get_logger())
        try:
            proprio = ProprioBuilder(values['proprio_source'], config.proprio_dim, urdf, values['ee_frame'],
                                     values['proprio_joint_names'], values['proprio_reference_rotvec'])
        except ValueError as error:
            raise StartupError(f'proprio: {error}') from None
        try:
            self.policy.warmup()
        except (RuntimeError, ValueError) as error:
            raise StartupError(f'warm-up inference failed on device {self.policy.device} with dtype '
                               f'{self.policy.dtype}: {error}') from None

        self.inputs = LatestInputs(self, values['camera_topics'], values['joint_states_topic'], values['success_topic'],
                                   self._velocity, proprio, wants_proprio=bool(config.proprio_dim))
        self.parameters.watch(model, values['method'], method_options(values))

        self._goal_lock = threading.Lock()         # guards _runs and _current
        self._execution_lock = threading.Lock()    # held by the one goal that runs
        self._runs: dict[bytes, GoalRun] = {}
        self._current: Optional[GoalRun] = None
        self._stopping = threading.Event()
        self._last_latency = math.nan
        self._chunks_published = 0
        self._overheads = deque(maxlen=200)   # s: node time per chunk outside the model forward

        self._chunk_pub = self.create_publisher(ActionChunk, 'action_chunk', 10)
        self._stats_pub = self.create_publisher(InferenceStats, 'inference_stats', 10)
        self._trajectory_pub = self.create_publisher(JointTrajectory, values['joint_trajectory_topic'], 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup())

        # Last: the action server, so no goal arrives before the model is ready.
        self._action_server = ActionServer(
            self, RunInstruction, 'run_instruction', execute_callback=self._execute,
            goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda handle: CancelResponse.ACCEPT, callback_group=ReentrantCallbackGroup())
        self.get_logger().info(
            f"ready: method {self.policy.method.name}, {config.num_cameras} cameras {values['camera_topics']}, "
            f"chunk {config.chunk_len} x {config.action_dim}, device {self.policy.device}, dtype {self.policy.dtype}")

    # --- goal lifecycle ---------------------------------------------------------------------------

    def _on_goal(self, goal: RunInstruction.Goal) -> GoalResponse:
        if not goal.instruction.strip():
            self.get_logger().warning('rejected goal: empty instruction')
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

    def _execute(self, handle):
        run = self._runs.get(bytes(handle.goal_id.uuid)) or GoalRun(handle)
        # One goal at a time: wait for the previous one to notice its preemption and stop.
        while not self._execution_lock.acquire(timeout=0.05):
            if not run.active:
                return self._finish(run, Ending(Result.STATUS_PREEMPTED, PREEMPTED))
        try:
            if not run.active:
                return self._finish(run, Ending(Result.STATUS_PREEMPTED, PREEMPTED))
            return self._run_goal(run)
        except Exception as error:  # noqa: BLE001 - a goal must end with a reason, never kill the node
            if self._stopping.is_set() or not self.context.ok():    # Ctrl-C: the context is already gone
                return Result(status=Result.STATUS_FAILED, reason='node shutting down')
            reason = f'internal error: {type(error).__name__}: {error}'
            self.get_logger().error(reason)
            return self._finish(run, Ending(Result.STATUS_FAILED, reason))
        finally:
            self._execution_lock.release()
            with self._goal_lock:
                self._runs.pop(bytes(handle.goal_id.uuid), None)

    def _ending(self, run: GoalRun) -> Optional[Ending]:
        goal = run.handle.request
        if not run.active:
            return Ending(Result.STATUS_PREEMPTED, PREEMPTED)
        if run.handle.is_cancel_requested:
            return Ending(Result.STATUS_CANCELED, 'canceled by the client')
        if self._stopping.is_set():
            return Ending(Result.STATUS_FAILED, 'node shutting down')
        if self.inputs.success_since(run.started):
            return Ending(Result.STATUS_SUCCEEDED,
                          f'{self.resolve_topic_name(self.parameters.values["success_topic"])} reported success')
        if goal.max_chunks and run.chunks >= goal.max_chunks:
            return Ending(Result.STATUS_CHUNK_LIMIT, f'executed max_chunks={goal.max_chunks} chunks')
        timeout = messages.duration_to_s(goal.timeout)
        if timeout > 0 and time.monotonic() - run.started >= timeout:
            return Ending(Result.STATUS_TIMEOUT, f'timeout of {timeout:g} s reached')
        return None

    def _raise_if_ended(self, run: GoalRun) -> None:
        ending = self._ending(run)
        if ending:
            raise GoalEnded(ending)

    # --- the execute loop -------------------------------------------------------------------------

    def _run_goal(self, run: GoalRun):
        request = run.handle.request
        run.started = time.monotonic()
        self.get_logger().info(f'goal: {request.instruction!r} (max_chunks {request.max_chunks}, '
                               f'timeout {messages.duration_to_s(request.timeout):g} s)')
        self.parameters.apply(self.policy, self.controller, self._velocity)
        self.policy.reset()
        self.controller.reset()
        last_velocity_stamp = None
        try:
            while True:
                self._raise_if_ended(run)
                observation = self._wait_for_input(run)
                self.parameters.apply(self.policy, self.controller, self._velocity)
                decision = self.controller.step(observation.linear, observation.angular, False,
                                                observation.velocity_stamp)
                last_velocity_stamp = observation.velocity_stamp
                self.policy.observe_frames(observation.images)     # the frame ring SpecPrune's Δ reads
                actions, record = self._infer(run, observation, decision)
                with run.lock:     # publish only while this goal still owns the robot
                    if not run.active or run.handle.is_cancel_requested:
                        continue
                    published = self._publish(run, observation, actions, record, decision)
                run.latencies.append(record.timings.get('total', math.nan))
                run.tokens.append(record.tokens_kept)
                self._last_latency = run.latencies[-1]
                self._overheads.append(observation.conversion_s + (published - observation.picked_up)
                                       - record.timings.get('total', 0.0))
                run.chunks += 1
                last_velocity_stamp = self._consume(run, published, last_velocity_stamp)
        except GoalEnded as ended:
            return self._finish(run, ended.ending)

    def _wait_for_input(self, run: GoalRun) -> Observation:
        """The latest fresh inputs; under 'wait', waits up to wait_timeout. Raises GoalEnded otherwise."""
        try:
            return self.inputs.observe(self.parameters.value('max_input_age'))
        except StaleInput as stale:
            reason = str(stale)
        if self.parameters.value('stale_input_policy') == 'abort':
            raise GoalEnded(Ending(Result.STATUS_FAILED, f'stale or missing input: {reason}'))
        deadline = time.monotonic() + self.parameters.value('wait_timeout')
        self.get_logger().info(f'waiting for fresh input: {reason}')
        while time.monotonic() < deadline:
            self._raise_if_ended(run)
            time.sleep(POLL_PERIOD)
            try:
                return self.inputs.observe(self.parameters.value('max_input_age'))
            except StaleInput as stale:
                reason = str(stale)
        raise GoalEnded(Ending(Result.STATUS_FAILED, f'stale or missing input: {reason} '
                               f'(waited wait_timeout {self.parameters.value("wait_timeout")} s)'))

    def _infer(self, run: GoalRun, observation: Observation, decision):
        """Finite, clipped actions and the inference record; a model error or a non-finite value ends the goal."""
        ee_speed = decision.linear_speed if decision.velocity_valid else None
        try:
            output = self.policy.infer(observation.images, observation.proprio, run.handle.request.instruction,
                                       decision.mode, ee_speed)
        except (ValueError, RuntimeError) as error:
            raise GoalEnded(Ending(Result.STATUS_FAILED, f'model error: {error}')) from None
        actions = np.asarray(output.actions, dtype=np.float64)
        if not np.all(np.isfinite(actions)):
            bad = int(np.size(actions) - np.isfinite(actions).sum())
            raise GoalEnded(Ending(Result.STATUS_FAILED, f'the model produced {bad} non-finite action values '
                                   f'(NaN/Inf) in chunk {run.chunks}; nothing was published'))
        low, high = self.parameters.value('action_low'), self.parameters.value('action_high')
        if low:
            actions = np.clip(actions, np.asarray(low)[None, :], np.asarray(high)[None, :])
        return actions, output.record

    def _consume(self, run: GoalRun, published: float, last_velocity_stamp):
        """Wait while the chunk executes; returns early on a coarse -> fine switch or when the goal ends."""
        steps = self.parameters.value('execute_steps') or self.policy.config.chunk_len
        deadline = published + self.parameters.value('control_dt') * steps
        next_frame = published + self.parameters.value('control_dt')
        while time.perf_counter() < deadline:
            if self._ending(run):
                return last_velocity_stamp
            if time.perf_counter() >= next_frame:      # one frame per control step into the policy's ring
                next_frame += self.parameters.value('control_dt')
                try:
                    self.policy.observe_frames(self.inputs.observe(self.parameters.value('max_input_age')).images)
                except StaleInput:
                    pass        # a missing frame leaves a gap; the next inference checks its own inputs
            velocity = self.inputs.velocity()
            if velocity is not None and velocity.stamp_s != last_velocity_stamp:
                last_velocity_stamp = velocity.stamp_s
                decision = self.controller.step(velocity.linear, velocity.angular, True, velocity.stamp_s)
            elif velocity is None and self.controller.mode != 'fine':
                decision = self.controller.step(None, None, True, time.monotonic())
            else:
                decision = None
            if decision is not None and decision.flush_queue:
                self.get_logger().info(f'{decision.reason}: dropping the rest of the chunk, inferring now')
                return last_velocity_stamp
            time.sleep(min(POLL_PERIOD, max(0.0, deadline - time.perf_counter())))
        return last_velocity_stamp

    def _publish(self, run: GoalRun, observation: Observation, actions: np.ndarray, record, decision) -> float:
        """Publish the chunk and what goes with it; returns the perf_counter time the chunk went out."""
        names = self.policy.config.action_names
        stamp = messages.ns_to_time(observation.stamp_ns)
        control_dt = self.parameters.value('control_dt')
        frame_id = self.parameters.value('action_frame_id')
        self._chunk_pub.publish(messages.action_chunk(actions, names, control_dt, run.chunks, record, stamp,
                                                      frame_id))
        published = time.perf_counter()
        self._chunks_published += 1
        if self.parameters.value('publish_joint_trajectory'):
            self._trajectory_pub.publish(messages.joint_trajectory(actions, names, control_dt, stamp, frame_id))
        self._stats_pub.publish(messages.inference_stats(record, decision, stamp, frame_id))
        run.handle.publish_feedback(messages.feedback(record, decision, run.chunks + 1))
        return published

    def _finish(self, run: GoalRun, ending: Ending):
        """Set the goal's terminal state (unless preemption already did) and build its result."""
        status, reason = ending
        with run.lock:
            if run.active:
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
                status, reason = Result.STATUS_PREEMPTED, PREEMPTED
        message = f'goal ended {messages.STATUS_NAMES[status]}: {reason} ({run.chunks} chunks)'
        if status == Result.STATUS_FAILED:     # one severity per call site: rclpy's rule
            self.get_logger().warning(message)
        else:
            self.get_logger().info(message)
        return messages.result(status, reason, run.chunks, run.latencies, run.tokens)

    # --- diagnostics and shutdown -------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        steps = self.parameters.value('execute_steps') or self.policy.config.chunk_len
        with self._goal_lock:
            active = self._current is not None and self._current.active
        self._diagnostics_pub.publish(messages.diagnostics(
            NODE_NAME, self.parameters.values['checkpoint'], self.get_clock().now().to_msg(),
            latency=self._last_latency, period=self.parameters.value('control_dt') * steps,
            overheads=list(self._overheads), method=self.policy.method.name, controller_mode=self.controller.mode,
            device=str(self.policy.device), goal_active=active, chunks_published=self._chunks_published,
            input_rates=self.inputs.rates()))

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
