"""Does vla_prune_node keep up with a robot's sensor rates? (issue 10, "Intake that costs almost nothing")

One node process (the bundled policy's architecture with 3 cameras, torch_threads 1, max_input_age 0.5 s),
driven over DDS by a sensor publisher process, measured from a probe client:

  light  3 cameras 640x480 rgb8 at 5 Hz, joint_states at 5 Hz: the latency baseline ("no sensor load")
  heavy  3 cameras 640x480 rgb8 at 30 Hz, joint_states at 500 Hz:
           idle  node CPU and the receive rate per topic (the node's /diagnostics) with no goal
           goal  node CPU, latency, and how long the sample each inference used had waited (age_at_inference)
  light  again, so background drift cannot pass for load

Targets: idle CPU <= 30 % of a core; every topic's newest message reaches the policy within one period
of that topic; latency under load <= 1.15 x unloaded; no stale-input abort.

    flock /work/cpu.lock .venv/bin/python benchmarks/intake.py      # writes benchmarks/intake.{json,md}
"""
from __future__ import annotations

import argparse
import sys
import statistics
import tempfile
import time
from pathlib import Path

import sensor_load as load

HERE = Path(__file__).resolve().parent
CAMERAS, WIDTH, HEIGHT = 3, 640, 480
CONTROL_DT = 0.02           # 8 steps = 160 ms consumed per chunk (the node feeds the frame ring every step)


def measure_goal(probe, node, chunks: int) -> dict:
    cpu0, start = load.cpu_seconds(node.pid), time.monotonic()
    result, took = probe.run_goal(max_chunks=chunks)
    cpu1, end = load.cpu_seconds(node.pid), time.monotonic()
    time.sleep(1.5)            # the last /diagnostics of the goal
    latencies = probe.latencies_since(start, end + 0.5)
    ages: dict[str, list[float]] = {}
    for values in probe.diagnostics_since(start):
        for key, value in values.items():
            if key.endswith(' age_at_inference_ms'):
                ages.setdefault(key[:-len(' age_at_inference_ms')], []).append(float(value))
    return {'status': int(result.status), 'chunk_limit': result.status == result.STATUS_CHUNK_LIMIT,
            'reason': result.reason, 'chunks': int(result.chunks_executed),
            'seconds': took, 'cpu_percent': 100.0 * (cpu1 - cpu0) / (end - start),
            'latency_p50_ms': 1e3 * statistics.median(latencies) if latencies else None,
            'latency_mean_ms': 1e3 * statistics.fmean(latencies) if latencies else None,
            'inferences': len(latencies),
            'age_at_inference_ms': {topic: {'median': statistics.median(v), 'max': max(v), 'samples': len(v)}
                                    for topic, v in ages.items()}}


def measure_idle(probe, node, seconds: float) -> dict:
    cpu0, start = load.cpu_seconds(node.pid), time.monotonic()
    time.sleep(seconds)
    cpu1, end = load.cpu_seconds(node.pid), time.monotonic()
    rates: dict[str, list[float]] = {}
    for values in probe.diagnostics_since(start + 2.5):       # the node's rate window is 2 s
        for key, value in values.items():
            if key.endswith(' rate_hz'):
                rates.setdefault(key[:-len(' rate_hz')], []).append(float(value))
    return {'seconds': end - start, 'cpu_percent': 100.0 * (cpu1 - cpu0) / (end - start),
            'receive_rate_hz': {topic: statistics.median(v) for topic, v in rates.items()}}


