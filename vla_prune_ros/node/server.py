"""``vla_prune_node``: the VLA policy as a ROS 2 action server (``run_instruction``).

A thin rclpy shell over the ROS-free core: :class:`~vla_prune_ros.policy.VLAPolicy` (model +
pruning method) and :class:`~vla_prune_ros.control.controller.CoarseFineController` (coarse/fine
from the *measured* end-effector velocity). Inputs live in :mod:`.inputs`, parameters in
:mod:`.parameters`, message building in :mod:`.messages`.

Threads (see :mod:`.goals`). One single-threaded executor serves every ROS callback: sensor
callbacks only store the newest message, so 500 Hz joint states and several cameras cost little, and
goal, cancel and result requests are answered at once (within one forward pass: the executor steps
aside while the policy runs, :mod:`.spinning`). The policy runs on one goal-runner thread; torch's
intra-op threads (``torch_threads``) are the only other busy ones. A new goal preempts the running one.

One goal: ``policy.reset()``, ``controller.reset()``, then repeat: take the latest frames and
joint state, check their age (abort or wait), step the controller with the measured velocity,
infer, reject non-finite actions, clip, publish ``action_chunk`` (+ ``inference_stats``,
optional ``JointTrajectory``, feedback; ``dry_run``: only the stats and feedback), and wait
(:mod:`.execution`): ``sync`` until the chunk is consumed (``control_dt * execute_steps``), ``async``
until ``inference_trigger_steps`` are left, the next chunk then dropping its expired steps and
blending the overlap; a coarse -> fine switch infers at once and replaces the rest. It ends on
``success_topic`` True (SUCCEEDED), ``max_chunks`` (CHUNK_LIMIT), ``timeout`` (TIMEOUT), cancel
(CANCELED), a newer goal (PREEMPTED) or bad input (FAILED). Goal states: SUCCEEDED and CHUNK_LIMIT
end *succeeded*, CANCELED *canceled*, the rest *aborted*; the result's ``status`` and ``reason`` say
which and why.
"""
from __future__ import annotations

import gc
import math
import sys
import threading
import time
from collections import deque
from typing import Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from trajectory_msgs.msg import JointTrajectory
from vla_prune_interfaces.action import RunInstruction
from vla_prune_interfaces.msg import ActionChunk, InferenceStats

from ..control.controller import CoarseFineController
from ..control.kinematics import EndEffectorVelocity, ProprioBuilder
from ..model.instruction import InstructionLimit
from ..parameters import NODE_NAME, ModelInfo, ParameterError, controller_config, duplicate_names, \
    method_options, resolve_urdf, validate
from . import messages
from .execution import ChunkPacing
from .goals import PREEMPTED, Ending, GoalEnded, GoalRun, GoalRunner, finish, republish_status
from .inputs import LatestInputs, Observation, StaleInput
from .parameters import NodeParameters, StartupError
from .spinning import ForwardGate, spin

