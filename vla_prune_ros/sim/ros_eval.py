"""``vla-prune eval --through-ros``: the eval episodes through ``vla_prune_node`` and ``vla_prune_sim``
over DDS, per method, execution mode (``sync`` / ``async``) and added latency.

The added latency is a sleep inside every policy call (node parameter ``added_latency``): it emulates
a larger model on the robot's computer, so every table and plot labels it as such. Per row:
``success_rate``, ``mean_task_time_s`` (control steps from the first executed action to success,
idle ones included, times dt; successes only), ``idle_fraction`` (control steps with nothing due over
all steps), ``boundary_jump`` (mean change of the commanded translation where the executed steps pass
from one chunk to the next), ``mean_latency_ms`` (added latency included) and ``dropped_steps_mean``
(expired steps dropped per chunk).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..evaluation import summarise
from .ros_episodes import default_plan, run_episodes

LATENCY_LABEL = 'added latency (s, emulated larger model)'


def run_through_ros(methods: list[str], checkpoint: Path, episodes: list[tuple[str, int]], command: str,
                    executions: list[str] = ('sync',), added_latencies: list[float] = (0.0,)) -> dict:
    out = Path(tempfile.mkdtemp(prefix='vla_prune_eval_'))
    conditions = [(execution, latency) for latency in added_latencies for execution in executions]
    report, _, _ = run_episodes(default_plan(methods, checkpoint), episodes, out, record=False, gif=False,
                                quiet=True, conditions=conditions)
    rows = {}
    for label, entry in report.items():
        baseline = next((e['episodes'] for e in report.values() if e['method'] == 'none'
                         and e['execution'] == entry['execution'] and e['added_latency_s'] == entry['added_latency_s']),
                        None)
        rows[label] = {key: entry[key] for key in ('method', 'execution', 'added_latency_s', 'checkpoint')}
        rows[label].update(summarise(entry['episodes'], baseline))
        rows[label].update(execution_measures(entry['episodes']))
        rows[label]['per_episode'] = [{'task': e.task, 'seed': e.seed, 'success': e.success,
                                       'task_time_s': e.task_time_s, 'control_steps': e.steps,
                                       'idle_steps': e.idle_steps}
                                      for e in entry['episodes']]
    return {'methods': rows, 'meta': {'command': command, 'through_ros': True, 'logs': str(out),
                                      'episodes': [list(e) for e in episodes],
                                      'chunk_seconds': chunk_seconds(checkpoint)}}


def chunk_seconds(checkpoint: Path) -> float:
    """How long one chunk of the policy lasts on the simulated arm (chunk length x control_dt)."""
    from ..model.checkpoint import load_config
    from ..parameters import sim_robot_parameters
    return load_config(checkpoint).chunk_len * float(sim_robot_parameters()['control_dt'])


def execution_measures(episodes) -> dict:
    steps = sum(e.steps for e in episodes)
    dropped = [d for e in episodes for d in e.dropped_steps]
    return {'idle_fraction': sum(e.idle_steps for e in episodes) / max(steps, 1),
            'dropped_steps_mean': float(np.mean(dropped)) if dropped else None,
            'control_steps': steps}


def _cell(value, scale: float = 1.0, digits: int = 2) -> str:
    return '–' if value is None else f'{scale * value:.{digits}f}'


def table(report: dict) -> str:
    lines = [f'| method | execution | {LATENCY_LABEL} | success | task time s | idle fraction | boundary jump mm | '
             'latency ms | dropped steps / chunk | control steps |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for row in report['methods'].values():
        lines.append(f"| {row['method']} | {row['execution']} | {row['added_latency_s']:g} | "
                     f"{row['successes']}/{row['episodes']} ({100 * row['success_rate']:.0f} %) | "
                     f"{_cell(row['mean_task_time_s'])} | {_cell(row['idle_fraction'], 1, 3)} | "
                     f"{_cell(row['boundary_jump'], 1000, 1)} | {_cell(row['mean_latency_ms'], 1, 1)} | "
                     f"{_cell(row['dropped_steps_mean'])} | {row['control_steps']} |")
    return '\n'.join(lines)


def plot(report: dict, path: Path) -> None:
    """Task time and idle fraction against the added latency, sync vs async, per method."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, (time_axis, idle_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    series: dict[tuple[str, str], list] = {}
    for row in report['methods'].values():
        series.setdefault((row['method'], row['execution']), []).append(row)
    styles = {'sync': ('--', 's'), 'async': ('-', 'o'), 'async+weighted_average': ('-.', '^'),
              'async+temporal_ensemble': (':', 'D')}
    for (method, execution), rows in series.items():
        rows.sort(key=lambda r: r['added_latency_s'])
        latencies = [r['added_latency_s'] for r in rows]
        line, marker = styles.get(execution, ('-', 'x'))
        label = f'{method} {execution}'
        times = [np.nan if r['mean_task_time_s'] is None else r['mean_task_time_s'] for r in rows]
        drawn = time_axis.plot(latencies, times, linestyle=line, marker=marker, label=label)[0]
        for latency, value, row in zip(latencies, times, rows):     # a mean over successes: say how many
            if not np.isnan(value):
                time_axis.annotate(f"{row['successes']}/{row['episodes']}", (latency, value), fontsize=7,
                                   color=drawn.get_color(), textcoords='offset points', xytext=(4, 4))
        idle_axis.plot(latencies, [r['idle_fraction'] for r in rows], linestyle=line, marker=marker, label=label)
    chunk = report['meta'].get('chunk_seconds')
    if chunk:       # what sync idles when every chunk waits for one inference
        measured = sorted({(r['added_latency_s'], r['mean_latency_ms'] / 1000) for r in report['methods'].values()
                           if r['execution'] == 'sync' and r['mean_latency_ms'] is not None})
        if measured:
            idle_axis.plot([a for a, _ in measured], [lat / (chunk + lat) for _, lat in measured], color='grey',
                           linewidth=1, label=f'latency / ({chunk:g} s chunk + latency)')
    if not any(r['mean_task_time_s'] is not None for r in report['methods'].values()):
        time_axis.text(0.5, 0.5, 'no successful episode', ha='center', va='center', transform=time_axis.transAxes)
    time_axis.set_ylabel('mean task time of successes (s); n/N solved')
    idle_axis.set_ylabel('idle fraction (nothing due)')
    for axis in (time_axis, idle_axis):
        axis.set_xlabel(LATENCY_LABEL)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    idle_axis.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
