"""Paired success comparison and motion-quality measures of ``vla-prune eval``."""
import math

import numpy as np
import pytest

from vla_prune_ros.evaluation import EpisodeResult, boundary_jump, paired_difference, path_jerk, summarise


def test_identical_methods_differ_by_nothing():
    outcomes = [True, False, True, True, False] * 4
    difference = paired_difference(outcomes, outcomes)
    assert difference['delta'] == 0.0 and difference['ci95'] == [0.0, 0.0] and difference['mcnemar_p'] == 1.0


def test_mcnemar_exact_p_on_discordant_pairs():
    # 10 pairs where only the method succeeds: two-sided exact p = 2 * 0.5**10.
    difference = paired_difference([True] * 10, [False] * 10)
    assert difference['delta'] == 1.0 and difference['only_method'] == 10
    assert math.isclose(difference['mcnemar_p'], 2 * 0.5 ** 10)
    # 3 for the method, 1 for the baseline: p = 2 * (C(4,0) + C(4,1)) / 2**4 = 0.625.
    method = [True, True, True, False] + [True] * 6
    baseline = [False, False, False, True] + [True] * 6
    assert math.isclose(paired_difference(method, baseline)['mcnemar_p'], 0.625)


def test_pairing_narrows_the_interval_when_the_methods_agree_on_most_seeds():
    rng = np.random.default_rng(3)
    baseline = list(rng.random(200) < 0.5)
    method = list(baseline)
    method[0], method[1] = (not method[0]), (not method[1])
    low, high = paired_difference(method, baseline)['ci95']
    assert high - low < 0.05     # unpaired 95 % intervals at p = 0.5, n = 200 are each about +-7 points
    assert low <= paired_difference(method, baseline)['delta'] <= high


def test_paired_difference_refuses_unequal_lists():
    with pytest.raises(ValueError):
        paired_difference([True], [True, False])


def test_jerk_of_a_cubic_path_is_six_times_its_coefficient():
    dt = 0.1
    times = np.arange(10) * dt
    path = [np.array([2.0 * t ** 3, 0.0, 0.0]) for t in times]
    assert math.isclose(path_jerk(path, dt), 12.0, rel_tol=1e-9)
    assert path_jerk(path[:3], dt) is None
    straight = [np.array([0.01 * i, 0.0, 0.0]) for i in range(10)]
    assert path_jerk(straight, dt) == pytest.approx(0.0, abs=1e-9)


def test_boundary_jump_is_the_change_in_commanded_translation():
    assert boundary_jump(None, np.zeros(7)) is None
    assert math.isclose(boundary_jump(np.array([0.01, 0, 0, 0.1, 0, 0, 1]), np.array([0.01, 0.003, 0.004, 0, 0, 0, 1])),
                        0.005)


def _result(seed, success, time_s=None):
    return EpisodeResult(seed, 'touch', 'touch the red cube', success, 10, 2, latencies=[0.01], tokens=[100],
                         flops_ratios=[0.5], task_time_s=time_s, boundary_jumps=[0.002], tcp_jerk=1.0)


def test_summary_reports_paired_keys_and_task_time_over_successes_only():
    baseline = [_result(i, i % 2 == 0, 2.0 if i % 2 == 0 else None) for i in range(6)]
    method = [_result(i, True, 3.0) for i in range(6)]
    row = summarise(method, baseline)
    for key in ('success_rate', 'success_ci95', 'delta_vs_none', 'delta_vs_none_ci95', 'mean_task_time_s',
                'boundary_jump', 'tcp_jerk', 'mean_latency_ms', 'flops_ratio'):
        assert key in row, key
    assert math.isclose(row['delta_vs_none'], 0.5)
    assert row['mean_task_time_s'] == 3.0 and summarise(baseline)['mean_task_time_s'] == 2.0
    with pytest.raises(ValueError):
        summarise(method[:5], baseline)


def test_eval_refuses_a_repeated_method_label():
    """The report is keyed by label, so a second ``lightvla=...`` would silently replace the first."""
    import argparse
    from vla_prune_ros.evaluation import evaluate
    args = argparse.Namespace(tasks='touch', methods='none,lightvla=/a,lightvla=/b', checkpoint='/a')
    with pytest.raises(ValueError, match=r"\['lightvla'\] appear more than once"):
        evaluate(args)
