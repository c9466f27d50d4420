"""What benchmarks/intake.py and benchmarks/soak.py share: a robot-rate sensor publisher process, the
node process, and a probe client (goals, /inference_stats, /diagnostics), all over real DDS.

The publisher sends N cameras of W x H rgb8 (prebuilt frames, only the stamp changes, so the publisher
costs as little as rclpy allows) and the simulated arm's joint states (joint 1 turning). Every process
gets config/fastdds_large_frames.xml: 640x480 rgb8 frames are 0.9 MB, beyond the default transport.
Run as ``python benchmarks/sensor_load.py publish --cameras 3 --camera-rate 30 --joint-rate 500``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / 'config' / 'fastdds_large_frames.xml'
SIM_ROBOT = REPO / 'config' / 'sim_robot.yaml'
ARM = [f'joint{i}' for i in range(1, 7)] + ['finger_left_joint', 'finger_right_joint']
HOME = [0.0, 0.3, 1.6, 0.0, 1.24, 0.0, 0.02, 0.02]
INSTRUCTION = 'touch the red cube'


def camera_topics(count: int) -> list[str]:
    return [f'camera/cam{i}/image_raw' for i in range(count)]


def environment(domain: int) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
               FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE))
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    return env


def make_checkpoint(directory: Path, cameras: int) -> Path:
    """The bundled default policy's architecture with ``cameras`` cameras (random weights: intake and
    latency do not depend on what the weights learned)."""
    import torch
    from vla_prune_ros.model.checkpoint import load_config, save_checkpoint
    from vla_prune_ros.model.modeling_vla import VLAModel
    from vla_prune_ros.model.tokenizer import load_tokenizer
    from vla_prune_ros.paths import DEFAULT_POLICY
    config = load_config(DEFAULT_POLICY)
    config.camera_names = [f'cam{i}' for i in range(cameras)]
    torch.manual_seed(0)
    save_checkpoint(VLAModel(config).eval(), load_tokenizer(DEFAULT_POLICY), directory)
    return directory


class Process:
    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = open(log, 'w')
        self.popen = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(REPO))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(2)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.log.close()
        return self.popen.returncode


def start_publisher(domain: int, cameras: int, camera_rate: float, joint_rate: float, width: int, height: int,
                    log: Path) -> Process:
    return Process([sys.executable, __file__, 'publish', '--cameras', str(cameras), '--camera-rate', str(camera_rate),
                    '--joint-rate', str(joint_rate), '--width', str(width), '--height', str(height)],
                   environment(domain), log)


def start_node(domain: int, checkpoint: Path, cameras: int, log: Path, **params) -> Process:
    values = {'checkpoint': str(checkpoint), 'device': 'cpu', 'torch_threads': 1, 'max_input_age': 0.5,
              'camera_topics': camera_topics(cameras),
              # per-camera lists must match the camera count (validated for every method at start)
              'specprune.topk_coarse': [16] + [12] * (cameras - 1), 'specprune.topk_fine': [25] + [19] * (cameras - 1),
              **params}
    args = [sys.executable, '-m', 'vla_prune_ros.node', '--ros-args', '--params-file', str(SIM_ROBOT)]
    for name, value in values.items():
        text = ('[' + ','.join(map(str, value)) + ']') if isinstance(value, list) else str(value)
        args += ['-p', f'{name}:={text}']
    return Process(args, environment(domain), log)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def status(pid: int) -> dict:
    """Threads and VmRSS (kB) from /proc/<pid>/status."""
    values = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        key, _, value = line.partition(':')
        if key in ('Threads', 'VmRSS'):
            values[key] = int(value.split()[0])
    return values


class Probe:
    """The benchmark's own rclpy node: goals, /inference_stats and /diagnostics, spun in a thread."""

    def __init__(self, domain: int):
        os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE))
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.action import ActionClient
        from rclpy.executors import SingleThreadedExecutor
        from vla_prune_interfaces.action import RunInstruction
        from vla_prune_interfaces.msg import InferenceStats
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node('benchmark_probe', context=self.context)
        self.RunInstruction = RunInstruction
        self.action = ActionClient(self.node, RunInstruction, 'run_instruction')
        self.lock = threading.Lock()
        self.stats: list[tuple[float, object]] = []
        self.diagnostics: list[tuple[float, dict]] = []
        self.node.create_subscription(InferenceStats, 'inference_stats', self._on_stats, 100)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_stats(self, msg):
        with self.lock:
            self.stats.append((time.monotonic(), msg))

    def _on_diagnostics(self, msg):
        values = {kv.key: kv.value for status in msg.status for kv in status.values}
        with self.lock:
            self.diagnostics.append((time.monotonic(), values))

    def wait_ready(self, timeout: float = 180.0) -> None:
        if not self.action.wait_for_server(timeout_sec=timeout):
            raise RuntimeError('the node never came up (see its log)')

    def wait_inputs(self, topics: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rates = self.latest_rates()
            if rates and all(rates.get(t, 0.0) > 0 for t in topics):
                return
            time.sleep(0.2)
        raise RuntimeError(f'inputs never flowing: {self.latest_rates()}')

    def latest_rates(self) -> dict[str, float]:
        with self.lock:
            if not self.diagnostics:
                return {}
            values = self.diagnostics[-1][1]
        return {k[:-len(' rate_hz')]: float(v) for k, v in values.items() if k.endswith(' rate_hz')}

    def diagnostics_since(self, start: float) -> list[dict]:
        with self.lock:
            return [values for t, values in self.diagnostics if t >= start]

    def latencies_since(self, start: float, end: float = math.inf) -> list[float]:
        with self.lock:
            return [msg.total_time for t, msg in self.stats if start <= t <= end]

    def run_goal(self, max_chunks: int = 0, timeout: float = 0.0, wait: float = 600.0):
        """(result, seconds it took)."""
        goal = self.RunInstruction.Goal(instruction=INSTRUCTION, max_chunks=max_chunks)
        goal.timeout.sec, goal.timeout.nanosec = int(timeout), int(round((timeout - int(timeout)) * 1e9))
        started = time.monotonic()
        handle = _wait(self.action.send_goal_async(goal), 30.0)
        if not handle.accepted:
            raise RuntimeError('goal rejected')
        response = _wait(handle.get_result_async(), wait)
        return response.result, time.monotonic() - started

    def close(self):
        import rclpy
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _wait(future, timeout: float):
    deadline = time.monotonic() + timeout
    while not future.done():
        if time.monotonic() > deadline:
            raise TimeoutError(f'no answer within {timeout} s')
        time.sleep(0.005)
    return future.result()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_results(stem: Path, results: dict, markdown: str) -> None:
    stem.with_suffix('.json').write_text(json.dumps(results, indent=2) + '\n')
    stem.with_suffix('.md').write_text(markdown)
    print(markdown)


# --- the publisher process ---------------------------------------------------------------------------

def _publisher_main(argv: list[str]) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    parser = argparse.ArgumentParser()
    parser.add_argument('--cameras', type=int, default=3)
    parser.add_argument('--camera-rate', type=float, default=30.0)
    parser.add_argument('--joint-rate', type=float, default=500.0)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    args = parser.parse_args(argv)
    rclpy.init()
    node = rclpy.create_node('benchmark_sensors')
    rng = np.random.default_rng(0)
    publishers, frames = [], []
    for index, topic in enumerate(camera_topics(args.cameras)):
        publishers.append(node.create_publisher(Image, topic, qos_profile_sensor_data))
        pixels = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
        frames.append(Image(height=args.height, width=args.width, encoding='rgb8', step=args.width * 3,
                            data=pixels.tobytes()))
        frames[-1].header.frame_id = f'cam{index}'
    joints = node.create_publisher(JointState, 'joint_states', qos_profile_sensor_data)
    started = time.monotonic()

    def cameras():
        stamp = node.get_clock().now().to_msg()
        for publisher, frame in zip(publishers, frames):
            frame.header.stamp = stamp
            publisher.publish(frame)

    def joint_states():
        t = time.monotonic() - started
        msg = JointState(name=ARM, position=[0.4 * t] + HOME[1:], velocity=[0.4] + [0.0] * 7)
        msg.header.stamp = node.get_clock().now().to_msg()
        joints.publish(msg)

    node.create_timer(1.0 / args.camera_rate, cameras)
    node.create_timer(1.0 / args.joint_rate, joint_states)
    print('publishing', flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, Exception):  # noqa: BLE001 - Ctrl-C ends the publisher
        pass


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    if sys.argv[1:2] == ['publish']:
        _publisher_main(sys.argv[2:])
