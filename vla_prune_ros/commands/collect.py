"""``vla-prune collect OUT``: scripted-expert demonstrations (see ``vla_prune_ros.sim.collect``)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..sim.tasks import TASK_KINDS
    parser.add_argument('out', help='output directory')
    parser.add_argument('--episodes', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tasks', default=','.join(TASK_KINDS), help='comma-separated task kinds')
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--noise-std', type=float, default=0.0,
                        help='expert action noise (m), recorded in the labels, for diversity')
    parser.add_argument('--perturb-std', type=float, default=0.0,
                        help='largest per-episode DART perturbation (m per step) of the executed action; '
                             'labels stay the clean expert action')
    parser.add_argument('--policy', help='checkpoint that drives each episode before the expert takes over '
                                         '(DAgger-style relabelling)')


def main(args: argparse.Namespace) -> int:
    from ..sim.collect import collect
    summary = collect(Path(args.out), args.episodes, args.seed, tuple(args.tasks.split(',')), args.image_size,
                      args.noise_std, perturb_std=args.perturb_std, policy_checkpoint=args.policy)
    print(f"wrote {summary['episodes']} episodes to {args.out}; expert succeeded in {summary['successes']}")
    return 0
