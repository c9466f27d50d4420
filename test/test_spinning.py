"""The node's executor loop (vla_prune_ros.node.spinning) with a real rclpy executor: while the forward
gate is closed, callbacks run at most once per max_pause; once it opens they run freely again."""
import threading
import time

import rclpy
from rclpy.executors import SingleThreadedExecutor

from vla_prune_ros.node.spinning import ForwardGate, spin
from ros_helpers import domain_id, wait_until


def test_gate_wait_returns_at_once_when_open_and_after_max_pause_when_closed():
    gate = ForwardGate(max_pause=0.05)
    assert gate.wait() is True
    with gate.closed():
        started = time.monotonic()
        assert gate.wait() is False
        assert time.monotonic() - started >= 0.05
    assert gate.wait() is True


def test_executor_steps_aside_while_the_gate_is_closed():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(__name__))
    node = rclpy.create_node('spinning_probe', context=context)
    ticks = []
    node.create_timer(0.001, lambda: ticks.append(time.monotonic()))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    gate = ForwardGate(max_pause=0.1)
    spinner = threading.Thread(target=spin, args=(executor, context, gate), daemon=True)
    spinner.start()
    try:
        wait_until(lambda: len(ticks) >= 20, 20.0, 'the timer to run under spin()')
        with gate.closed():
            time.sleep(0.02)             # a callback already under way may finish
            before = len(ticks)
            closed_for = 0.5
            time.sleep(closed_for)
            during = len(ticks) - before
        # One callback per max_pause at most (a 1 ms timer would otherwise tick ~500 times).
        assert during <= closed_for / gate.max_pause + 2, during
        reopened = len(ticks)
        wait_until(lambda: len(ticks) >= reopened + 20, 20.0, 'callbacks to resume after the gate opened')
    finally:
        rclpy.try_shutdown(context=context)
        spinner.join(timeout=5.0)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
    assert not spinner.is_alive(), 'spin() did not return after the context shut down'


def test_a_shutdown_between_the_ok_check_and_the_wait_ends_spin_quietly():
    """Ctrl-C can land after ``context.ok()`` and before the executor builds its wait set; rclpy then
    raises RCLError. The node must exit 0 on Ctrl-C, so spin() returns instead of raising."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(__name__))
    node = rclpy.create_node('spinning_race_probe', context=context)
    node.create_timer(0.01, lambda: None)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    class ShutsDownWhileWaiting(ForwardGate):
        def wait(self):
            context.shutdown()
            return True

    try:
        spin(executor, context, ShutsDownWhileWaiting())
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
    assert not context.ok()
