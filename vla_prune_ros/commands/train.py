"""``vla-prune train``: fine-tune with LightVLA in the loop (accelerate; LoRA optional); see ``vla_prune_ros.training``."""
from __future__ import annotations

import argparse

from ..data.demonstrations import FAR_TARGET_MM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data', required=True, nargs='+', help='demonstration directories (see vla_prune_ros.data)')
    parser.add_argument('--out', required=True, help='checkpoint directory to write')
    parser.add_argument('--init', help='checkpoint to fine-tune; omit to train the sim-small preset from scratch')
    parser.add_argument('--method', default='none', choices=['none', 'lightvla', 'lightvla_star'],
                        help='token selection in the loop (LightVLA trains through it)')
    parser.add_argument('--noise', default='uniform', choices=['uniform', 'gumbel'])
    parser.add_argument('--query-mode', default='add', choices=['add', 'replace'],
                        help="lightvla_star: learned queries 'add' to or 'replace' the free ones (saved with them)")
    parser.add_argument('--steps', type=int, default=3000)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--warmup', type=int, default=100)
    parser.add_argument('--lora-rank', type=int, default=0, help='0 = full fine-tuning')
    parser.add_argument('--image-size', type=int, default=112)
    parser.add_argument('--film', action='store_true',
                        help='from scratch only: FiLM the ViT with the instruction (OFT+), for language following')
    parser.add_argument('--max-episodes', type=int, default=None)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cpu', action='store_true', help='force CPU even where CUDA exists')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = leave as is)')
    parser.add_argument('--max-minutes', type=float, default=0, help='stop early and save after this long (0 = off)')
    parser.add_argument('--aux-weight', type=float, default=0.0,
                        help='weight of the training-only privileged-target loss (needs demos with privileged)')
    parser.add_argument('--pointing-weight', type=float, default=0.0,
                        help='weight of the training-only pointing loss: each patch token says whether the target '
                             'cube / goal is in its patch (needs privileged targets and camera_geometry)')
    parser.add_argument('--pointing-layer', type=int, default=0,
                        help='the pointing loss reads the patch states entering this LLM layer (0: after the last)')
    parser.add_argument('--patch-position-weight', type=float, default=0.0,
                        help='weight of the training-only patch-position loss: each patch token (at --pointing-layer) '
                             'regresses where its patch lies on the table (needs camera_geometry)')
    parser.add_argument('--far-sample-weight', type=float, default=1.0,
                        help=f'draw samples whose target is over {FAR_TARGET_MM} mm from the TCP this many times '
                             'as often '
                             '(needs privileged targets; 1 = uniform)')
    parser.add_argument('--sincos-positions', action='store_true',
                        help='from scratch: start the ViT position embeddings from a 2-D sin-cos table (learned after)')
    parser.add_argument('--ema', type=float, default=0.0, help='EMA decay of the saved weights (0 = off)')
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast')
    parser.add_argument('--checkpoint-minutes', type=float, default=5.0,
                        help='write OUT/resume.pt this often; the same command resumes from it')


def main(args: argparse.Namespace) -> int:
    from ..training import train
    print(f'saved {train(args)}')
    return 0
