"""Between two inferences of a goal: the node's record of what it published (``control.chunk_queue``)
and when the next inference starts.

* ``sync``: once the chunk has executed (``control_dt * execute_steps`` after it went out);
* ``async``: once ``inference_trigger_steps`` (or the auto value) of the queued steps are left, so the
  model runs while the robot still moves; a goal's last chunk (``max_chunks``) is waited out.

Either way the policy's frame ring gets one frame set per control step and the controller steps on
every new velocity sample; a coarse -> fine switch ends the wait at once (flush: the next chunk
replaces the rest). No publishing here: the execute loop in ``server`` does that.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from ..control.chunk_queue import ChunkPlanner, ExecutionOptions, PlannedChunk, seconds_to_ns
from ..parameters import execution_options
from .inputs import StaleInput

POLL_PERIOD = 0.005           # s between checks while a chunk executes


class ChunkPacing:
    """One per node; ``reset`` at every goal (its first chunk then replaces whatever is queued)."""

    def __init__(self, parameters, policy, inputs, controller, now_ns: Callable[[], int], logger):
        self.parameters, self.policy, self.inputs, self.controller = parameters, policy, inputs, controller
        self.now_ns, self.logger = now_ns, logger
        self.planner = ChunkPlanner()

    def options(self) -> ExecutionOptions:
        return execution_options(self.parameters.values)

    def reset(self) -> None:
        self.planner.reset()

    def plan(self, actions, observed_ns: int, replace: bool) -> PlannedChunk:
        """The chunk to publish now (latency-compensated and blended in async), recorded as published."""
        return self.planner.plan(actions, observed_ns, self.now_ns(), self.parameters.value('control_dt'),
                                 self.options(), replace)

    def _done(self, options: ExecutionOptions, deadline: float, final: bool) -> bool:
        if options.execution == 'sync':
            return time.perf_counter() >= deadline
        dt = self.parameters.value('control_dt')
        now = self.now_ns()
        if final:
            return self.planner.timeline.finished(now, seconds_to_ns(dt))
        return self.planner.timeline.left(now) <= self.planner.trigger_steps(options, dt)

    def wait(self, ended: Callable[[], object], published: float, last_velocity_stamp,
             final: bool = False) -> tuple[Optional[float], bool]:
        """Wait until the next inference is due; returns (last velocity stamp, flush). ``published`` is the
        perf_counter time the chunk went out; ``final``: the goal's last chunk, wait until it has executed."""
        options = self.options()
        steps = self.parameters.value('execute_steps') or self.policy.config.chunk_len
        deadline = published + self.parameters.value('control_dt') * steps
        next_frame = published + self.parameters.value('control_dt')
        while not self._done(options, deadline, final):
            if ended():
                return last_velocity_stamp, False
            if time.perf_counter() >= next_frame:      # one frame per control step into the policy's ring
                next_frame += self.parameters.value('control_dt')
                try:
                    self.policy.observe_frames(self.inputs.observe(self.parameters.value('max_input_age')).images)
                except StaleInput:
                    pass        # a missing frame leaves a gap; the next inference checks its own inputs
            queued = options.execution == 'sync' or self.planner.timeline.left(self.now_ns()) > 0
            velocity = self.inputs.velocity()
            if velocity is not None and velocity.stamp_s != last_velocity_stamp:
                last_velocity_stamp = velocity.stamp_s
                decision = self.controller.step(velocity.linear, velocity.angular, queued, velocity.stamp_s)
            elif velocity is None and self.controller.mode != 'fine':
                decision = self.controller.step(None, None, queued, time.monotonic())
            else:
                decision = None
            if decision is not None and decision.flush_queue:
                self.logger.info(f'{decision.reason}: dropping the rest of the chunk, inferring now')
                return last_velocity_stamp, True
            sync_left = max(0.0, deadline - time.perf_counter())
            time.sleep(min(POLL_PERIOD, sync_left) if options.execution == 'sync' else POLL_PERIOD)
            options = self.options()
        return last_velocity_stamp, False
