"""``vla-prune eval``: closed-loop success per method on seeded simulated episodes (see ``vla_prune_ros.evaluation``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import (add_checkpoint_argument, add_compile_argument, add_device_argument, add_methods_argument,
                     command_line, write_report)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_methods_argument(parser, 'none,specprune,lightvla',
                         help='comma-separated; METHOD=CHECKPOINT uses another checkpoint for that method')
    add_checkpoint_argument(parser)
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--seeds', default='',
                        help='comma-separated scene seeds instead of the plan from --seed/--episodes (tasks in turn)')
    parser.add_argument('--tasks', default='', help='comma-separated task kinds (default: all)')
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--execute-steps', type=int, default=0, help='steps of each chunk executed (0 = all)')
    add_device_argument(parser)
    add_compile_argument(parser)
    parser.add_argument('--through-ros', action='store_true',
                        help='run the episodes through vla_prune_node and vla_prune_sim over DDS')
    parser.add_argument('--execution', default='sync',
                        help='--through-ros: comma-separated execution modes of the node: sync, async (latest_only), '
                             'async+weighted_average, async+temporal_ensemble')
    parser.add_argument('--added-latency', default='0',
                        help='--through-ros: comma-separated seconds of sleep inside every policy call, '
                             'emulating a larger model (labelled so in the tables)')
    parser.add_argument('--json', help='write results here (plus .md table and .png plot beside it)')


def main(args: argparse.Namespace) -> int:
    from ..evaluation import episode_plan, evaluate, plot, table
    args.command = command_line('eval', args)
    if args.through_ros:
        if args.compile:
            raise SystemExit('--compile: the in-process loop only (the node loads its own policy)')
        from ..control.chunk_queue import AGGREGATIONS
        from ..sim import ros_eval
        from ..sim.tasks import TASK_KINDS
        tasks = args.tasks.split(',') if args.tasks else list(TASK_KINDS)
        executions = args.execution.split(',')
        known = {'sync', 'async'} | {f'async+{mode}' for mode in AGGREGATIONS}
        if not set(executions) <= known:
            raise SystemExit(f'--execution: {args.execution!r}: give some of {sorted(known)}')
        latencies = [float(value) for value in args.added_latency.split(',')]
        if any(not 0.0 <= value <= 10.0 for value in latencies):
            raise SystemExit('--added-latency: each value must be in [0, 10] s')
        plan = episode_plan(tasks, args.episodes, args.seed)
        if args.seeds:
            seeds = [int(seed) for seed in args.seeds.split(',')]
            plan = [(tasks[i % len(tasks)], seed) for i, seed in enumerate(seeds)]
        report = ros_eval.run_through_ros(args.methods.split(','), Path(args.checkpoint), plan, args.command,
                                          executions, latencies)
        table, plot = ros_eval.table, ros_eval.plot
    else:
        if args.execution != 'sync' or args.added_latency != '0' or args.seeds:
            raise SystemExit('--execution, --added-latency and --seeds need --through-ros '
                             '(the in-process loop is sync)')
        report = evaluate(args)
    text = table(report)
    print(text)
    write_report(report, args.json, text, plot)
    return 0
