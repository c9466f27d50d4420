"""``vla-prune eval``: closed-loop success per method on seeded simulated episodes (see ``vla_prune_ros.evaluation``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_checkpoint_argument, add_device_argument, add_methods_argument, command_line, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_methods_argument(parser, 'none,specprune,lightvla',
                         help='comma-separated; METHOD=CHECKPOINT uses another checkpoint for that method')
    add_checkpoint_argument(parser)
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tasks', default='', help='comma-separated task kinds (default: all)')
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--execute-steps', type=int, default=0, help='steps of each chunk executed (0 = all)')
    add_device_argument(parser)
    parser.add_argument('--through-ros', action='store_true',
                        help='run the episodes through vla_prune_node and vla_prune_sim over DDS')
    parser.add_argument('--json', help='write results here (plus .md table and .png plot beside it)')


def main(args: argparse.Namespace) -> int:
    from ..evaluation import episode_plan, evaluate, plot, table
    args.command = command_line('eval', args)
    if args.through_ros:
        from ..sim.ros_episodes import run_through_ros
        from ..sim.tasks import TASK_KINDS
        tasks = args.tasks.split(',') if args.tasks else list(TASK_KINDS)
        report = run_through_ros(args.methods.split(','), Path(args.checkpoint),
                                 episode_plan(tasks, args.episodes, args.seed), args.command)
    else:
        report = evaluate(args)
    text = table(report)
    print(text)
    write_report(report, args.json, text, plot)
    return 0
