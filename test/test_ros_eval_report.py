"""The through-ROS execution report (``sim.ros_eval``) without ROS: per-condition measures, the table
labels the added latency as emulated, the plot is written."""
from vla_prune_ros.evaluation import EpisodeResult, summarise
from vla_prune_ros.sim import ros_eval


def episode(seed, success, idle, dropped):
    result = EpisodeResult(seed, 'touch', 'touch the red cube', success, steps=40, inferences=5,
                           latencies=[0.1] * 5, tokens=[10] * 5, flops_ratios=[1.0] * 5)
    result.task_time_s = 4.0 if success else None
    result.idle_steps, result.dropped_steps = idle, dropped
    return result


def test_measures_table_and_plot(tmp_path):
    rows = {}
    for execution, idle, dropped in (('sync', 10, [0, 0]), ('async', 0, [2, 3])):
        for latency in (0.0, 0.3):
            episodes = [episode(1, True, idle, dropped), episode(2, False, idle, dropped)]
            measures = ros_eval.execution_measures(episodes)
            assert measures['idle_fraction'] == 2 * idle / 80 and measures['control_steps'] == 80
            rows[f'none | {execution} | +{latency:g} s'] = {'method': 'none', 'execution': execution,
                                                             'added_latency_s': latency, **summarise(episodes),
                                                             **measures}
    report = {'methods': rows, 'meta': {'command': 'vla-prune eval --through-ros'}}
    assert rows['none | async | +0.3 s']['dropped_steps_mean'] == 2.5
    text = ros_eval.table(report)
    assert 'emulated larger model' in text.splitlines()[0] and text.count('\n') == 5
    ros_eval.plot(report, tmp_path / 'plot.png')
    assert (tmp_path / 'plot.png').stat().st_size > 1000
