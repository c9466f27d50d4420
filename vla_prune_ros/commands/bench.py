"""``vla-prune bench``: same-run latency / tokens / FLOPs of every method against ``none`` (see
``vla_prune_ros.benchmark``)."""
from __future__ import annotations

import argparse

from .common import add_compile_argument, add_device_argument, add_methods_argument, command_line, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--preset', default='oft-scaled', choices=['oft-scaled', 'oft-32', 'tiny'])
    add_methods_argument(parser, 'none,specprune,lightvla,lightvla_star')
    parser.add_argument('--frames', type=int, default=8, help='measured frames per method')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--attn', default='sdpa', choices=['sdpa', 'eager'])
    parser.add_argument('--threads', type=int, default=0)
    add_device_argument(parser)
    add_compile_argument(parser)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-paper-points', action='store_true', help='skip the forced paper operating points')
    parser.add_argument('--json', help='write the results here')


def main(args: argparse.Namespace) -> int:
    from ..benchmark import run, table
    args.command = command_line('bench', args)
    if 'none' not in args.methods.split(','):
        args.methods = 'none,' + args.methods
    results = run(args)
    print(table(results))
    meta = results['meta']
    print(f"\npreset {meta['preset']}: {meta['llm_layers']} LLM layers, {meta['parameters'] / 1e6:.1f}M parameters, "
          f"{meta['sequence_length']} tokens, {meta['fine_inferences']}/{meta['inferences']} inferences in fine, "
          f"vision {100 * meta['vision_flops_share']:.1f}% of FLOPs, {meta['torch_threads']} threads, "
          f"median of {meta['frames']} frames after {meta['warmup']} warm-up")
    write_report(results, args.json)
    return 0
