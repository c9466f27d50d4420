"""Simulated episodes through ROS: the simulator and the policy node as processes, over real DDS.

Starts ``vla_prune_sim`` (MuJoCo arm: cameras, joint states, URDF) and ``vla_prune_node`` (the
bundled default policy) as separate processes, then acts as the user: resets scenes, sends
instructions as ``RunInstruction`` goals, switches the pruning method live through
``set_parameters`` (what ``ros2 param set`` calls), prints one line per chunk and a summary,
writes a GIF of an episode and records the run to a rosbag2 (MCAP).

``vla-prune demo`` and ``vla-prune eval --through-ros`` run on this harness. An episode's measures
of execution (executed and idle control steps, chunk-boundary jumps, task time) are the simulator's
own ``episode_summary``; the execution mode and the added latency are set live on the node.
"""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..evaluation import EpisodeResult, parse_method
from ..parameters import NODE_NAME, recorded_topics, resolve_launch_parameters, sim_robot_parameters
from ..paths import SIM_ROBOT_CONFIG
from .tasks import TASK_SECONDS

DEMO_EPISODES = (('touch', 6), ('push', 5))   # seeds as in `vla-prune eval`
GOAL_ALLOWANCE_S = 1.0        # beyond the task's time limit: the goal's start and first inference


def ros_environment() -> dict:
    env = dict(os.environ)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'       # never leave this machine
    env.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 100)))
    env.setdefault('MUJOCO_GL', 'egl')
    env.setdefault('PYOPENGL_PLATFORM', 'egl')
    env.setdefault('HF_HUB_OFFLINE', '1')
    return env


class Processes:
    """The simulator and policy node as child processes, stopped on exit."""

    def __init__(self, log_dir: Path, env: dict):
        self.log_dir, self.env, self.children = log_dir, env, {}

    def start(self, name: str, argv: list[str]) -> None:
        log = open(self.log_dir / f'{name}.log', 'w')
        self.children[name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env), log)

    def check(self) -> None:
        for name, (process, _) in self.children.items():
            if process.poll() is not None:
                tail = (self.log_dir / f'{name}.log').read_text().strip().splitlines()[-5:]
                raise RuntimeError(f'{name} exited with {process.returncode}:\n  ' + '\n  '.join(tail))

    def stop(self, name: str | None = None) -> None:
        for key in [name] if name else list(self.children):
            process, log = self.children.pop(key)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def node_params_file(checkpoint: Path, method: str, directory: Path) -> Path:
    # A loaded 2-core machine can stall the simulator for a few hundred ms: wait for a fresh frame
    # rather than abort the goal (a robot config may prefer 'abort').
    params = resolve_launch_parameters(method, {'checkpoint': str(checkpoint), 'stale_input_policy': 'wait',
                                                'wait_timeout': 2.0}, [SIM_ROBOT_CONFIG])
    path = directory / f'params_{checkpoint.name}.yaml'
    path.write_text(yaml.safe_dump({NODE_NAME: {'ros__parameters': params}}))
    return path


@dataclass
class GoalLog:
    method: str
    instruction: str
    lines: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    flops_ratios: list[float] = field(default_factory=list)
    fine_chunks: int = 0
    dropped_steps: list[int] = field(default_factory=list)