Result = RunInstruction.Result
POLL_PERIOD = 0.005           # s between checks while input is awaited
# Goal, cancel and result requests: a burst of 50 goals must not overflow the default depth of 10.
ACTION_SERVICE_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


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
                                   values['velocity_smoothing'], values['max_joint_velocity'])
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
        if values['compile_layers']:
            self.policy.model.use_compiled_layers()        # compiled by the warm-up below
        config = self.policy.config
        model = ModelInfo(action_dim=config.action_dim, chunk_len=config.chunk_len, num_cameras=config.num_cameras,
                          proprio_dim=config.proprio_dim, camera_names=tuple(config.camera_names),
                          action_names=tuple(config.action_names), refused_methods=self.policy.method_refusals())
        try:
            validate(values, model)
            urdf = resolve_urdf(values)
        except ParameterError as error:
            raise StartupError(f'invalid parameter {error}') from None
        for name, duplicates in duplicate_names(values).items():
            self.get_logger().warning(f'{name}: duplicate joint names {duplicates}; only the first copy is used')
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
                                   self._velocity, proprio, wants_proprio=bool(config.proprio_dim),
                                   camera_transports=values['camera_transports'],
                                   future_stamp_tolerance=values['future_stamp_tolerance'])
        self.parameters.watch(model, values['method'], method_options(values))
        self.parameters.on_change(self._on_parameters_changed)
        self.instruction_limit = InstructionLimit(self.policy.tokenizer, config, values['max_instruction_tokens'])
        self._pacing = ChunkPacing(self.parameters, self.policy, self.inputs, self.controller,
                                   lambda: self.get_clock().now().nanoseconds, self.get_logger())

        self._goal_lock = threading.Lock()         # guards _runs and _current
        self._runner = GoalRunner(self._execute_blocking, self._internal_error)
        self._runs: dict[bytes, GoalRun] = {}
        self._current: Optional[GoalRun] = None
        self._stopping = threading.Event()
        self.forward_gate = ForwardGate()          # the executor steps aside during a forward (.spinning)
        self._last_latency = math.nan
        self._chunks_published = 0
        self._overheads = deque(maxlen=200)   # s: node time per chunk outside the model forward

        self._chunk_pub = self.create_publisher(ActionChunk, 'action_chunk', 10)
        self._stats_pub = self.create_publisher(InferenceStats, 'inference_stats', 10)
        self._trajectory_pub = self.create_publisher(JointTrajectory, values['joint_trajectory_topic'], 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(1.0, self._publish_diagnostics)

        # Last: the action server, so no goal arrives before the model is ready. One mutually exclusive
        # group: goals are taken strictly in arrival order, so the survivor of a burst is the last one sent.
        self._action_server = ActionServer(
            self, RunInstruction, 'run_instruction', execute_callback=self._execute,
            goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda handle: CancelResponse.ACCEPT, callback_group=MutuallyExclusiveCallbackGroup(),
            goal_service_qos_profile=ACTION_SERVICE_QOS, result_service_qos_profile=ACTION_SERVICE_QOS,
            cancel_service_qos_profile=ACTION_SERVICE_QOS)
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
        too_long = self.instruction_limit.check(goal.instruction)
        if too_long:
            self.get_logger().warning(f'rejected goal: {too_long}')
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_parameters_changed(self, values: dict) -> None:
        self.instruction_limit.set_limit(values['max_instruction_tokens'])
        self.inputs.freshness.future_tolerance = values['future_stamp_tolerance']
        if self._velocity is not None:
            self._velocity.max_joint_velocity = values['max_joint_velocity']

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

    async def _execute(self, handle):
        """Executor side: hand the goal to the runner thread and wait (without blocking) for its result."""
        run = self._runs.get(bytes(handle.goal_id.uuid)) or GoalRun(handle)
        finished = Future(executor=self.executor)
        self._runner.submit(run, finished.set_result)
        return await finished

    def _execute_blocking(self, run: GoalRun):
        """Runner thread: run one goal to its end and return its result."""
        try:
            if not run.active:
                return self._finish(run, Ending(Result.STATUS_PREEMPTED, PREEMPTED))
            return self._run_goal(run)
        finally:
            with self._goal_lock:
                self._runs.pop(bytes(run.handle.goal_id.uuid), None)

    def _internal_error(self, run: GoalRun, error: Exception):
        if self._stopping.is_set() or not self.context.ok():    # Ctrl-C: the context is already gone
            return Result(status=Result.STATUS_FAILED, reason='node shutting down')
        reason = f'internal error: {type(error).__name__}: {error}'
        self.get_logger().error(reason)
        return self._finish(run, Ending(Result.STATUS_FAILED, reason))

    def _ending(self, run: GoalRun, chunk_limit: bool = True) -> Optional[Ending]:
        """Why the goal ends now, or None; ``chunk_limit=False`` while its last chunk is waited out."""
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
        if chunk_limit and goal.max_chunks and run.chunks >= goal.max_chunks:
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
        self._pacing.reset()
        last_velocity_stamp, replace = None, False
        try:
            while True:
                self._raise_if_ended(run)
                observation = self._wait_for_input(run)
                # A new method's chunk replaces the rest: no steps of the old method stay queued.
                replace |= self.parameters.apply(self.policy, self.controller, self._velocity)
                decision = self.controller.step(observation.linear, observation.angular, False,
                                                observation.velocity_stamp)
                last_velocity_stamp = observation.velocity_stamp
                self.policy.observe_frames(observation.images)     # the frame ring SpecPrune's Δ reads
                actions, record = self._infer(run, observation, decision)
                with run.lock:     # publish only while this goal still owns the robot
                    if not run.active or run.handle.is_cancel_requested:
                        continue
                    published = self._publish(run, observation, actions, record, decision, replace)
                run.latencies.append(record.timings.get('total', math.nan))
                run.tokens.append(record.tokens_kept)
                self._last_latency = run.latencies[-1]
                self._overheads.append((published - observation.picked_up) - record.timings.get('total', 0.0))
                run.chunks += 1
                final = bool(request.max_chunks) and run.chunks >= request.max_chunks
                last_velocity_stamp, replace = self._pacing.wait(lambda: self._ending(run, not final), published,
                                                                 last_velocity_stamp, final)
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
            with self.forward_gate.closed():
                output = self.policy.infer(observation.images, observation.proprio,
                                           run.handle.request.instruction, decision.mode, ee_speed)
            added = self.parameters.value('added_latency')
            if added:       # benchmarks: emulate a larger model, counted in the measured latency
                time.sleep(added)
                output.record.timings['total'] = output.record.timings.get('total', 0.0) + added
        except (ValueError, RuntimeError) as error:
            raise GoalEnded(Ending(Result.STATUS_FAILED, f'model error: {error}')) from None
        actions = np.asarray(output.actions, dtype=np.float64)
        if not np.all(np.isfinite(actions)):
            bad = int(np.size(actions) - np.isfinite(actions).sum())
            raise GoalEnded(Ending(Result.STATUS_FAILED, f'the model produced {bad} non-finite action values '
                                   f'(NaN/Inf) in chunk {run.chunks}; nothing was published'))
        return self._clip(actions), output.record

    def _clip(self, actions: np.ndarray) -> np.ndarray:
        low, high = self.parameters.value('action_low'), self.parameters.value('action_high')
        return np.clip(actions, np.asarray(low)[None, :], np.asarray(high)[None, :]) if low else actions

    def _publish(self, run: GoalRun, observation: Observation, actions: np.ndarray, record, decision,
                 replace: bool) -> float:
        """Publish the chunk (latency-compensated and blended in async) and what goes with it; returns the
        perf_counter time the chunk went out. ``dry_run``: the stats and feedback only."""
        names = self.policy.config.action_names
        stamp = messages.ns_to_time(observation.stamp_ns)
        control_dt = self.parameters.value('control_dt')
        frame_id = self.parameters.value('action_frame_id')
        planned = self._pacing.plan(actions, observation.stamp_ns, replace or decision.flush_queue)
        rows, start = self._clip(planned.actions), messages.ns_to_time(planned.start_ns)
        dry_run = self.parameters.value('dry_run')
        if not dry_run:
            self._chunk_pub.publish(messages.action_chunk(rows, names, control_dt, run.chunks, record, stamp,
                                                          frame_id, start))
            self._chunks_published += 1
            if self.parameters.value('publish_joint_trajectory'):
                self._trajectory_pub.publish(messages.joint_trajectory(rows, names, control_dt, start, frame_id))
        published = time.perf_counter()
        self._stats_pub.publish(messages.inference_stats(record, decision, stamp, frame_id,
                                                         self.parameters.value('execution'), start, planned.dropped,
                                                         planned.blended, dry_run))
        run.handle.publish_feedback(messages.feedback(record, decision, run.chunks + 1))
        republish_status(self._action_server, self.get_logger())     # see goals.republish_status
        return published

    def _finish(self, run: GoalRun, ending: Ending):
        return finish(run, ending, self.get_logger(), self.context.ok)

    # --- diagnostics and shutdown -------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        steps = self.parameters.value('execute_steps') or self.policy.config.chunk_len
        with self._goal_lock:
            active = self._current is not None and self._current.active
        # The fully qualified name: two nodes in different namespaces share /diagnostics.
        self._diagnostics_pub.publish(messages.diagnostics(
            self.get_fully_qualified_name(), self.parameters.values['checkpoint'], self.get_clock().now().to_msg(),
            latency=self._last_latency, period=self.parameters.value('control_dt') * steps,
            overheads=list(self._overheads), method=self.policy.method.name, controller_mode=self.controller.mode,
            device=str(self.policy.device), goal_active=active, chunks_published=self._chunks_published,
            input_rates=self.inputs.rates(), execution=self.parameters.value('execution'),
            dry_run=self.parameters.value('dry_run')))

    def shutdown(self) -> None:
        """Stop the running goal (it ends FAILED: node shutting down) and release the action server."""
        self._stopping.set()
        self._runner.stop(timeout=5.0)
        self._action_server.destroy()


MALLOC_ARENAS = 2   # glibc allows 8 per core by default; each new thread that allocates may take one


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """``MALLOC_ARENA_MAX`` from inside the process, before the DDS and torch threads start allocating.

    Why (benchmarks/soak_repeat*_{plain,arena2}.md): in four 10-minute soaks the p50 latency drifted
    +10.1 % and +11.0 % with glibc's default arenas, -0.1 % and +2.0 % with two. Arenas made before this
    call (importing torch and rclpy makes a few) stay. False where the C library is not glibc."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c'))
        return bool(libc.mallopt(-8, int(arenas)))    # -8 is M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError, TypeError):
        return False


def main(args=None) -> int:
    limit_malloc_arenas()
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
    # Measured (benchmarks/intake.md): rclpy's MultiThreadedExecutor starves at 500 Hz joint states and the
    # events executor hangs on the action server's coroutine here; the single-threaded one keeps up,
    # and steps aside while a forward runs (.spinning).
    # ~375k objects from torch/transformers/rclpy live as long as the node: keep them out of the
    # collector, or each full collection (and the one at exit) walks them all (exit after Ctrl-C on a
    # loaded machine: 5.8-9.5 s without, 1.7-3.6 s with; benchmarks/shutdown_time.txt).
    gc.freeze()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        spin(executor, node.context, node.forward_gate)
    except KeyboardInterrupt:
        pass
    finally:
        node.shutdown()
        executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
