"""``vla-prune dataset from-bag BAG... --out DIR``: training data from the robot's own rosbag2 recordings.

Each bag (MCAP or sqlite3) becomes one episode, or one per instruction message; actions are the
measured TCP motion between control steps, in the simulator's and the node's convention (see
``vla_prune_ros.bag_dataset``). Topics, frames, joints and proprio come from the robot config the
node uses. Writes DIR (``vla-prune train --data DIR`` reads it) with ``dataset_statistics.json``
and ``conversion_report.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..paths import SIM_ROBOT_CONFIG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest='dataset_verb', required=True, metavar='from-bag')
    from_bag = verbs.add_parser('from-bag', help='rosbag2 recordings -> demonstrations',
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from_bag.add_argument('bags', nargs='+', metavar='BAG', help='rosbag2 bag directories')
    from_bag.add_argument('--out', required=True, help='demonstration directory to write (new or empty)')
    from_bag.add_argument('--robot-config', default=str(SIM_ROBOT_CONFIG),
                          help='the robot params file the node uses (and its vla_prune_dataset section)')
    from_bag.add_argument('--instruction', action='append', default=[],
                          help='the task instruction: once for every bag, or once per bag in order '
                               '(default: the instruction topic of each bag)')
    from_bag.add_argument('--urdf', help='URDF file (default: robot_description in the bag, else the robot config)')
    from_bag.add_argument('--control-dt', type=float, help='seconds per step (default: control_dt of the robot config)')
    from_bag.add_argument('--tolerance', type=float,
                          help='largest stamp distance (s) of a frame or joint state from its grid time '
                               '(default: 0.4 x control-dt)')
    from_bag.add_argument('--image-size', type=int, default=128, help='stored frames are resized to this square')
    from_bag.add_argument('--min-steps', type=int, default=8, help='shortest episode kept (one action chunk)')
    from_bag.add_argument('--max-step-factor', type=float, default=2.0,
                          help='a step moving more than this times the action bounds is a discontinuity: dropped')


def main(args: argparse.Namespace) -> int:
    from ..bag_dataset import RecordingConfig, convert_bags
    from ..bag_dataset.convert import ConversionError, report_text
    try:
        config = RecordingConfig.load(args.robot_config)
        report = convert_bags(args.bags, args.out, config, args.control_dt, args.tolerance, args.instruction,
                              args.urdf, args.image_size, args.min_steps, args.max_step_factor,
                              warn=lambda text: print(text, file=sys.stderr))
    except (ConversionError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(report_text(report, Path(args.out)))
    return 0
