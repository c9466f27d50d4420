"""``vla-prune collect OUT``: scripted-expert demonstrations (see ``vla_prune_ros.sim.collect``)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..sim.collect import build_parser
    build_parser(parser)


def main(args: argparse.Namespace) -> int:
    from ..sim.collect import collect
    summary = collect(Path(args.out), args.episodes, args.seed, tuple(args.tasks.split(',')), args.image_size,
                      args.noise_std)
    print(f"wrote {summary['episodes']} episodes to {args.out}; expert succeeded in {summary['successes']}")
    return 0
