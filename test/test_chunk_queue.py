"""vla_prune_ros.control.chunk_queue without ROS: the blend, latency compensation, the consumer's
queue (due times, replacement, idle ticks) and the node's record of what it published."""
import math

import numpy as np
import pytest

from vla_prune_ros.control.chunk_queue import (ActionTimeline, ChunkPlanner, ExecutionOptions, ExecutionTally,
                                               blend, expired_steps, seconds_to_ns)

DT = seconds_to_ns(0.1)
MS = 1_000_000


def rows(*values):
    return np.array([[v] * 7 for v in values], dtype=float)


def test_expired_steps_is_the_ceiling_of_the_delay_in_steps():
    assert expired_steps(0, 0, DT) == 0
    assert expired_steps(0, 1, DT) == 1
    assert expired_steps(0, DT, DT) == 1
    assert expired_steps(0, DT + 1, DT) == 2
    assert expired_steps(0, 250 * MS, DT) == 3
    assert expired_steps(10, 0, DT) == 0          # a stamp after the publication: nothing expired


def test_latest_only_replaces():
    actions, weights, predictions, blended = blend(rows(1, 1), rows(3, 3, 3), 'latest_only')
    assert np.array_equal(actions, rows(3, 3, 3)) and blended == 0


def test_weighted_average_blends_the_overlap_only():
    actions, _, _, blended = blend(rows(1, 1), rows(3, 3, 3), 'weighted_average', weight=0.7)
    assert blended == 2
    np.testing.assert_allclose(actions, rows(0.3 * 1 + 0.7 * 3, 0.3 * 1 + 0.7 * 3, 3))


def test_temporal_ensemble_is_acts_weighted_mean_over_every_prediction():
    m = 0.5
    # Step predicted by two chunks already (running weight 1 + e^-m), then a third time.
    old_mean = (1.0 * 1 + math.exp(-m) * 2) / (1 + math.exp(-m))
    actions, weights, predictions, blended = blend(
        rows(old_mean, 5), rows(4, 6, 7), 'temporal_ensemble', decay=m,
        old_weights=np.array([1 + math.exp(-m), 1.0]), old_predictions=np.array([2, 1]))
    expected_first = (1 * 1 + math.exp(-m) * 2 + math.exp(-2 * m) * 4) / (1 + math.exp(-m) + math.exp(-2 * m))
    expected_second = (1 * 5 + math.exp(-m) * 6) / (1 + math.exp(-m))
    np.testing.assert_allclose(actions[:, 0], [expected_first, expected_second, 7])
    assert list(predictions) == [3, 2, 1] and blended == 2
    np.testing.assert_allclose(weights[:2], [1 + math.exp(-m) + math.exp(-2 * m), 1 + math.exp(-m)])


def test_blend_with_nothing_left_is_the_new_chunk():
    for mode in ('weighted_average', 'temporal_ensemble'):
        actions, _, _, blended = blend(np.zeros((0, 7)), rows(2, 2), mode)
        assert blended == 0 and np.array_equal(actions, rows(2, 2))


def test_a_blend_of_bounded_actions_stays_in_bounds():
    rng = np.random.default_rng(0)
    old, new = rng.uniform(-1, 1, (5, 7)), rng.uniform(-1, 1, (8, 7))
    for mode, kwargs in (('weighted_average', {'weight': 0.3}), ('temporal_ensemble', {'decay': -3.0})):
        actions = blend(old, new, mode, **kwargs)[0]
        assert np.all(np.isfinite(actions)) and np.all(np.abs(actions) <= 1.0)


def test_timeline_executes_each_step_at_the_tick_nearest_its_due_time_and_idles_otherwise():
    timeline, tally = ActionTimeline(), ExecutionTally()
    timeline.replace_from(1000 * MS + 30 * MS, DT, rows(1, 2, 3), chunk=0)
    ticks = [1000 * MS + i * DT for i in range(6)]        # 1.0 s, 1.1 s, ...
    executed = []
    for t in ticks:
        step = timeline.pop_due(t, DT)
        tally.tick(step)
        executed.append(None if step is None else step.action[0])
    assert executed == [1, 2, 3, None, None, None]
    assert tally.executed == 3 and tally.idle == 0      # trailing idle ticks are not the policy's
    # A step due more than half a period ahead waits.
    timeline.replace_from(2000 * MS + 60 * MS, DT, rows(4), chunk=1)
    assert timeline.pop_due(2000 * MS, DT) is None
    tally.tick(None)
    step = timeline.pop_due(2100 * MS, DT)
    tally.tick(step)
    assert step.action[0] == 4 and tally.idle == 4 and tally.boundaries == 1
    assert tally.jump_sum == pytest.approx(np.linalg.norm(rows(4)[0, :3] - rows(3)[0, :3]))


