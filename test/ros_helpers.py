"""Helpers for the node tests: real processes over real DDS, no mocks.

* :func:`domain_id` / :func:`ros_env`: a ROS_DOMAIN_ID per test module, discovery on localhost.
* :func:`make_checkpoint`: a tiny checkpoint (``model_fixtures.tiny_model_and_tokenizer``).
* :class:`Process`: a child process whose stdout and stderr lines are collected for ``wait_for``.
* :func:`start_node`: ``python -m vla_prune_ros.node --ros-args ...``.
* :func:`start_publisher`: this file run as a script: a camera + joint-state + success publisher
  driven by commands on stdin (``image 0 truncated``, ``camera 1 off``, ``joints nan``, ...).
* :class:`RosClient`: the test's own rclpy node in its own context and domain: action client,
  parameter client and topic recorders, spun in a background thread.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
NODE = 'vla_prune_node'
CAMERA_TOPICS = ['camera/primary/image_raw', 'camera/wrist/image_raw']
SIM_ROBOT_YAML = REPO / 'config' / 'sim_robot.yaml'
ARM_JOINTS = [f'joint{i}' for i in range(1, 7)]
FINGER_JOINTS = ['finger_left_joint', 'finger_right_joint']
HOME_JOINTS = [0.0, 0.3, 1.6, 0.0, 1.24, 0.0]
FINGER_POSITION = 0.02
JOINT1_SPEED = 0.4   # rad/s of joint 1 in 'moving' mode: the tool centre circles the base axis


def domain_id(module_name: str) -> int:
    """1..100, different per module and per run (other test files use 1 + pid % 100)."""
    return 1 + (os.getpid() * 7 + zlib.crc32(module_name.encode())) % 100


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.01)


def ros_env(domain: int, **extra) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def make_checkpoint(directory: Path, seed: int = 0, nan_head: bool = False) -> Path:
    """A tiny two-camera checkpoint (56 px, 2-layer LLM, 8 x 7 actions, proprio 8).

    ``nan_head``: the action head's last layer outputs NaN, to check the node never publishes it.
    """
    import torch
    from model_fixtures import tiny_model_and_tokenizer
    from vla_prune_ros.model.checkpoint import save_checkpoint
    model, tokenizer = tiny_model_and_tokenizer(seed=seed)
    if nan_head:
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.bias.fill_(float('nan'))
    save_checkpoint(model, tokenizer, directory)
    return Path(directory)


# --- processes -------------------------------------------------------------------------------

class Process:
    """A child process with its output lines collected (stdout and stderr separately)."""

    def __init__(self, args: list[str], env: dict, stdin: bool = False):
        self.args = args
        self.popen = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, cwd=str(REPO))
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        for pipe, lines in ((self.popen.stdout, self.stdout), (self.popen.stderr, self.stderr)):
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True).start()

    def _read(self, pipe, lines):
        for line in pipe:
            with self._changed:
                lines.append(line.rstrip('\n'))
                self._changed.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._changed:
            return self.stdout + self.stderr

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> str | None:
        """The first line (of stdout + stderr, from the ``start``-th match on) matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = [line for line in self.stdout + self.stderr if regex.search(line)]
                if len(matches) > start:
                    return matches[start]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._pipes_open()):
                    return None
                self._changed.wait(min(remaining, 0.1))

    def _pipes_open(self) -> bool:
        return not (self.popen.stdout.closed and self.popen.stderr.closed)

    def wait(self, timeout: float) -> int:
        code = self.popen.wait(timeout)
        time.sleep(0.1)   # let the readers drain the pipes
        return code

    def send(self, line: str) -> None:
        self.popen.stdin.write(line + '\n')
        self.popen.stdin.flush()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (Ctrl-C), then SIGKILL if it does not exit; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def tracebacks(lines: list[str]) -> str:
    """Every Python traceback in a process's output, each with the lines that follow it up to the next
    ROS log line (so a failure shows the exception itself, not a truncated list of all lines)."""
    blocks, current = [], None
    for line in lines:
        if 'Traceback' in line:
            current = [line]
            blocks.append(current)
        elif current is not None and not line.startswith('[') and len(current) < 40:
            current.append(line)
        else:
            current = None
    return '\n\n'.join('\n'.join(block) for block in blocks)


def launch_params_file(directory: Path, method: str, arguments: dict) -> Path:
    """The params file the launch file would hand the node: ``arguments`` over the sim robot config."""
    import yaml
    from vla_prune_ros import parameters as node_config
    params = node_config.resolve_launch_parameters(method, arguments, [SIM_ROBOT_YAML])
    path = directory / 'params.yaml'
    path.write_text(yaml.safe_dump({node_config.NODE_NAME: {'ros__parameters': params}}))
    return path


