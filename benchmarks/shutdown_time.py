"""How long vla_prune_node takes to exit after Ctrl-C, idle, with one busy loop per core beside it.

    .venv/bin/python benchmarks/shutdown_time.py --runs 4 > benchmarks/shutdown_time.txt

The test fixtures give a node 10 s after SIGINT before they kill it. Under load a node once took
10-20 s (5.8-9.5 s in the A/B below), most of it in the interpreter's final garbage collection (py-spy: gc_collect_main); the node now
moves its startup objects out of the collector (gc.freeze in node.server.main).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))
from ros_helpers import make_checkpoint, start_node, start_publisher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=4)
    parser.add_argument('--domain', type=int, default=81)
    args = parser.parse_args()
    checkpoint = make_checkpoint(Path(tempfile.mkdtemp()) / 'tiny')
    load = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(os.cpu_count() or 1)]
    publisher = start_publisher(args.domain, rate=30.0, size=64, wrist=False)
    seconds = []
    try:
        for _ in range(args.runs):
            node = start_node(args.domain, {'checkpoint': str(checkpoint), 'device': 'cpu', 'torch_threads': 1})
            assert node.wait_for('ready: method', timeout=120), node.lines[-5:]
            time.sleep(1.0)
            started = time.monotonic()
            node.popen.send_signal(signal.SIGINT)
            code = node.popen.wait(60)
            seconds.append(time.monotonic() - started)
            print(f'exit code {code} after {seconds[-1]:.1f} s', flush=True)
    finally:
        publisher.stop()
        for process in load:
            process.kill()
    print(f'{len(seconds)} runs beside {len(load)} busy loops: exit after Ctrl-C in '
          f'{min(seconds):.1f}-{max(seconds):.1f} s (median {sorted(seconds)[len(seconds) // 2]:.1f} s)')


if __name__ == '__main__':
    main()
