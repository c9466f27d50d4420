"""Timed action chunks: when each step is due, what is left, and how a new chunk meets the old one's rest.

Plain Python and numpy (no ROS, no torch). Two users share it:

* the node keeps a :class:`ChunkPlanner`, its own record of what it published and when, so it knows
  how many steps are left (``async`` triggers the next inference on it), which steps of a new chunk
  expired during the inference, and which unexecuted steps the new chunk meets;
* the simulator keeps an :class:`ActionTimeline` as its execution queue.

Times are integer nanoseconds on the publisher's clock. Step ``i`` of a chunk starting at ``start``
is due at ``start + i * dt`` and belongs to the control tick nearest that time: a consumer ticking
every ``dt`` executes the first queued step due no later than half a period from now
(:meth:`ActionTimeline.pop_due`) and idles only when nothing is due. A new chunk replaces every
queued step due from its ``start`` on (half a period of slack, so the step of the same tick is
replaced too), and keeps the earlier ones.

Latency compensation (``async``). A chunk computed from an observation taken at ``t_obs`` and
published at ``t_pub`` was meant to start at ``t_obs``; while the robot executed the old chunk its
first ``k = ceil((t_pub - t_obs) / dt)`` steps expired and are dropped, so the published chunk starts
at ``t_obs + k * dt`` (never before ``t_pub``). When nothing was executing (a goal's first chunk, or
the queue had run dry before the observation) nothing expired: ``k = 0`` and it starts at ``t_pub``.

Overlap aggregation (``chunk_aggregation``), step by step over the steps the new chunk shares with
the old rest (a new row meets the queued step due within half a period of it; the published rows
after the overlap are the new prediction's own):

* ``latest_only``: the new prediction;
* ``weighted_average``: ``(1 - w) * old + w * new``, ``w = aggregation_weight`` (LeRobot's 0.7);
* ``temporal_ensemble``: ACT's ``sum_i exp(-m * i) a_i / sum_i exp(-m * i)`` over every prediction
  ``a_i`` that met in that step, ``i = 0`` the oldest, ``m = ensemble_decay`` (kept as a running sum,
  so a step predicted by three chunks averages all three).

A replacing chunk (the coarse -> fine flush, a method switch) is never blended.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from ..options import Options, option

EXECUTION_MODES = ('sync', 'async')
AGGREGATIONS = ('latest_only', 'weighted_average', 'temporal_ensemble')
LATENCY_HISTORY = 5         # inferences the auto trigger looks back over


@dataclass(frozen=True)
class ExecutionOptions(Options):
    """How the node paces inference against chunk execution (node parameters without a prefix)."""
    prefix: ClassVar[str] = ''
    execution: str = option(
        'sync', "'sync': wait until the chunk has executed, then observe and infer (the robot stands still while "
        "the model runs); 'async': start the next inference while the chunk still executes, drop the steps that "
        'expired during it and blend the overlap (chunk_aggregation).', choices=EXECUTION_MODES)
    inference_trigger_steps: int = option(
        0, 'async: start the next inference once this many steps of the queued chunk are left; 0 = auto: '
        'ceil(slowest of the last 5 observation-to-publish times / control_dt) + 1.', low=0, high=1024)
    chunk_aggregation: str = option(
        'latest_only', "async: how a new chunk meets the unexecuted rest of the old one: 'latest_only' replaces it, "
        "'weighted_average' blends (1 - aggregation_weight) * old + aggregation_weight * new, 'temporal_ensemble' "
        'averages every prediction of a step with weights exp(-ensemble_decay * i), i = 0 the oldest (ACT).',
        choices=AGGREGATIONS)
    aggregation_weight: float = option(
        0.7, "weighted_average: weight of the new chunk's action in the overlap (LeRobot's 0.7).", low=0.0, high=1.0)
    ensemble_decay: float = option(
        0.01, "temporal_ensemble: m of the weights exp(-m * i) (ACT's 0.01); > 0 favours older predictions, "
        '< 0 newer ones.', low=-10.0, high=10.0)


@dataclass
class TimedStep:
    due_ns: int
    action: np.ndarray
    chunk: int                # which published chunk it came from
    weight: float = 1.0       # temporal_ensemble: the sum of the weights behind ``action``
    predictions: int = 1      # how many chunks predicted this step


def seconds_to_ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def expired_steps(observed_ns: int, published_ns: int, dt_ns: int) -> int:
    """``ceil((t_pub - t_obs) / dt)``, at least 0."""
    return max(0, -(-(published_ns - observed_ns) // dt_ns))


def blend(old: np.ndarray, new: np.ndarray, mode: str, weight: float = 0.7, decay: float = 0.01,
          old_weights: Optional[np.ndarray] = None, old_predictions: Optional[np.ndarray] = None):
    """Blend a new prediction (n x d) with the old rest (m x d, row 0 due with the new row 0).

    Returns ``(actions, weights, predictions, blended)``: the n rows to publish, per row the ensemble
    weight sum and prediction count behind it, and how many rows were blended (the overlap).
    ``old_weights`` / ``old_predictions`` default to a single prediction of weight 1 per old row.
    """
    new = np.asarray(new, dtype=np.float64)
    old = np.asarray(old, dtype=np.float64).reshape(-1, new.shape[1]) if len(old) else np.zeros((0, new.shape[1]))
    overlap = 0 if mode == 'latest_only' else min(len(old), len(new))
    actions = new.copy()
    weights = np.ones(len(new))
    predictions = np.ones(len(new), dtype=int)
    if overlap == 0:
        return actions, weights, predictions, 0
    o = old[:overlap]
    if mode == 'weighted_average':
        actions[:overlap] = (1.0 - weight) * o + weight * new[:overlap]
        return actions, weights, predictions, overlap
    if mode != 'temporal_ensemble':
        raise ValueError(f'chunk_aggregation: unknown mode {mode!r}; choose one of {list(AGGREGATIONS)}')
    w_old = np.ones(overlap) if old_weights is None else np.asarray(old_weights, dtype=np.float64)[:overlap]
    count = np.ones(overlap, dtype=int) if old_predictions is None else np.asarray(old_predictions)[:overlap]
    w_new = np.exp(-decay * count)          # the i-th prediction of a step (i = count) weighs exp(-m * i)
    actions[:overlap] = (w_old[:, None] * o + w_new[:, None] * new[:overlap]) / (w_old + w_new)[:, None]
    weights[:overlap] = w_old + w_new
    predictions[:overlap] = count + 1
    return actions, weights, predictions, overlap


class ActionTimeline:
    """Queued steps with their due times, in due order."""

    def __init__(self):
        self.steps: deque[TimedStep] = deque()

    def clear(self) -> None:
        self.steps.clear()

    def __len__(self) -> int:
        return len(self.steps)

    def rest_from(self, start_ns: int, dt_ns: int) -> list[TimedStep]:
        """The queued steps a chunk starting at ``start_ns`` replaces."""
        return [s for s in self.steps if s.due_ns >= start_ns - dt_ns // 2]

    def replace_from(self, start_ns: int, dt_ns: int, actions: np.ndarray, chunk: int,
                     weights=None, predictions=None) -> int:
        """Drop every step due from ``start_ns`` on, queue ``actions`` there; returns how many were dropped."""
        kept = [s for s in self.steps if s.due_ns < start_ns - dt_ns // 2]
        dropped = len(self.steps) - len(kept)
        self.steps = deque(kept)
        for i, action in enumerate(np.asarray(actions, dtype=np.float64)):
            self.steps.append(TimedStep(start_ns + i * dt_ns, action, chunk,
                                        1.0 if weights is None else float(weights[i]),
                                        1 if predictions is None else int(predictions[i])))
        return dropped

    def pop_due(self, now_ns: int, dt_ns: int) -> Optional[TimedStep]:
        """The step to execute at a tick at ``now_ns`` (the first one due within half a period), or None."""
        if self.steps and self.steps[0].due_ns <= now_ns + dt_ns // 2:
            return self.steps.popleft()
        return None

    def left(self, now_ns: int) -> int:
        """Steps not yet due at ``now_ns``."""
        return sum(1 for s in self.steps if s.due_ns > now_ns)

    def executing_at(self, t_ns: int, dt_ns: int) -> bool:
        """Whether a step is queued for the period around ``t_ns`` or later (the robot is moving then)."""
        return bool(self.steps) and self.steps[-1].due_ns + dt_ns // 2 >= t_ns

    def finished(self, now_ns: int, dt_ns: int) -> bool:
        """Every queued step's period has ended."""
        return not self.steps or now_ns >= self.steps[-1].due_ns + dt_ns


