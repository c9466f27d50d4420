"""What the ``vla-prune`` verbs share: common options and the report writer.

Each verb module has ``add_arguments(parser)`` and ``main(args) -> int``; its logic lives in the
library modules, importable without argparse (as ros2cli's verbs over their ``api``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Optional

from ..paths import DEFAULT_POLICY


def add_methods_argument(parser: argparse.ArgumentParser, default: str, help: Optional[str] = None) -> None:
    parser.add_argument('--methods', default=default, help=help)


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', default=str(DEFAULT_POLICY))


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--device', default='cpu')


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--compile', action='store_true',
                        help='run the LLM and SigLIP layers through torch.compile (VLAModel.use_compiled_layers); '
                             'the first calls compile')


def command_line(verb: str, args: argparse.Namespace) -> str:
    """The command as typed, for a report's ``meta``."""
    return f'vla-prune {verb} ' + ' '.join(getattr(args, 'argv', []))


def write_report(report: dict, path: Optional[str], table: Optional[str] = None,
                 plot: Optional[Callable[[dict, Path], None]] = None) -> None:
    """The report as JSON at ``path`` (nothing when None); with a table, ``.md`` beside it; with a plot, ``.png``."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    written = [out]
    if table is not None:
        out.with_suffix('.md').write_text(f"`{report['meta']['command']}`\n\n{table}\n")
        written.append(out.with_suffix('.md'))
    if plot is not None:
        plot(report, out.with_suffix('.png'))
        written.append(out.with_suffix('.png'))
    print('wrote ' + ', '.join(map(str, written)))
