"""Async execution of vla_prune_node over real DDS: latency compensation, the overlap blend, a method
switch and a preemption mid-overlap, dry_run. A publisher process streams cameras and joint states,
the node runs a tiny checkpoint, this process is the client and plays the robot's queue with the
simulator's own ``ActionTimeline``. Every wait is on an observable condition (messages, results).
"""
import math
import time

import numpy as np
import pytest

from ros_helpers import (SIM_ROBOT_YAML, RosClient, command, domain_id, launch_params_file, make_checkpoint, start_node,
                         start_publisher, tracebacks)
from vla_prune_ros import parameters as node_config
from vla_prune_ros.control.chunk_queue import ActionTimeline, seconds_to_ns

DOMAIN = domain_id(__name__)
DT = 0.05
DT_NS = seconds_to_ns(DT)
CHUNK = 8
INSTRUCTION = 'touch the red cube'
WALL_MINUS_MONOTONIC_NS = time.time_ns() - time.monotonic_ns()
ASYNC_DEFAULTS = {'execution': 'sync', 'added_latency': 0.0, 'chunk_aggregation': 'latest_only',
                  'inference_trigger_steps': 0, 'dry_run': False, 'method': 'none', 'control_dt': DT}


def ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.fixture(scope='module')
def system(tmp_path_factory):
    directory = tmp_path_factory.mktemp('async')
    checkpoint = make_checkpoint(directory / 'tiny')
    params_file = launch_params_file(directory, 'none', {'checkpoint': str(checkpoint), 'control_dt': str(DT),
                                                         'max_input_age': '3.0'})
    publisher = start_publisher(DOMAIN, rate=30.0, size=64)
    node = start_node(DOMAIN, {'device': 'cpu', 'torch_threads': 1, 'publish_joint_trajectory': True},
                      params_files=[params_file])
    client = RosClient(DOMAIN)
    try:
        client.wait_ready(90)
        client.wait_inputs_flowing()
        yield client, publisher, node
    finally:
        client.close()
        assert node.stop() == 0, node.lines[-20:]
        publisher.stop()
        assert not tracebacks(node.lines), tracebacks(node.lines)


@pytest.fixture
def settings(system):
    """Set node parameters for one test; everything back to the defaults afterwards."""
    client = system[0]
    changed = {}

    def apply(**values):
        changed.update({name: ASYNC_DEFAULTS.get(name) for name in values})
        results = client.set_parameters(values)
        assert all(r.successful for r in results), [r.reason for r in results]

    yield apply
    restore = {name: value for name, value in changed.items() if value is not None}
    if restore:
        client.set_parameters(restore)