class Client:
    """The user's side: an rclpy node with the action, reset and parameter clients."""

    def __init__(self, record_to: Path | None, gif_frames: list | None):
        import rclpy
        from rclpy.action import ActionClient
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from vla_prune_interfaces.action import RunInstruction
        from vla_prune_interfaces.msg import EpisodeSummary, InferenceStats
        from vla_prune_interfaces.srv import ResetEpisode

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node('vla_prune_demo')
        self.RunInstruction, self.ResetEpisode = RunInstruction, ResetEpisode
        self.action = ActionClient(self.node, RunInstruction, 'run_instruction')
        self.reset_client = self.node.create_client(ResetEpisode, 'reset_episode')
        self.params = AsyncParameterClient(self.node, NODE_NAME)
        self.current: GoalLog | None = None
        self.gif_frames, self.capture = gif_frames, False
        self.node.create_subscription(InferenceStats, 'inference_stats', self._on_stats, 10)
        self.summary, self.summaries_received = None, 0
        self.node.create_subscription(EpisodeSummary, 'episode_summary', self._on_summary, 10)
        self.node.create_subscription(Image, 'camera/primary/image_raw', self._on_image, qos_profile_sensor_data)
        # Each goal's instruction is also announced on the instruction topic, so the recording splits
        # into labelled episodes for `vla-prune dataset from-bag` (as an operator's announcement would).
        from ..bag_dataset.robot import RecordingConfig
        instruction_topic = RecordingConfig.load(SIM_ROBOT_CONFIG).instruction_topic
        self.String, self.instruction_publisher = String, self.node.create_publisher(String, instruction_topic, 10)
        self.recorder = None
        if record_to is not None:
            from ..data.rosbag import BagRecorder
            topics = ['/' + topic.lstrip('/') for topic in recorded_topics(sim_robot_parameters())]
            topics.append(instruction_topic)
            self.recorder = BagRecorder(self.node, record_to, topics=topics, discovery_timeout=5.0)
        self.executor = MultiThreadedExecutor(num_threads=3)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_stats(self, msg) -> None:
        log = self.current
        if log is None:
            return
        chunk = len(log.latencies) + 1
        speed = f'{msg.ee_linear_speed:.3f} m/s' if msg.ee_velocity_valid else 'unknown'
        line = (f'  [{msg.method:<13}] chunk {chunk:>2}  mode={msg.controller_mode:<6} ee speed {speed:>11}  '
                f'tokens {msg.layer_tokens[0]:>3}->{msg.layer_tokens[-1]:>3} of {msg.tokens_total}  '
                f'FLOPs {msg.flops / max(msg.flops_unpruned, 1):.2f}  latency {1000 * msg.total_time:6.1f} ms')
        print(line, flush=True)
        log.lines.append(line)
        log.latencies.append(msg.total_time)
        log.tokens.append(round(sum(msg.layer_tokens) / len(msg.layer_tokens)))
        log.flops_ratios.append(msg.flops / max(msg.flops_unpruned, 1))
        log.fine_chunks += int(msg.controller_mode == 'fine')
        log.dropped_steps.append(msg.dropped_steps)

    def _on_summary(self, msg) -> None:
        self.summary = msg
        self.summaries_received += 1

    def summary_after(self, count: int, timeout: float = 5.0):
        """The first episode summary received after ``count`` had been (the simulator sends one per tick)."""
        deadline = time.time() + timeout
        while self.summaries_received <= count + 1:
            if time.time() > deadline:
                raise TimeoutError('no episode_summary from the simulator')
            time.sleep(0.01)
        return self.summary

    def _on_image(self, msg) -> None:
        if self.capture and self.gif_frames is not None:
            from ..data.images import msg_to_rgb
            self.gif_frames.append(msg_to_rgb(msg))

    def wait_ready(self, processes: Processes, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            processes.check()
            if self.action.server_is_ready() and self.reset_client.service_is_ready() \
                    and self.params.services_are_ready():
                return
            time.sleep(0.2)
        raise TimeoutError('the simulator or the policy node did not come up; see the logs')

    def call(self, future, timeout: float = 30.0):
        deadline = time.time() + timeout
        while not future.done():
            if time.time() > deadline:
                raise TimeoutError('no answer from the remote node')
            time.sleep(0.01)
        return future.result()

    def reset(self, task: str, seed: int) -> str:
        request = self.ResetEpisode.Request(task=task, seed=seed)
        response = self.call(self.reset_client.call_async(request))
        if not response.success:
            raise RuntimeError(response.message)
        time.sleep(0.3)      # let fresh frames of the new scene reach the node
        return response.instruction

    def set(self, **values) -> None:
        """Set node parameters live (what ``ros2 param set`` does); a refusal raises with its reason."""
        from rclpy.parameter import Parameter
        results = self.call(self.params.set_parameters([Parameter(k, value=v) for k, v in values.items()])).results
        for (name, value), result in zip(values.items(), results):
            if not result.successful:
                raise RuntimeError(f'{name}={value} refused: {result.reason}')

    def set_method(self, method: str) -> None:
        self.set(method=method)

    def run_goal(self, instruction: str, method: str, max_chunks: int, timeout_s: float):
        goal = self.RunInstruction.Goal(instruction=instruction, max_chunks=max_chunks)
        goal.timeout.sec, goal.timeout.nanosec = int(timeout_s), int(round((timeout_s % 1) * 1e9))
        self.current = GoalLog(method, instruction)
        self.instruction_publisher.publish(self.String(data=instruction))
        handle = self.call(self.action.send_goal_async(goal))
        if not handle.accepted:
            raise RuntimeError(f'goal rejected: {instruction!r}')
        result = self.call(handle.get_result_async(), timeout=timeout_s + 30).result
        summary = self.summary_after(self.summaries_received)
        log, self.current = self.current, None
        return result, log, summary

    def close(self) -> dict:
        counts = self.recorder.stop() if self.recorder is not None else {}
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown()
        return counts


def run_episodes(plan: list[tuple[str, Path]], episodes: list[tuple[str, int]], out_dir: Path, record: bool,
                 gif: bool, quiet: bool = False, conditions: list[tuple[str, float]] | None = None
                 ) -> tuple[dict, Path | None, Path | None]:
    """Run every (method, checkpoint) of ``plan`` on every (task, seed); one node per checkpoint.

    ``conditions``: (execution, added latency s) pairs, each set live on the node (``async+<aggregation>``
    also sets ``chunk_aggregation``; plain ``async`` is ``latest_only``); the report's keys are the method
    alone for a single condition, else ``method | execution | +latency s``.
    """
    conditions = conditions or [('sync', 0.0)]
    env = ros_environment()
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID')})
    processes = Processes(out_dir, env)
    frames: list = []
    bag = out_dir / 'demo_bag' if record else None
    client = Client(bag, frames if gif else None)
    report: dict = {}
    try:
        processes.start('vla_prune_sim', [sys.executable, '-m', 'vla_prune_ros.sim.sim_node'])
        by_checkpoint: dict[Path, list[str]] = {}
        for method, checkpoint in plan:
            by_checkpoint.setdefault(checkpoint, []).append(method)
        for checkpoint, methods in by_checkpoint.items():
            params = node_params_file(checkpoint, methods[0], out_dir)
            node_name = f'vla_prune_node_{checkpoint.name}'       # one log per policy node
            processes.start(node_name, [sys.executable, '-m', 'vla_prune_ros.node', '--ros-args',
                                        '--params-file', str(params)])
            client.wait_ready(processes)
            if client.recorder is not None and not client.recorder.recording:
                client.recorder.start()
            for method in methods:
                client.set_method(method)
                for execution, added_latency in conditions:
                    mode, _, aggregation = execution.partition('+')
                    client.set(execution=mode, chunk_aggregation=aggregation or 'latest_only',
                               added_latency=float(added_latency))
                    label = method if len(conditions) == 1 else f'{method} | {execution} | +{added_latency:g} s'
                    results = [run_one(client, method, task, seed, gif and not frames, quiet)
                               for task, seed in episodes]
                    report[label] = {'method': method, 'execution': execution, 'added_latency_s': added_latency,
                                     'checkpoint': str(checkpoint), 'episodes': results}
            processes.stop(node_name)
    finally:
        counts = client.close()
        processes.stop()
    gif_path = write_gif(frames, out_dir / 'episode.gif') if frames else None
    if bag is not None and not quiet:
        print(f'\nrecorded {sum(counts.values())} messages on {len(counts)} topics to {bag}')
    return report, gif_path, bag


def run_one(client: Client, method: str, task: str, seed: int, capture: bool, quiet: bool) -> EpisodeResult:
    """One episode: reset, one goal with the task's time limit, the simulator's summary of it."""
    instruction = client.reset(task, seed)
    if not quiet:
        print(f'\n{method} | {task} seed {seed}: "{instruction}"', flush=True)
    client.capture = capture
    result, log, summary = client.run_goal(instruction, method, 0, TASK_SECONDS[task] + GOAL_ALLOWANCE_S)
    client.capture = False
    success = result.status == client.RunInstruction.Result.STATUS_SUCCEEDED
    if not quiet:
        print(f'  -> {"SUCCESS" if success else "failed"}: {result.reason}', flush=True)
    steps = summary.executed_steps + summary.idle_steps
    chunk = max(steps / max(len(log.latencies), 1), 1.0)      # control steps per inference, for the fine share
    episode = EpisodeResult(seed, task, instruction, success, steps, result.chunks_executed, log.latencies,
                            log.tokens, log.flops_ratios, round(log.fine_chunks * chunk))
    episode.task_time_s = summary.task_time if summary.success else None
    if summary.boundaries:
        episode.boundary_jumps = [summary.boundary_jump_sum / summary.boundaries] * summary.boundaries
    episode.idle_steps, episode.dropped_steps = summary.idle_steps, log.dropped_steps
    return episode


def write_gif(frames: list, path: Path) -> Path:
    from PIL import Image as PILImage
    images = [PILImage.fromarray(f).resize((256, 256), PILImage.NEAREST) for f in frames[::2]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=200, loop=0)
    return path


def default_plan(methods: list[str], checkpoint: Path) -> list[tuple[str, Path]]:
    """(method, checkpoint) per method, chosen as ``vla-prune eval`` chooses them."""
    return [(method, path) for _, method, path in (parse_method(m, checkpoint) for m in methods)]


