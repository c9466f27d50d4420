"""``vla-prune record OUT``: record live topics into a rosbag2 bag (readable by ``ros2 bag``) without the ROS CLI.

Stops on ``--duration``, SIGINT or SIGTERM, closes the bag cleanly and prints the message count per topic.
"""
from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from pathlib import Path

from ..data.rosbag import STORAGE_PLUGINS, BagRecorder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('output', metavar='OUT', help='bag directory to create (must not exist)')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC', help='topics to record (default: all)')
    parser.add_argument('--duration', type=float, default=None, help='stop after this many seconds')
    parser.add_argument('--storage', choices=sorted(STORAGE_PLUGINS), default='mcap')
    parser.add_argument('--discovery-timeout', type=float, default=10.0,
                        help='seconds to wait for the requested topics before starting')
    parser.add_argument('--queue-depth', type=int, default=100, help='subscription queue depth')


def main(args: argparse.Namespace) -> int:
    if args.duration is not None and not (args.duration > 0 and math.isfinite(args.duration)):
        print(f'error: --duration must be a positive number of seconds, got {args.duration}', file=sys.stderr)
        return 2
    if Path(args.output).exists():
        print(f'error: {args.output} exists already; choose a new bag directory', file=sys.stderr)
        return 1

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop_requested = threading.Event()
    previous_handlers = {}

    def request_stop(signum, frame):
        stop_requested.set()

    if threading.current_thread() is threading.main_thread():  # signal handlers only work there
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[signum] = signal.signal(signum, request_stop)

    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('vla_prune_recorder', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    recorder = BagRecorder(node, args.output, topics=args.topics, storage=args.storage,
                           discovery_timeout=args.discovery_timeout, queue_depth=args.queue_depth)
    try:
        print(f'recording to {args.output} ({args.storage})', flush=True)
        missing = recorder.start()
        print(f'subscribed to {len(recorder.counts)} topic(s): {" ".join(sorted(recorder.counts))}', flush=True)
        if missing:
            print(f'warning: not seen yet, still waiting for: {" ".join(missing)}', flush=True)
        started = time.monotonic()
        while not stop_requested.is_set():
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            executor.spin_once(timeout_sec=0.05)
    finally:
        counts = recorder.stop()
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()
        rclpy.shutdown(context=context)
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)

    for topic, reason in recorder.skipped.items():
        print(f'skipped {topic}: {reason}')
    for topic in recorder.missing_topics:
        print(f'never seen: {topic}')
    for topic, count in sorted(counts.items()):
        print(f'{topic}: {count} messages')
    print(f'total: {sum(counts.values())} messages in {args.output}', flush=True)
    return 0

