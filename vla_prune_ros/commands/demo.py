"""``vla-prune demo``: the whole job on a simulated robot, over real DDS.

Starts ``vla_prune_sim`` (MuJoCo arm: cameras, joint states, URDF) and ``vla_prune_node`` (the
bundled default policy) as separate processes, then acts as the user: resets scenes, sends
instructions as ``RunInstruction`` goals, switches the pruning method live through
``set_parameters`` (what ``ros2 param set`` calls), prints one line per chunk and a summary,
writes a GIF of an episode and records the run to a rosbag2 (MCAP).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..evaluation import summarise
from ..sim.ros_episodes import DEMO_EPISODES, default_plan, run_episodes
from .common import add_checkpoint_argument, add_methods_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_methods_argument(parser, 'none,specprune,lightvla')
    add_checkpoint_argument(parser)
    parser.add_argument('--out', default='runs/demo', help='logs, GIF and bag go here')
    parser.add_argument('--no-record', action='store_true')


def main(args: argparse.Namespace) -> int:
    out = Path(args.out) / time.strftime('%Y%m%d-%H%M%S')
    out.mkdir(parents=True, exist_ok=True)
    print(f'vla_prune_ros demo: simulated arm + vla_prune_node over DDS (logs in {out})', flush=True)
    plan = default_plan(args.methods.split(','), Path(args.checkpoint))
    report, gif, bag = run_episodes(plan, list(DEMO_EPISODES), out, record=not args.no_record, gif=True)
    print('\nsummary')
    print(f"{'method':<14}{'episode':<44}{'result':<9}{'chunks':>7}{'latency ms':>12}{'tokens':>8}{'fine':>7}")
    for method, data in report.items():
        for e in data['episodes']:
            print(f"{method:<14}{e.instruction[:42]:<44}{'success' if e.success else 'failed':<9}{e.inferences:>7}"
                  f"{1000 * np.mean(e.latencies) if e.latencies else float('nan'):>12.1f}"
                  f"{np.mean(e.tokens) if e.tokens else float('nan'):>8.0f}"
                  f"{e.fine_steps / max(e.steps, 1):>7.0%}")
    print(f"\n{'method':<14}{'success':>9}{'mean latency ms':>17}{'vs none':>9}{'mean tokens':>13}"
          f"{'FLOPs ratio':>13}")
    rows = {method: summarise(data['episodes']) for method, data in report.items()}
    baseline = (rows.get('none') or {}).get('mean_latency_ms')
    for method, s in rows.items():
        latency = s['mean_latency_ms']
        ratio = f'{latency / baseline:.2f}x' if latency and baseline else '-'
        print(f"{method:<14}{s['successes']:>5}/{s['episodes']:<3}{latency or float('nan'):>17.1f}{ratio:>9}"
              f"{s['mean_tokens_kept'] or float('nan'):>13.0f}{s['flops_ratio'] or float('nan'):>13.2f}")
    if baseline:
        print('latency "vs none" is measured in this run, on this machine, with this policy: what pruning '
              'changed here, not a published figure')
    if gif:
        print(f'\nGIF of the first episode: {gif}')
    if bag:
        print(f'bag: {bag}  (ros2 bag info {bag})')
    return 0
