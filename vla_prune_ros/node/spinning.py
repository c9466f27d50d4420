"""The executor loop, and the gate that makes it step aside while the policy runs a forward pass.

Why: the forward pass of a small model is mostly Python dispatch, and each torch op gives up the GIL
and takes it back. With 500 Hz joint states and 3 cameras the executor thread wants the GIL about
600 times a second, so the forward keeps waiting for it (measured: latency 1.43x unloaded without the
gate, 1.02x with it; benchmarks/intake_without_gate.md, intake.md). While a forward runs, nothing the
executor does can reach it: the sample was taken before. So the executor waits until the forward ends,
at most ``max_pause`` seconds, and then catches up. Sensor subscriptions are keep-last, so DDS
(outside Python) drops what is superseded and the next sample still gets the newest message. Goal,
cancel and result requests wait at most one forward pass (or ``max_pause``); their queues are deep
enough for a burst.
"""
from __future__ import annotations

import contextlib
import threading

from rclpy.executors import ExternalShutdownException

MAX_PAUSE = 0.1     # s: the executor answers requests at least this often, however long a forward runs
SPIN_TIMEOUT = 0.1  # s: each wait for work, so a shutdown is seen promptly


class ForwardGate:
    """Closed while a forward pass runs (the goal-runner thread); the executor loop waits on it."""

    def __init__(self, max_pause: float = MAX_PAUSE):
        self.max_pause = float(max_pause)
        self._open = threading.Event()
        self._open.set()

    @contextlib.contextmanager
    def closed(self):
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()

    def wait(self) -> bool:
        """Block while a forward runs (at most ``max_pause``); True when the gate is open."""
        return self._open.wait(self.max_pause)


def spin(executor, context, gate: ForwardGate) -> None:
    """``executor.spin()``, one callback at a time, with the gate waited on before each; returns on shutdown."""
    while context.ok():
        gate.wait()
        try:
            executor.spin_once(timeout_sec=SPIN_TIMEOUT)
        except ExternalShutdownException:
            return
        except Exception:
            # A Ctrl-C between the ok() check and the wait makes rclpy raise RCLError ("context is not
            # valid") while it builds the wait set: that is a shutdown, not a fault (seen as exit 1 in CI).
            if context.ok():
                raise
            return
