"""Does vla_prune_node grow over time? (issue 10, "No growth")

Ten minutes of 3 cameras 640x480 rgb8 at 30 Hz and joint_states at 500 Hz, over DDS, with goals back to
back (each max_chunks 50, the next sent when one ends). Every 10 s: the node's threads, RSS, receive
rates and the p50 inference latency of that window.

Targets: threads constant after the first goal; RSS growth <= 5 MB after warm-up (the first 60 s);
p50 latency drift <= 10 % (the last minute against the first minute after warm-up).

    flock /work/cpu.lock .venv/bin/python benchmarks/soak.py      # writes benchmarks/soak.{json,md}
"""
from __future__ import annotations

import argparse
import json
import sys
import statistics
import tempfile
import threading
import time
from pathlib import Path

import sensor_load as load

HERE = Path(__file__).resolve().parent
CAMERAS, WIDTH, HEIGHT = 3, 640, 480
CONTROL_DT = 0.02
WARM_UP = 60.0


def summarize(results: dict) -> str:
    """Adds the measures and targets to ``results`` (from its samples) and returns the Markdown report.

    RSS is measured two ways: the trend (median of the last minute against the median of the first
    minute after warm-up), which the target is read on, and the strict max-minus-first, which also
    counts the few MB the frame buffers swing from one sample to the next.
    """
    samples, warm_up = results['samples'], results['warm_up_s']
    threads = sorted({s['threads'] for s in samples if s['goals_done'] >= 1})     # after the first goal ended
    warm = [s for s in samples if s['t'] > warm_up]
    span = min(60.0, (samples[-1]['t'] - warm_up) / 2)     # a minute, or half of what follows the warm-up
    first = [s for s in warm if s['t'] <= warm_up + span]
    last = [s for s in warm if s['t'] > samples[-1]['t'] - span]
    rss_trend = statistics.median(s['rss_mb'] for s in last) - statistics.median(s['rss_mb'] for s in first)
    rss_strict = max(s['rss_mb'] for s in warm) - warm[0]['rss_mb']
    slope = statistics.linear_regression([s['t'] for s in warm], [s['rss_mb'] for s in warm]).slope * 60.0
    drift = (statistics.median(s['latency_p50_ms'] for s in last if s['latency_p50_ms'])
             / statistics.median(s['latency_p50_ms'] for s in first if s['latency_p50_ms']) - 1.0)
    targets = {'threads_constant_after_first_goal': len(threads) == 1,
               'rss_growth_le_5_mb_after_warm_up (trend)': rss_trend <= 5.0,
               'p50_latency_drift_le_10_percent': abs(drift) <= 0.10}
    results.update(threads_after_first_goal=threads, rss_trend_mb=rss_trend, rss_max_minus_first_mb=rss_strict,
                   rss_slope_mb_per_min=slope, p50_latency_drift=drift, targets=targets)
    rows = '\n'.join(f"| {s['t']:.0f} | {s['threads']} | {s['rss_mb']:.1f} | {s['inferences']} | "
                     f"{s['latency_p50_ms'] or float('nan'):.2f} | "
                     f"{', '.join(f'{v:.0f}' for _, v in sorted(s['rates_hz'].items()))} |" for s in samples)
    return f"""# Soak benchmark (issue 10)

`{results['command']}` — {results['date']}; {results['load']}, goals back to back (max_chunks 50),
{results['seconds']:.0f} s; {results['goals']} goals: {results['goal_endings']}.

- threads after the first goal: {threads}
- RSS after the {warm_up:.0f} s warm-up: trend (median of the last {span:.0f} s minus the median of the first
  {span:.0f} s) **{rss_trend:+.2f} MB**; least-squares slope {slope:+.3f} MB/min; strict max minus first sample
  {rss_strict:.2f} MB (the samples swing by about ±4 MB with the frame buffers)
- p50 latency drift (last {span:.0f} s against the first {span:.0f} s after warm-up): **{100 * drift:+.1f} %**

Targets: {', '.join(f'{name}: {"PASS" if ok else "FAIL"}' for name, ok in targets.items())}

| t (s) | threads | RSS (MB) | inferences | p50 latency (ms) | receive rates (Hz: cam0, cam1, cam2, joint_states) |
|---|---|---|---|---|---|
{rows}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seconds', type=float, default=600.0)
    parser.add_argument('--interval', type=float, default=10.0)
    parser.add_argument('--domain', type=int, default=62)
    parser.add_argument('--out', type=Path, default=HERE / 'soak')
    parser.add_argument('--warm-up', type=float, default=WARM_UP, help='s before RSS and latency are compared')
    parser.add_argument('--camera-rate', type=float, default=30.0)
    parser.add_argument('--joint-rate', type=float, default=500.0)
    parser.add_argument('--size', type=int, nargs=2, default=(WIDTH, HEIGHT), metavar=('W', 'H'))
    parser.add_argument('--summarize', type=Path, help='only rewrite the report of a saved soak JSON')
    args = parser.parse_args()
    if args.summarize:
        results = json.loads(args.summarize.read_text())
        results.setdefault('warm_up_s', args.warm_up)
        load.write_results(args.summarize.with_suffix(''), results, summarize(results))
        return 0 if all(results['targets'].values()) else 1
    directory = Path(tempfile.mkdtemp(prefix='soak_'))
    checkpoint = load.make_checkpoint(directory / 'policy3', CAMERAS)
    node = load.start_node(args.domain, checkpoint, CAMERAS, directory / 'node.log', control_dt=CONTROL_DT)
    publisher = load.start_publisher(args.domain, CAMERAS, args.camera_rate, args.joint_rate, *args.size,
                                     directory / 'publisher.log')
    probe = load.Probe(args.domain)
    goals, stop = [], threading.Event()

    def back_to_back():
        while not stop.is_set():
            try:
                result, took = probe.run_goal(max_chunks=50)
                goals.append((time.monotonic(), int(result.status), result.reason, took))
            except Exception as error:  # noqa: BLE001 - recorded, and the soak goes on
                goals.append((time.monotonic(), -1, repr(error), 0.0))

    samples = []
    try:
        probe.wait_ready()
        probe.wait_inputs(['/' + t for t in load.camera_topics(CAMERAS)])
        started = time.monotonic()
        runner = threading.Thread(target=back_to_back, daemon=True)
        runner.start()
        window = started
        while time.monotonic() - started < args.seconds:
            time.sleep(args.interval)
            now = time.monotonic()
            proc = load.status(node.pid)
            latencies = probe.latencies_since(window, now)
            samples.append({'t': round(now - started, 1), 'threads': proc['Threads'], 'rss_mb': proc['VmRSS'] / 1024,
                            'inferences': len(latencies),
                            'latency_p50_ms': 1e3 * statistics.median(latencies) if latencies else None,
                            'goals_done': len(goals), 'rates_hz': probe.latest_rates()})
            print(samples[-1], flush=True)
            window = now
        stop.set()
        runner.join(120)
    finally:
        probe.close()
        publisher.stop()
        code = node.stop()
    statuses: dict[str, int] = {}
    for _, status, reason, _ in goals:     # every ending but the chunk limit is listed by its reason
        key = 'CHUNK_LIMIT' if status == probe.RunInstruction.Result.STATUS_CHUNK_LIMIT else reason
        statuses[key] = statuses.get(key, 0) + 1
    results = {'command': ' '.join(['flock /work/cpu.lock .venv/bin/python benchmarks/soak.py'] + sys.argv[1:]),
               'date': time.strftime('%Y-%m-%d %H:%M:%S'), 'seconds': args.seconds, 'warm_up_s': args.warm_up,
               'load': f'{CAMERAS} x {args.size[0]}x{args.size[1]} rgb8 at {args.camera_rate:g} Hz + joint_states at '
                       f'{args.joint_rate:g} Hz',
               'goals': len(goals), 'goal_endings': statuses,
               'samples': samples, 'node_exit_code': code}
    markdown = summarize(results)
    load.write_results(args.out, results, markdown)
    return 0 if all(results['targets'].values()) else 1


if __name__ == '__main__':
    raise SystemExit(main())
