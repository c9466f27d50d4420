"""Pure builders of everything the node publishes: no node state, no side effects."""
from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration as DurationMsg
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from vla_prune_interfaces.action import RunInstruction
from vla_prune_interfaces.msg import ActionChunk, InferenceStats

Result = RunInstruction.Result
STATUS_NAMES = {Result.STATUS_UNKNOWN: 'UNKNOWN', Result.STATUS_SUCCEEDED: 'SUCCEEDED', Result.STATUS_CHUNK_LIMIT: 'CHUNK_LIMIT',
                Result.STATUS_TIMEOUT: 'TIMEOUT', Result.STATUS_CANCELED: 'CANCELED',
                Result.STATUS_PREEMPTED: 'PREEMPTED', Result.STATUS_FAILED: 'FAILED'}


def time_to_ns(stamp: TimeMsg) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_time(nanoseconds: int) -> TimeMsg:
    return TimeMsg(sec=int(nanoseconds // 1_000_000_000), nanosec=int(nanoseconds % 1_000_000_000))


def duration_to_s(duration: DurationMsg) -> float:
    return duration.sec + duration.nanosec * 1e-9


def action_chunk(actions: np.ndarray, names: Sequence[str], control_dt: float, sequence: int, record,
                 stamp: TimeMsg, frame_id: str, start_time: TimeMsg) -> ActionChunk:
    """``stamp``: the observation the chunk was computed from; ``start_time``: when its first action is due."""
    chunk = ActionChunk(dt=float(control_dt), dimension_names=list(names),
                        chunk_length=int(actions.shape[0]), action_dim=int(actions.shape[1]),
                        actions=[float(a) for a in actions.reshape(-1)], sequence=sequence,
                        method=record.method, controller_mode=record.mode, start_time=start_time)
    chunk.header.stamp, chunk.header.frame_id = stamp, frame_id
    return chunk


def joint_trajectory(actions: np.ndarray, names: Sequence[str], control_dt: float, start_time: TimeMsg,
                     frame_id: str) -> JointTrajectory:
    """One point per chunk step, ``header.stamp = start_time`` (when the first point is due, as
    joint_trajectory_controller reads it), ``time_from_start = k * control_dt``."""
    trajectory = JointTrajectory(joint_names=list(names))
    trajectory.header.stamp, trajectory.header.frame_id = start_time, frame_id
    for k, row in enumerate(actions):
        t = k * control_dt
        trajectory.points.append(JointTrajectoryPoint(
            positions=[float(a) for a in row],
            time_from_start=DurationMsg(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))))
    return trajectory


def inference_stats(record, decision, stamp: TimeMsg, frame_id: str, execution: str = 'sync',
                    start_time: TimeMsg | None = None, dropped: int = 0, blended: int = 0,
                    dry_run: bool = False) -> InferenceStats:
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
        ee_velocity_valid=bool(decision.velocity_valid), execution=execution,
        start_time=start_time if start_time is not None else stamp, dropped_steps=int(dropped),
        blended_steps=int(blended), dry_run=bool(dry_run))
    stats.header.stamp, stats.header.frame_id = stamp, frame_id
    return stats


def feedback(record, decision, chunks_done: int) -> RunInstruction.Feedback:
    return RunInstruction.Feedback(
        chunks_done=chunks_done, controller_mode=record.mode, tokens_kept=int(record.tokens_kept),
        tokens_total=int(record.tokens_total), last_latency=float(record.timings.get('total', 0.0)),
        ee_linear_speed=float(decision.linear_speed))


def result(status: int, reason: str, chunks: int, latencies: Sequence[float], tokens: Sequence[int]) -> Result:
    return Result(status=status, reason=reason, chunks_executed=chunks,
                  mean_latency=float(statistics.fmean(latencies)) if latencies else 0.0,
                  mean_tokens_kept=float(statistics.fmean(tokens)) if tokens else 0.0)


def diagnostics(node_name: str, checkpoint: str, stamp: TimeMsg, *, latency: float, period: float,
                overheads: Sequence[float], method: str, controller_mode: str, device: str, goal_active: bool,
                chunks_published: int, input_rates, execution: str = 'sync',
                dry_run: bool = False) -> DiagnosticArray:
    """The policy status (WARN when an inference takes longer than a chunk lasts, or in dry_run) and the input rates
    (WARN when a topic is silent)."""
    policy_status = DiagnosticStatus(name=f'{node_name}: policy', hardware_id=str(checkpoint))
    if dry_run:     # say so where an operator looks: the robot is not being driven
        policy_status.level = DiagnosticStatus.WARN
        policy_status.message = 'dry_run: publishing no action_chunk or joint_trajectory'
    elif math.isfinite(latency) and latency > period:
        policy_status.level = DiagnosticStatus.WARN
        policy_status.message = f'inference {latency * 1e3:.1f} ms exceeds the chunk period {period * 1e3:.1f} ms'
    else:
        policy_status.level = DiagnosticStatus.OK
        policy_status.message = 'model loaded'
    overheads = sorted(overheads)

    def percentile(q) -> str:
        return f'{overheads[min(len(overheads) - 1, int(q * len(overheads)))] * 1e3:.3f}' if overheads else 'nan'

    policy_status.values = [
        KeyValue(key='model_loaded', value='true'), KeyValue(key='method', value=method),
        KeyValue(key='controller_mode', value=controller_mode), KeyValue(key='device', value=str(device)),
        KeyValue(key='goal_active', value=str(goal_active).lower()),
        KeyValue(key='chunks_published', value=str(chunks_published)),
        KeyValue(key='execution', value=execution), KeyValue(key='dry_run', value=str(dry_run).lower()),
        KeyValue(key='last_latency_ms', value=f'{latency * 1e3:.3f}'),
        KeyValue(key='chunk_period_ms', value=f'{period * 1e3:.3f}'),
        KeyValue(key='node_overhead_p50_ms', value=percentile(0.5)),
        KeyValue(key='node_overhead_p95_ms', value=percentile(0.95))]
    inputs = DiagnosticStatus(name=f'{node_name}: inputs', level=DiagnosticStatus.OK, message='receiving')
    silent: list[str] = []
    for entry in input_rates:
        inputs.values.append(KeyValue(key=f'{entry.topic} rate_hz', value=f'{entry.rate_hz:.2f}'))
        if entry.dropped is not None:
            inputs.values.append(KeyValue(key=f'{entry.topic} dropped', value=str(entry.dropped)))
        if entry.age_at_inference is not None:     # how long the sample the last inference used had waited
            inputs.values.append(KeyValue(key=f'{entry.topic} age_at_inference_ms',
                                          value=f'{entry.age_at_inference * 1e3:.3f}'))
        if entry.rate_hz == 0.0:
            silent.append(entry.topic)
    if silent:
        inputs.level, inputs.message = DiagnosticStatus.WARN, 'no messages on ' + ', '.join(silent)
    array = DiagnosticArray(status=[policy_status, inputs])
    array.header.stamp = stamp
    return array

