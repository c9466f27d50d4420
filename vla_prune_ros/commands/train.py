"""``vla-prune train``: fine-tune with LightVLA in the loop (accelerate; LoRA optional); see ``vla_prune_ros.training``."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training import build_parser
    build_parser(parser)


def main(args: argparse.Namespace) -> int:
    from ..training import train
    print(f'saved {train(args)}')
    return 0
