"""Goals of ``run_instruction``: one accepted goal (:class:`GoalRun`), how it ends (:class:`Ending`), and
the one thread that runs them (:class:`GoalRunner`).

Threads. The executor (single-threaded) serves every ROS callback: sensors, parameters, diagnostics
and the action server's goal, cancel and result requests, so none of them ever waits behind a forward
pass. The action's execute callback is a coroutine that hands its goal to the runner thread and awaits
the result. Goals run one at a time in the order they were accepted; a goal preempted while queued ends
at once, so a burst ends with every goal answered and the last accepted one running.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from vla_prune_interfaces.action import RunInstruction

from . import messages

Result = RunInstruction.Result
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


class GoalRunner:
    """One long-lived thread that runs goals in order; ``submit`` returns at once.

    ``run`` is called with a GoalRun and returns its Result; ``done(result)`` is then called on this
    thread (it completes the future the execute coroutine awaits). The thread count stays constant
    however many goals come.
    """

    def __init__(self, run: Callable[[GoalRun], Any], on_error: Callable[[GoalRun, Exception], Any]):
        self._run, self._on_error = run, on_error
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name='vla_goal_runner', daemon=True)
        self._thread.start()

    def submit(self, run: GoalRun, done: Callable[[Any], None]) -> None:
        self._queue.put((run, done))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            run, done = item
            try:
                result = self._run(run)
            except Exception as error:  # noqa: BLE001 - a goal must end with a reason, never kill the runner
                result = self._on_error(run, error)
            done(result)

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)


def finish(run: GoalRun, ending: Ending, logger, context_ok: Callable[[], bool]):
    """Set the goal's terminal state (unless preemption already did), log the ending, build its result."""
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
                if context_ok():
                    logger.warning(f'could not set the goal state: {error}')
        elif run.preempted:
            status, reason = Result.STATUS_PREEMPTED, PREEMPTED
    message = f'goal ended {messages.STATUS_NAMES[status]}: {reason} ({run.chunks} chunks)'
    if status == Result.STATUS_FAILED:     # one severity per call site: rclpy's rule
        logger.warning(message)
    else:
        logger.info(message)
    return messages.result(status, reason, run.chunks, run.latencies, run.tokens)


def republish_status(action_server, logger) -> None:
    """Publish the goal status array again (the node does after every chunk). After a burst the last
    status message may reach a client before it has registered its newest goal handle, and preempted goals
    that end later change no state: without this the client would see the running goal UNKNOWN until it ends."""
    try:
        action_server._handle.publish_status()     # rclpy has no public call for this
    except Exception as error:  # noqa: BLE001 - a missed status update must never end a goal
        logger.debug(f'could not republish the goal status: {error}')