def phase(domain, probe, node, directory, camera_rate, joint_rate, chunks, idle_seconds, name, size):
    publisher = load.start_publisher(domain, CAMERAS, camera_rate, joint_rate, *size, directory / f'publisher_{name}.log')
    try:
        time.sleep(1.0)
        probe.wait_inputs(['/' + t for t in load.camera_topics(CAMERAS)])
        time.sleep(3.0)         # rates settle over the node's 2 s window
        idle = measure_idle(probe, node, idle_seconds) if idle_seconds else None
        goal = measure_goal(probe, node, chunks)
    finally:
        publisher.stop()
    return {'camera_rate_hz': camera_rate, 'joint_rate_hz': joint_rate, 'idle': idle, 'goal': goal}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--chunks', type=int, default=100)
    parser.add_argument('--idle-seconds', type=float, default=20.0)
    parser.add_argument('--domain', type=int, default=61)
    parser.add_argument('--out', type=Path, default=HERE / 'intake')
    parser.add_argument('--camera-rate', type=float, default=30.0, help='heavy phase (the target is stated for 30)')
    parser.add_argument('--joint-rate', type=float, default=500.0, help='heavy phase (the target is stated for 500)')
    parser.add_argument('--size', type=int, nargs=2, default=(WIDTH, HEIGHT), metavar=('W', 'H'))
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix='intake_'))
    checkpoint = load.make_checkpoint(directory / 'policy3', CAMERAS)
    node = load.start_node(args.domain, checkpoint, CAMERAS, directory / 'node.log', control_dt=CONTROL_DT)
    probe = load.Probe(args.domain)
    try:
        probe.wait_ready()
        light = phase(args.domain, probe, node, directory, 5.0, 5.0, args.chunks, 0, 'light1', args.size)
        heavy = phase(args.domain, probe, node, directory, args.camera_rate, args.joint_rate, args.chunks,
                      args.idle_seconds, 'heavy', args.size)
        light2 = phase(args.domain, probe, node, directory, 5.0, 5.0, args.chunks, 0, 'light2', args.size)
    finally:
        probe.close()
        code = node.stop()
    unloaded = statistics.fmean([light['goal']['latency_p50_ms'], light2['goal']['latency_p50_ms']])
    loaded = heavy['goal']['latency_p50_ms']
    periods = {**{f'/{t}': 1e3 / args.camera_rate for t in load.camera_topics(CAMERAS)},
               '/joint_states': 1e3 / args.joint_rate}
    ages = heavy['goal']['age_at_inference_ms']
    within = {topic: ages[topic]['median'] <= periods[topic] for topic in periods if topic in ages}
    targets = {
        'idle_cpu_le_30_percent': heavy['idle']['cpu_percent'] <= 30.0,
        'newest_message_within_one_period (median age at inference)': bool(within) and all(within.values()),
        'latency_under_load_le_1.15x': loaded <= 1.15 * unloaded,
        'no_stale_abort': heavy['goal']['chunk_limit'],
    }
    results = {'command': ' '.join(['flock /work/cpu.lock .venv/bin/python benchmarks/intake.py'] + sys.argv[1:]),
               'date': time.strftime('%Y-%m-%d %H:%M:%S'), 'cameras': f'{CAMERAS} x {args.size[0]}x{args.size[1]} rgb8',
               'heavy_rates_hz': {'cameras': args.camera_rate, 'joint_states': args.joint_rate},
               'executor': 'SingleThreadedExecutor (ROS callbacks) + one goal-runner thread, torch_threads 1',
               'light_before': light, 'heavy': heavy, 'light_after': light2,
               'latency_unloaded_p50_ms': unloaded, 'latency_loaded_p50_ms': loaded,
               'latency_ratio': loaded / unloaded, 'topic_periods_ms': periods, 'targets': targets,
               'node_exit_code': code}
    rate_rows = '\n'.join(f'| `{topic}` | {rate:.1f} | {periods.get(topic, float("nan")):.1f} | '
                          f'{ages.get(topic, {}).get("median", float("nan")):.2f} | '
                          f'{ages.get(topic, {}).get("max", float("nan")):.2f} |'
                          for topic, rate in sorted(heavy['idle']['receive_rate_hz'].items()))
    markdown = f"""# Intake benchmark (issue 10)

`{results['command']}` — {results['date']}; {results['cameras']} at {args.camera_rate:g} Hz + joint_states at
{args.joint_rate:g} Hz over DDS
(Fast DDS profile `config/fastdds_large_frames.xml`); {results['executor']}.

| | node CPU (% of a core) | latency p50 (ms) | inferences | goal ended |
|---|---|---|---|---|
| light load (5 Hz), before | {light['goal']['cpu_percent']:.1f} (goal) | {light['goal']['latency_p50_ms']:.2f} | {light['goal']['inferences']} | {light['goal']['reason']} |
| heavy load, idle | **{heavy['idle']['cpu_percent']:.1f}** | | | |
| heavy load, goal | {heavy['goal']['cpu_percent']:.1f} | **{loaded:.2f}** | {heavy['goal']['inferences']} | {heavy['goal']['reason']} |
| light load (5 Hz), after | {light2['goal']['cpu_percent']:.1f} (goal) | {light2['goal']['latency_p50_ms']:.2f} | {light2['goal']['inferences']} | {light2['goal']['reason']} |

Latency under load / unloaded (mean of the two light runs): **{loaded / unloaded:.3f}**

| topic | received (Hz, idle, heavy) | period (ms) | age at inference, median (ms) | max (ms) |
|---|---|---|---|---|
{rate_rows}

Targets: {', '.join(f'{name}: {"PASS" if ok else "FAIL"}' for name, ok in targets.items())}
"""
    load.write_results(args.out, results, markdown)
    return 0 if all(targets.values()) else 1


if __name__ == '__main__':
    raise SystemExit(main())