@dataclass(frozen=True)
class PlannedChunk:
    start_ns: int
    actions: np.ndarray       # the rows to publish, first one due at start_ns
    dropped: int              # expired steps left out (latency compensation)
    blended: int              # rows blended with the old rest
    sequence: int


class ChunkPlanner:
    """The node's record of what it published and when (the consumer's queue, as the node sees it)."""

    def __init__(self):
        self.timeline = ActionTimeline()
        self._latencies: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self._sequence = 0

    def reset(self) -> None:
        """A new goal: nothing is queued as far as this goal is concerned (its first chunk replaces all)."""
        self.timeline.clear()
        self._sequence = 0

    def plan(self, actions: np.ndarray, observed_ns: int, now_ns: int, control_dt: float,
             options: ExecutionOptions, replace: bool = False) -> PlannedChunk:
        """The chunk to publish at ``now_ns`` for a prediction from the observation at ``observed_ns``,
        recorded as published. ``replace``: never blend (flush, method switch)."""
        dt_ns = seconds_to_ns(control_dt)
        actions = np.asarray(actions, dtype=np.float64)
        self._latencies.append(max(0.0, (now_ns - observed_ns) * 1e-9))
        dropped, start = 0, now_ns
        if options.execution == 'async' and self.timeline.executing_at(observed_ns, dt_ns):
            dropped = min(expired_steps(observed_ns, now_ns, dt_ns), len(actions) - 1)
            start = max(observed_ns + dropped * dt_ns, now_ns)
        rows = actions[dropped:]
        weights = predictions = None
        blended = 0
        if options.execution == 'async' and not replace:
            rest = self.timeline.rest_from(start, dt_ns)
            old = np.array([s.action for s in rest]).reshape(len(rest), actions.shape[1])
            rows, weights, predictions, blended = blend(
                old, rows, options.chunk_aggregation, options.aggregation_weight, options.ensemble_decay,
                np.array([s.weight for s in rest]), np.array([s.predictions for s in rest]))
        self.timeline.replace_from(start, dt_ns, rows, self._sequence, weights, predictions)
        planned = PlannedChunk(start, rows, dropped, blended, self._sequence)
        self._sequence += 1
        return planned

    def trigger_steps(self, options: ExecutionOptions, control_dt: float) -> int:
        """Steps left at which ``async`` starts the next inference."""
        if options.inference_trigger_steps:
            return options.inference_trigger_steps
        slowest = max(self._latencies, default=0.0)
        return math.ceil(slowest / control_dt - 1e-9) + 1


class ExecutionTally:
    """A consumer's account of an episode: executed and idle control steps, chunk boundaries.

    Idle steps count only between executed ones (ticks before the first chunk and after the last
    executed step are the user's, not the policy's), and nothing counts after success.
    """

    def __init__(self):
        self.executed = self.idle = self.boundaries = 0
        self.jump_sum = 0.0
        self.success = False
        self.task_steps = 0             # executed + idle at success
        self._waiting = 0               # idle ticks since the last executed step
        self._last: Optional[TimedStep] = None

    def tick(self, step: Optional[TimedStep]) -> None:
        if self.success:
            return
        if step is None:
            self._waiting += int(self._last is not None)
            return
        self.idle += self._waiting
        self._waiting = 0
        if self._last is not None and step.chunk != self._last.chunk:
            self.boundaries += 1
            self.jump_sum += float(np.linalg.norm(step.action[:3] - self._last.action[:3]))
        self.executed += 1
        self._last = step

    def succeed(self) -> None:
        if not self.success and self._last is not None:
            self.success = True
            self.task_steps = self.executed + self.idle