def _ros_arg(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(_ros_arg(v) for v in value) + ']'
    if value == '':
        return "''"
    return str(value)


def start_node(domain: int, params: dict, params_files=(SIM_ROBOT_YAML,), ros_args=()) -> Process:
    """The node as ``python -m vla_prune_ros.node --ros-args [--params-file F]... [-p name:=value]...``."""
    args = [sys.executable, '-m', 'vla_prune_ros.node', '--ros-args', *ros_args]
    for path in params_files:
        args += ['--params-file', str(path)]
    for name, value in params.items():
        args += ['-p', f'{name}:={_ros_arg(value)}']
    return Process(args, ros_env(domain))


def start_publisher(domain: int, rate: float = 30.0, size: int = 64, wrist: bool = True,
                    joints: str = 'moving', compressed: bool = False) -> Process:
    """``compressed``: also publish each camera as a JPEG sensor_msgs/CompressedImage on ``<topic>/compressed``."""
    process = Process([sys.executable, str(HERE), 'publish', '--rate', str(rate), '--size', str(size),
                       '--wrist', 'on' if wrist else 'off', '--joints', joints]
                      + (['--compressed'] if compressed else []), ros_env(domain), stdin=True)
    assert process.wait_for('publishing', timeout=30), process.lines
    return process


def command(publisher: Process, line: str, timeout: float = 5.0) -> None:
    """Send a command to the publisher and wait until it has taken effect."""
    before = publisher.count(f'^ok {re.escape(line)}$')
    publisher.send(line)
    assert publisher.wait_for(f'^ok {re.escape(line)}$', timeout, start=before), publisher.lines[-5:]


# --- the test's own ROS client ----------------------------------------------------------------

class RosClient:
    """Action + parameter client and topic recorders, in their own context (domain ``domain``)."""

    def __init__(self, domain: int, name: str = 'test_client', namespace: str = ''):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.action import ActionClient
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from trajectory_msgs.msg import JointTrajectory
        from vla_prune_interfaces.action import RunInstruction
        from vla_prune_interfaces.msg import ActionChunk, InferenceStats

        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self.RunInstruction = RunInstruction
        # Deep service queues on this side too: a burst of 50 goals gets 50 responses at once.
        from rclpy.qos import QoSProfile
        deep = QoSProfile(depth=100)
        self.action = ActionClient(self.node, RunInstruction, 'run_instruction', goal_service_qos_profile=deep,
                                   result_service_qos_profile=deep, cancel_service_qos_profile=deep)
        self.parameters = AsyncParameterClient(self.node, f'/{namespace}/{NODE}' if namespace else NODE)
        self.lock = threading.Lock()
        self.chunks, self.stats, self.trajectories, self.diagnostics = [], [], [], []
        self.image_stamps: dict[int, float] = {}      # header stamp ns -> receive time (monotonic)

        def keep(store):
            def callback(msg):
                with self.lock:
                    store.append((time.monotonic(), msg))
            return callback

        self.images_received = 0

        def on_image(msg):
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            with self.lock:
                self.image_stamps.setdefault(stamp, time.monotonic())
                self.images_received += 1

        self.node.create_subscription(ActionChunk, 'action_chunk', keep(self.chunks), 50)
        self.node.create_subscription(InferenceStats, 'inference_stats', keep(self.stats), 50)
        self.node.create_subscription(JointTrajectory, 'joint_trajectory', keep(self.trajectories), 50)
        # /diagnostics is shared by every node on the domain: keep only the node this client talks to.
        target = f'/{namespace}/{NODE}: ' if namespace else f'/{NODE}: '
        keep_diagnostics = keep(self.diagnostics)

        def on_diagnostics(array):
            if array.status and array.status[0].name.startswith(target):
                keep_diagnostics(array)

        self.node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 50)
        self.node.create_subscription(Image, CAMERA_TOPICS[0], on_image, qos_profile_sensor_data)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context was shut down
            pass

    def close(self):
        import rclpy
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    @staticmethod
    def wait_future(future, timeout: float):
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError('no answer within %.1f s' % timeout)
            time.sleep(0.005)
        return future.result()

    def settle(self, frames: int = 3, timeout: float = 10.0) -> None:
        """Wait until ``frames`` more primary-camera frames reached this client: what the publisher sends
        after a command has then reached the node too (same host, same ticks)."""
        with self.lock:
            target = self.images_received + frames
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.images_received >= target:
                    return
            time.sleep(0.01)
        raise AssertionError(f'fewer than {frames} camera frames in {timeout} s')

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.action.wait_for_server(timeout_sec=timeout), 'run_instruction action server not up'
        assert self.parameters.wait_for_services(timeout_sec=timeout), 'parameter services not up'

    def wait_topics_flowing(self, topics: list[str], timeout: float = 30.0) -> None:
        """Until the node's /diagnostics report a non-zero rate for each of ``topics`` (resolved names)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, array in reversed(self.diagnostics[-10:]):
                rates = {kv.key[:-len(' rate_hz')]: float(kv.value) for status in array.status
                         for kv in status.values if kv.key.endswith(' rate_hz')}
                if all(rates.get(topic, 0.0) > 0 for topic in topics):
                    return
            time.sleep(0.1)
        raise AssertionError(f'the node never reported {topics} flowing on /diagnostics')

    def wait_inputs_flowing(self, timeout: float = 30.0) -> None:
        """Wait until the node's /diagnostics report every input topic with a non-zero rate, so a
        first goal never races the first frames on a loaded machine."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, array in reversed(self.diagnostics[-10:]):
                rates = [float(kv.value) for status in array.status for kv in status.values
                         if kv.key.endswith('rate_hz')]
                if rates and all(rate > 0 for rate in rates):
                    return
            time.sleep(0.1)
        raise AssertionError('the node never reported its inputs flowing on /diagnostics')

    # goals
    def send_goal(self, instruction: str, max_chunks: int = 0, timeout: float = 0.0, feedback: list | None = None):
        goal = self.RunInstruction.Goal(instruction=instruction, max_chunks=max_chunks)
        goal.timeout.sec, goal.timeout.nanosec = int(timeout), int(round((timeout - int(timeout)) * 1e9))
        callback = (lambda msg: feedback.append(msg.feedback)) if feedback is not None else None
        return self.action.send_goal_async(goal, feedback_callback=callback)

    def run_goal(self, instruction: str, max_chunks: int = 0, timeout: float = 0.0, wait: float = 60.0):
        """Send a goal and wait for its result: (accepted, result or None, action status, feedback list)."""
        feedback = []
        handle = self.wait_future(self.send_goal(instruction, max_chunks, timeout, feedback), 10.0)
        if not handle.accepted:
            return False, None, None, feedback
        response = self.wait_future(handle.get_result_async(), wait)
        return True, response.result, response.status, feedback

    # parameters
    def set_parameters(self, values: dict, atomically: bool = False):
        from rclpy.parameter import Parameter
        parameters = [Parameter(name, value=value) for name, value in values.items()]
        call = self.parameters.set_parameters_atomically if atomically else self.parameters.set_parameters
        return self.wait_future(call(parameters), 10.0).results if not atomically else \
            [self.wait_future(call(parameters), 10.0).result]

    def get_parameters(self, names: list[str]) -> dict:
        from rclpy.parameter import parameter_value_to_python
        response = self.wait_future(self.parameters.get_parameters(names), 10.0)
        return {name: parameter_value_to_python(value) for name, value in zip(names, response.values)}

    def since(self, store: list, start: float) -> list:
        with self.lock:
            return [msg for t, msg in store if t >= start]

    def wait_for_message(self, store: list, start: float, predicate=lambda msg: True, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.since(store, start):
                if predicate(msg):
                    return msg
            time.sleep(0.02)
        return None


# --- the publisher process (this file run as a script) ----------------------------------------

def _publisher_main(argv: list[str]) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Bool
    from vla_prune_ros.data.images import fill_image_msg, image_fields_to_rgb

    parser = argparse.ArgumentParser()
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--wrist', default='on')
    parser.add_argument('--joints', default='moving')
    parser.add_argument('--compressed', action='store_true')
    args = parser.parse_args(argv)
    from sensor_msgs.msg import CompressedImage
    from vla_prune_ros.data.images import rgb_to_compressed

    rclpy.init()
    node = rclpy.create_node('test_sensor_publisher')
    cameras = [node.create_publisher(Image, topic, qos_profile_sensor_data) for topic in CAMERA_TOPICS]
    joints_pub = node.create_publisher(JointState, 'joint_states', qos_profile_sensor_data)
    success_pub = node.create_publisher(Bool, 'task_done', 10)
    compressed = [node.create_publisher(CompressedImage, topic + '/compressed', qos_profile_sensor_data)
                  for topic in CAMERA_TOPICS] if args.compressed else []
    state = {'image': ['good', 'good'], 'camera': [True, args.wrist == 'on'], 'joints': args.joints,
             'age': 0.0, 'seq': 0, 'stamp': 'normal', 'scene': 'moving'}
    rng = np.random.default_rng(0)
    started = time.monotonic()
    lock = threading.Lock()

    # A fixed scene per camera with one small square moving across it, so most patches stay the
    # same from frame to frame (as on a robot) and SpecPrune has static patches to drop.
    scenes = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in CAMERA_TOPICS]

    def image(index, stamp):
        rgb = scenes[index].copy()
        side = max(2, args.size // 8)
        x = (state['seq'] * 2) % (args.size - side) if state['scene'] == 'moving' else 0
        rgb[:side, x:x + side] = 255
        msg = fill_image_msg(Image(), rgb, 'rgb8' if index == 0 else 'bgr8', stamp=stamp, frame_id=f'camera{index}')
        mode = state['image'][index]
        if mode == 'bad_encoding':
            msg.encoding = '32FC1'
        elif mode == 'zero_size':
            msg.height = 0
        elif mode == 'truncated':
            msg.data = bytes(msg.data[: len(msg.data) // 2])
        elif mode == 'bad_step':
            msg.step = msg.width * 3 - 1
        return msg

    def joint_states(stamp, t):
        q1 = JOINT1_SPEED * t if state['joints'] != 'still' else 0.0
        positions = [q1] + HOME_JOINTS[1:] + [FINGER_POSITION] * 2
        velocities = [JOINT1_SPEED if state['joints'] != 'still' else 0.0] + [0.0] * 7
        names = ARM_JOINTS + FINGER_JOINTS
        mode = state['joints']
        if mode == 'nan':
            velocities = [math.nan] * len(names)
        if mode == 'huge':         # finite but non-physical (a driver fault)
            velocities = [1e200] + [1e9] * (len(names) - 1)
        if mode == 'duplicate':    # joint1 listed twice; the last copy is the one that counts
            names, positions, velocities = names + ['joint1'], positions + [positions[0]], velocities + [velocities[0]]
        messages = []
        if mode == 'extra':        # the arm's joints plus one the URDF does not have
            names, positions, velocities = names + ['conveyor_joint'], positions + [0.0], velocities + [1.0]
        if mode == 'renamed':      # another robot's names: none of them is in the URDF
            names = ['arm_' + name for name in names]
        if mode == 'missing':      # joint6 comes in a separate message without velocity
            messages.append(JointState(name=['joint6'], position=[positions[5]], velocity=[]))
            keep = [i for i, name in enumerate(names) if name != 'joint6']
            names = [names[i] for i in keep]
            positions, velocities = [positions[i] for i in keep], [velocities[i] for i in keep]
        messages.append(JointState(name=names, position=positions, velocity=velocities))
        for msg in messages:
            msg.header.stamp = stamp
        return messages

    def tick():
        with lock:
            now = node.get_clock().now()
            stamp = (now - rclpy.duration.Duration(seconds=state['age'])).to_msg()
            if state['stamp'] == 'zero':
                stamp = rclpy.time.Time().to_msg()
            for index, publisher in enumerate(cameras):
                if state['camera'][index]:
                    msg = image(index, stamp)
                    publisher.publish(msg)
                    if compressed:
                        rgb = image_fields_to_rgb(msg.encoding, msg.height, msg.width, msg.step, 0, msg.data)
                        jpeg = CompressedImage(**rgb_to_compressed(rgb, 'jpeg'))
                        jpeg.header = msg.header
                        compressed[index].publish(jpeg)
            if state['joints'] != 'off':
                for msg in joint_states(stamp, time.monotonic() - started):
                    joints_pub.publish(msg)
            state['seq'] += 1

    def commands():
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            with lock:
                if words[0] == 'image':             # image <index> <mode>
                    state['image'][int(words[1])] = words[2]
                elif words[0] == 'camera':          # camera <index> on|off
                    state['camera'][int(words[1])] = words[2] == 'on'
                elif words[0] == 'joints':          # joints moving|still|nan|huge|duplicate|extra|renamed|missing|off
                    state['joints'] = words[1]
                elif words[0] == 'age':             # age <seconds>: stamp every message that much in the past
                    state['age'] = float(words[1])  # (negative: in the future)
                elif words[0] == 'scene':           # scene moving|still: still repeats the same frames
                    state['scene'] = words[1]
                elif words[0] == 'stamp':           # stamp zero|normal
                    state['stamp'] = words[1]
                elif words[0] == 'success':
                    success_pub.publish(Bool(data=True))
                elif words[0] == 'quit':
                    os._exit(0)
            print('ok ' + line.strip(), flush=True)
        os._exit(0)     # stdin closed: the test is gone, so is the publisher

    node.create_timer(1.0 / args.rate, tick)
    threading.Thread(target=commands, daemon=True).start()
    print('publishing', flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, Exception):  # noqa: BLE001 - Ctrl-C or shutdown ends the publisher
        pass


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    if sys.argv[1:2] == ['publish']:
        _publisher_main(sys.argv[2:])