def wait_count(client, store, start, count, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.since(store, start)
        if len(items) >= count:
            return items
        time.sleep(0.01)
    raise AssertionError(f'{len(client.since(store, start))} of {count} messages in {timeout} s')


def received(client, store, start):
    """(wall-clock receive time ns, message) pairs since ``start``."""
    with client.lock:
        return [(int(t * 1e9) + WALL_MINUS_MONOTONIC_NS, msg) for t, msg in store if t >= start]


def rows(chunk) -> np.ndarray:
    return np.array(chunk.actions).reshape(chunk.chunk_length, chunk.action_dim)


def test_async_drops_exactly_the_steps_that_expired_during_a_slowed_inference(system, settings):
    client = system[0]
    settings(execution='async', added_latency=0.12)          # 2.4 control periods
    start = time.monotonic()
    accepted, result, _, _ = client.run_goal(INSTRUCTION, max_chunks=6)
    result_at = time.time_ns()
    assert accepted and result.status == result.STATUS_CHUNK_LIMIT, result
    stats = wait_count(client, client.stats, start, 6)
    chunks = received(client, client.chunks, start)
    trajectories = wait_count(client, client.trajectories, start, 6)
    assert len(chunks) == 6
    for (receive_ns, chunk), stat, trajectory in zip(chunks, stats, trajectories):
        observed, begins = ns(chunk.header.stamp), ns(chunk.start_time)
        assert stat.execution == 'async' and ns(stat.start_time) == begins
        assert trajectory.header.stamp == chunk.start_time        # joint_trajectory_controller's convention
        k = stat.dropped_steps
        assert chunk.chunk_length == CHUNK - k and len(trajectory.points) == CHUNK - k
        if chunk.sequence == 0:                   # nothing was executing: nothing expired, due at once
            assert k == 0 and begins >= observed + stat.total_time * 1e9 - 1e3
            continue
        # k = ceil((t_pub - t_obs) / dt) for a publication time between the end of the inference and the receipt.
        assert begins - observed == k * DT_NS
        assert math.ceil(stat.total_time / DT - 1e-9) <= k <= math.ceil((receive_ns - observed) / DT_NS)
        assert k >= 3
    # The goal's last chunk is waited out before CHUNK_LIMIT.
    last = chunks[-1][1]
    assert result_at >= ns(last.start_time) + (last.chunk_length - 1) * DT_NS


def ensemble(predictions, decay):
    """ACT's weighted mean over the predictions of one step, oldest first."""
    weights = np.exp(-decay * np.arange(len(predictions)))
    return (weights[:, None] * np.array(predictions)).sum(axis=0) / weights.sum()


@pytest.mark.parametrize('mode, knob', [('latest_only', {}), ('weighted_average', {'aggregation_weight': 0.6}),
                                        ('temporal_ensemble', {'ensemble_decay': 0.5})])
def test_aggregation_modes_give_the_documented_blend(system, settings, mode, knob):
    client, publisher, _ = system
    # The same frames and joint positions every time: every inference predicts the same raw chunk p.
    command(publisher, 'scene still')
    command(publisher, 'joints still')
    try:
        client.settle()
        settings(execution='async', added_latency=0.06, inference_trigger_steps=6, chunk_aggregation=mode,
                 action_low=[-10.0] * 7, action_high=[10.0] * 7, **{'controller.min_dwell_time': 60.0}, **knob)
        start = time.monotonic()
        accepted, result, _, _ = client.run_goal(INSTRUCTION, max_chunks=5)
        assert accepted and result.status == result.STATUS_CHUNK_LIMIT, result
        stats = wait_count(client, client.stats, start, 5)
        chunks = [c for _, c in received(client, client.chunks, start)]
    finally:
        command(publisher, 'scene moving')
        command(publisher, 'joints moving')
        client.set_parameters({'action_low': node_config.load_params_file(SIM_ROBOT_YAML)['action_low'],
                               'action_high': node_config.load_params_file(SIM_ROBOT_YAML)['action_high'],
                               'controller.min_dwell_time': 0.1})
    assert stats[0].dropped_steps == 0 and chunks[0].chunk_length == CHUNK
    raw = rows(chunks[0])                               # the first chunk of a goal is p itself
    predictions = [[row] for row in raw]                # per published row: every prediction behind it
    for previous, chunk, stat in zip(chunks, chunks[1:], stats[1:]):
        k, begins = stat.dropped_steps, ns(chunk.start_time)
        published = rows(chunk)
        before = ns(previous.start_time)
        offset = sum(1 for i in range(previous.chunk_length) if before + i * DT_NS < begins - DT_NS // 2)
        overlap = min(previous.chunk_length - offset, len(published))
        assert stat.blended_steps == (0 if mode == 'latest_only' else overlap) and overlap >= 1
        # A row meets the old step due in the same control period (within half a period of it).
        predictions = [(predictions[offset + j] if j < overlap else []) + [raw[k + j]] for j in range(len(published))]
        for j in range(len(published)):
            new = raw[k + j]
            if mode == 'latest_only' or j >= overlap:
                expected = new
            elif mode == 'weighted_average':
                expected = 0.4 * rows(previous)[offset + j] + 0.6 * new
            else:
                expected = ensemble(predictions[j], 0.5)
            np.testing.assert_allclose(published[j], expected, atol=1e-9, err_msg=f'{mode} row {j}')


def consumer_after(chunks):
    """The robot's queue (the simulator's ActionTimeline) after these chunks, in arrival order."""
    timeline = ActionTimeline()
    for index, chunk in enumerate(chunks):
        timeline.replace_from(ns(chunk.start_time), seconds_to_ns(chunk.dt), rows(chunk), index)
    return timeline


def test_a_method_switch_mid_overlap_leaves_no_stale_steps(system, settings):
    client = system[0]
    settings(execution='async', added_latency=0.06, inference_trigger_steps=6, chunk_aggregation='weighted_average')
    start = time.monotonic()
    goal = client.wait_future(client.send_goal(INSTRUCTION, timeout=6.0), 10.0)
    wait_count(client, client.stats, start, 3)
    settings(method='specprune')
    switched = client.wait_for_message(client.stats, start, lambda s: s.method == 'specprune')
    assert switched is not None
    later = client.wait_for_message(client.stats, start, lambda s: s.method == 'specprune' and s.blended_steps > 0)
    assert later is not None, 'specprune chunks never blended with each other'
    client.wait_future(goal.cancel_goal_async(), 10.0)
    client.wait_future(goal.get_result_async(), 20.0)
    stats = client.since(client.stats, start)
    chunks = client.since(client.chunks, start)
    first_new = next(i for i, s in enumerate(stats) if s.method == 'specprune')
    assert stats[first_new].blended_steps == 0
    assert [c.method for c in chunks[:first_new]] == ['none'] * first_new
    timeline = consumer_after(chunks[:first_new + 1])
    begins = ns(chunks[first_new].start_time)
    queued = [s for s in timeline.steps if s.due_ns >= begins - DT_NS // 2]
    assert [s.chunk for s in queued] == [first_new] * chunks[first_new].chunk_length
    np.testing.assert_array_equal(np.array([s.action for s in queued]), rows(chunks[first_new]))


def test_a_preemption_mid_overlap_leaves_no_stale_steps(system, settings):
    client = system[0]
    settings(execution='async', added_latency=0.06, inference_trigger_steps=6, chunk_aggregation='temporal_ensemble')
    start = time.monotonic()
    first = client.wait_future(client.send_goal(INSTRUCTION, timeout=6.0), 10.0)
    wait_count(client, client.chunks, start, 3)
    second_sent = time.monotonic()
    second = client.wait_future(client.send_goal('push the blue block to the left of the green bowl', max_chunks=3),
                                10.0)
    assert second.accepted
    outcome = client.wait_future(second.get_result_async(), 20.0).result
    assert outcome.status == outcome.STATUS_CHUNK_LIMIT
    assert client.wait_future(first.get_result_async(), 20.0).result.status == outcome.STATUS_PREEMPTED
    chunks = client.since(client.chunks, start)
    stats = client.since(client.stats, start)
    newest = max(i for i, c in enumerate(chunks) if c.sequence == 0)     # the second goal's first chunk
    assert newest > 0
    assert [c.sequence for c in chunks[newest:]] == [0, 1, 2]          # nothing of the first goal after it
    assert stats[newest].blended_steps == 0 and stats[newest].dropped_steps == 0
    timeline = consumer_after(chunks[:newest + 1])
    begins = ns(chunks[newest].start_time)
    assert [s.chunk for s in timeline.steps if s.due_ns >= begins - DT_NS // 2] == [newest] * CHUNK


def test_the_coarse_to_fine_flush_infers_at_once_and_replaces_the_rest_in_async(system, settings):
    client, publisher, _ = system
    # Chunks of 8 x 0.2 s: without the flush the next inference would come up to 1.4 s later.
    settings(execution='async', control_dt=0.2, inference_trigger_steps=1, chunk_aggregation='weighted_average')
    dwell = node_config.load_params_file(SIM_ROBOT_YAML)['controller.min_dwell_time']
    start = time.monotonic()
    goal = client.wait_future(client.send_goal(INSTRUCTION, timeout=8.0), 10.0)
    try:
        wait_count(client, client.chunks, start, 1)
        command(publisher, 'joints still')          # the arm stops: coarse -> fine after min_dwell_time
        stopped = time.time_ns()
        fine = client.wait_for_message(client.stats, start, lambda s: s.controller_mode == 'fine')
        assert fine is not None
    finally:
        command(publisher, 'joints moving')
        client.wait_future(goal.cancel_goal_async(), 10.0)
        client.wait_future(goal.get_result_async(), 20.0)
    # Inferred at once: from an observation taken within the dwell time (plus input age) of the stop.
    assert ns(fine.header.stamp) <= stopped + (dwell + 0.25) * 1e9
    stats, chunks = client.since(client.stats, start), client.since(client.chunks, start)
    first_fine = next(i for i, s in enumerate(stats) if s.controller_mode == 'fine')
    assert stats[first_fine].blended_steps == 0                     # replaced, not blended
    flushed = chunks[first_fine]
    timeline = consumer_after(chunks[:first_fine + 1])
    dt_ns = seconds_to_ns(flushed.dt)
    assert [s.chunk for s in timeline.steps if s.due_ns >= ns(flushed.start_time) - dt_ns // 2] == \
        [first_fine] * flushed.chunk_length


def test_dry_run_publishes_no_chunk(system, settings):
    client = system[0]
    settings(dry_run=True, execution='async')
    start = time.monotonic()
    accepted, result, _, feedback = client.run_goal(INSTRUCTION, max_chunks=3)
    assert accepted and result.status == result.STATUS_CHUNK_LIMIT and result.chunks_executed == 3
    stats = wait_count(client, client.stats, start, 3)
    assert [s.dry_run for s in stats] == [True] * 3 and len(feedback) == 3
    # A diagnostics message after the goal (1 Hz) says dry_run; a chunk sent with the stats would be in by then.
    def says_dry_run(array):
        return any(kv.key == 'dry_run' and kv.value == 'true' for status in array.status for kv in status.values)
    assert client.wait_for_message(client.diagnostics, time.monotonic(), says_dry_run, timeout=5.0) is not None
    assert client.since(client.chunks, start) == [] and client.since(client.trajectories, start) == []


@pytest.mark.parametrize('values, words', [
    ({'execution': 'later'}, ['execution', 'not one of']),
    ({'chunk_aggregation': 'average'}, ['chunk_aggregation']),
    ({'aggregation_weight': 1.5}, ['aggregation_weight']),
    ({'inference_trigger_steps': -1}, ['inference_trigger_steps']),
    ({'added_latency': -0.1}, ['added_latency']),
    ({'dry_run': 1}, ['dry_run', 'type']),
])
def test_bad_execution_values_are_refused_with_a_reason(system, values, words):
    result = system[0].set_parameters(values)[0]
    assert not result.successful
    for word in words:
        assert word in result.reason, result.reason
