"""``vla-prune VERB ...``: the user's command line. Each verb is a module of ``vla_prune_ros.commands``."""
from __future__ import annotations

import argparse
import importlib
import sys

from .commands import VERBS


def usage() -> str:
    return 'usage: vla-prune VERB [options]\n\n' + '\n'.join(f'  {verb:<8}  {text}' for verb, text in VERBS.items())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"vla-prune: unknown command '{verb}'; choose one of {', '.join(VERBS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f'vla_prune_ros.commands.{verb}')
    parser = argparse.ArgumentParser(prog=f'vla-prune {verb}', description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(rest)
    except SystemExit as exit_request:     # --help or a usage error; argparse has printed why
        return int(exit_request.code or 0)
    args.argv = rest                       # the command as typed, for reports
    return int(module.main(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
