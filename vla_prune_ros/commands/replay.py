"""``vla-prune replay BAG``: run every method over a recorded bag and compare with ``none`` (see
``vla_prune_ros.replay``)."""
from __future__ import annotations

import argparse

from ..paths import SIM_ROBOT_CONFIG
from .common import add_checkpoint_argument, add_device_argument, add_methods_argument, command_line, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bag')
    add_methods_argument(parser, 'none,specprune,lightvla')
    parser.add_argument('--instruction', required=True, help='the instruction the recorded run was given')
    add_checkpoint_argument(parser)
    parser.add_argument('--robot-config', default=str(SIM_ROBOT_CONFIG),
                        help='params file of the recorded robot (topics, ee_frame, proprio, controller)')
    parser.add_argument('--camera-topics', default='', help='comma-separated, model camera order '
                        '(default: camera_topics of the robot config)')
    parser.add_argument('--joint-states-topic', default='', help='default: from the robot config')
    parser.add_argument('--urdf', help='URDF file (default: /robot_description from the bag, else the sim arm)')
    parser.add_argument('--ee-frame', default='', help='default: from the robot config')
    parser.add_argument('--every', type=int, default=8, help='infer at every N-th frame of the first camera')
    add_device_argument(parser)
    parser.add_argument('--json', help='write the report here')


def main(args: argparse.Namespace) -> int:
    from ..replay import replay, table
    args.command = command_line('replay', args)
    report = replay(args)
    print(table(report))
    write_report(report, args.json)
    return 0