def test_a_new_chunk_replaces_the_queue_from_its_start_and_keeps_the_earlier_steps():
    timeline = ActionTimeline()
    timeline.replace_from(0, DT, rows(1, 2, 3, 4, 5), chunk=0)
    dropped = timeline.replace_from(2 * DT + 5 * MS, DT, rows(9, 9), chunk=1)    # jitter of 5 ms
    assert dropped == 3
    assert [s.action[0] for s in timeline.steps] == [1, 2, 9, 9]
    assert [s.chunk for s in timeline.steps] == [0, 0, 1, 1]
    assert timeline.left(DT) == 2 and timeline.left(10 * DT) == 0
    assert not timeline.finished(3 * DT, DT) and timeline.finished(4 * DT + 5 * MS, DT)


def sync_options(**changes):
    return ExecutionOptions(**changes)


def test_sync_planner_never_drops_or_blends():
    planner = ChunkPlanner()
    first = planner.plan(rows(*range(8)), observed_ns=0, now_ns=10 * MS, control_dt=0.1, options=sync_options())
    second = planner.plan(rows(*range(8)), observed_ns=50 * MS, now_ns=300 * MS, control_dt=0.1,
                          options=sync_options(chunk_aggregation='weighted_average'))
    for chunk, now in ((first, 10 * MS), (second, 300 * MS)):
        assert chunk.start_ns == now and chunk.dropped == 0 and chunk.blended == 0 and len(chunk.actions) == 8


def test_async_planner_drops_the_expired_steps_and_blends_the_rest():
    options = ExecutionOptions(execution='async', chunk_aggregation='weighted_average', aggregation_weight=0.5)
    planner = ChunkPlanner()
    first = planner.plan(rows(*range(8)), observed_ns=-20 * MS, now_ns=0, control_dt=0.1, options=options)
    assert first.dropped == 0 and first.start_ns == 0           # nothing was executing: start at once
    # Observation at 0.3 s while the first chunk runs (steps due 0, 0.1, ..., 0.7 s), published 0.25 s later:
    # ceil(0.25 / 0.1) = 3 steps expired, the rest starts at 0.6 s and meets the first chunk's steps 6 and 7.
    second = planner.plan(rows(*[10 + i for i in range(8)]), observed_ns=300 * MS, now_ns=550 * MS,
                          control_dt=0.1, options=options)
    assert second.dropped == 3 and second.start_ns == 600 * MS and len(second.actions) == 5
    assert second.blended == 2
    np.testing.assert_allclose(second.actions[:, 0], [0.5 * 6 + 0.5 * 13, 0.5 * 7 + 0.5 * 14, 15, 16, 17])
    # The record: the first chunk up to 0.5 s, then the second from 0.6 s.
    assert [s.chunk for s in planner.timeline.steps] == [0] * 6 + [1] * 5
    assert planner.timeline.left(550 * MS) == 5


def test_replacing_chunks_are_not_blended_and_a_reset_starts_fresh():
    options = ExecutionOptions(execution='async', chunk_aggregation='temporal_ensemble')
    planner = ChunkPlanner()
    planner.plan(rows(*range(8)), 0, 10 * MS, 0.1, options)
    flushed = planner.plan(rows(*range(8)), 200 * MS, 230 * MS, 0.1, options, replace=True)
    assert flushed.blended == 0 and flushed.dropped == 1
    planner.reset()
    fresh = planner.plan(rows(*range(8)), 400 * MS, 420 * MS, 0.1, options)
    assert fresh.dropped == 0 and fresh.blended == 0 and fresh.start_ns == 420 * MS


def test_auto_trigger_is_the_slowest_recent_latency_in_steps_plus_one():
    planner = ChunkPlanner()
    options = ExecutionOptions(execution='async')
    assert planner.trigger_steps(options, 0.1) == 1
    planner.plan(rows(*range(8)), 0, 250 * MS, 0.1, options)
    assert planner.trigger_steps(options, 0.1) == 4
    assert planner.trigger_steps(ExecutionOptions(execution='async', inference_trigger_steps=6), 0.1) == 6


def test_options_refuse_bad_values_naming_the_field():
    with pytest.raises(ValueError, match='execution'):
        ExecutionOptions(execution='later')
    with pytest.raises(ValueError, match='aggregation_weight'):
        ExecutionOptions(aggregation_weight=1.5)
    with pytest.raises(ValueError, match='inference_trigger_steps'):
        ExecutionOptions(inference_trigger_steps=-1)
