"""``vla-prune bench`` end to end on the tiny preset: the report's rows and keys, and what they mean."""
import json

import pytest

from vla_prune_ros import cli

ROW_KEYS = {'latency_speedup', 'flops_ratio', 'efficiency', 'pruning_share', 'efficiency_ceiling', 'llm_gflops'}


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'bench.json'
    assert cli.main(['bench', '--preset', 'tiny', '--methods', 'specprune,lightvla', '--frames', '2',
                     '--warmup', '1', '--threads', '1', '--json', str(out)]) == 0
    return json.loads(out.read_text())


def test_every_row_has_the_ratio_keys_and_the_paper_points_are_there(report):
    rows = report['methods']
    assert set(rows) == {'none', 'specprune', 'lightvla', 'specprune@paper', 'lightvla@paper'}
    for label, row in rows.items():
        assert ROW_KEYS <= set(row), label
    assert rows['none']['efficiency'] == pytest.approx(1.0)
    assert rows['none']['efficiency_ceiling'] == pytest.approx(1.0)
    assert report['meta']['command'].startswith('vla-prune bench --preset tiny')


def test_ratios_follow_from_the_measured_times_and_flops(report):
    rows = report['methods']
    base = rows['none']
    for label, row in rows.items():
        speedup = base['latency_ms'] / row['latency_ms']
        assert row['latency_speedup'] == pytest.approx(speedup), label
        assert row['efficiency'] == pytest.approx(speedup * row['gflops'] / base['gflops']), label
        # The ceiling: none's unpruned stages plus an LLM exactly proportional to its FLOPs, pruning free.
        ideal = base['latency_ms'] - base['llm_ms'] + base['llm_ms'] * row['llm_gflops'] / base['llm_gflops']
        assert row['efficiency_ceiling'] == pytest.approx(base['latency_ms'] / ideal * row['gflops'] / base['gflops'])
        assert 0 < row['llm_gflops'] <= row['gflops']
    # Below 1 whenever the unpruned stages cost more time per FLOP than the LLM; preprocessing alone has
    # no FLOPs and real time, so on the tiny preset they always do.
    assert rows['lightvla@paper']['llm_gflops'] < base['llm_gflops']
    assert rows['lightvla@paper']['efficiency_ceiling'] < 1.0
