"""``vla_prune_sim``: the MuJoCo tabletop arm as a ROS 2 robot.

Publishes what a real robot driver would: camera images (``camera/<name>/image_raw``),
``joint_states`` with velocities, and ``robot_description`` (latched). Executes ``ActionChunk``
messages on their timing (``control.chunk_queue``): action ``i`` is due at ``start_time + i * dt``
and runs at the control tick nearest that time; a new chunk replaces every queued action due from
its ``start_time`` on, as a trajectory controller does; the arm holds still only when nothing is due.
After every tick it publishes ``episode_summary`` (``EpisodeSummary``: executed and idle steps,
chunk boundaries and their jumps, success and task time). Offers ``reset_episode`` (``ResetEpisode``:
task + seed -> instruction) and reports success on ``task_done`` (``std_msgs/Bool``) from the
simulator's own state. The observation published at a tick shows the state after that tick's action.
"""
from __future__ import annotations

import threading

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String

from vla_prune_interfaces.msg import ActionChunk, EpisodeSummary
from vla_prune_interfaces.srv import ResetEpisode

from ..control.chunk_queue import ActionTimeline, ExecutionTally, seconds_to_ns
from ..data.images import fill_image_msg
from .env import ACTION_NAMES, TabletopEnv
from .scene import CAMERA_NAMES
from .tasks import TASK_KINDS


class SimNode(Node):
    def __init__(self):
        super().__init__('vla_prune_sim')
        self.declare_parameter('image_size', 128)
        self.declare_parameter('control_dt', 0.1)
        self.declare_parameter('seed', 0)
        self.declare_parameter('task', '')
        size = self.get_parameter('image_size').value
        self.control_dt = float(self.get_parameter('control_dt').value)
        self.env = TabletopEnv(image_size=size, control_dt=self.control_dt, seed=self.get_parameter('seed').value)
        self.lock = threading.Lock()
        self.timeline = ActionTimeline()
        self.tally = ExecutionTally()
        self.chunks_received = 0
        self.episode, self.seed = 0, int(self.get_parameter('seed').value)
        self.gripper = 1.0
        self.observation = self.env.reset(task=self.get_parameter('task').value or None, seed=self.seed)

        self.image_publishers = {name: self.create_publisher(Image, f'camera/{name}/image_raw',
                                                             qos_profile_sensor_data) for name in CAMERA_NAMES}
        self.joint_publisher = self.create_publisher(JointState, 'joint_states', qos_profile_sensor_data)
        self.done_publisher = self.create_publisher(Bool, 'task_done', 10)
        self.summary_publisher = self.create_publisher(EpisodeSummary, 'episode_summary', 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.description_publisher = self.create_publisher(String, 'robot_description', latched)
        self.description_publisher.publish(String(data=self.env.urdf_xml))

        self.create_subscription(ActionChunk, 'action_chunk', self.on_chunk, 10)
        self.create_service(ResetEpisode, 'reset_episode', self.on_reset)
        self.create_timer(self.control_dt, self.on_tick)
        self.get_logger().info(f'simulated arm ready: {self.env.instruction!r}')

    def on_chunk(self, msg: ActionChunk) -> None:
        if msg.action_dim != len(ACTION_NAMES) or len(msg.actions) != msg.chunk_length * msg.action_dim:
            self.get_logger().warning(f'action_chunk: expected {len(ACTION_NAMES)}-D actions, got '
                                      f'{msg.action_dim} x {msg.chunk_length} with {len(msg.actions)} values')
            return
        actions = np.asarray(msg.actions, dtype=np.float64).reshape(msg.chunk_length, msg.action_dim)
        if not np.all(np.isfinite(actions)):
            self.get_logger().error('action_chunk: non-finite action refused')
            return
        start_ns = msg.start_time.sec * 1_000_000_000 + msg.start_time.nanosec
        dt_ns = seconds_to_ns(msg.dt) if msg.dt > 0 else seconds_to_ns(self.control_dt)
        with self.lock:
            # A zero start_time (a publisher that does not set it): due from now on.
            self.timeline.replace_from(start_ns or self.get_clock().now().nanoseconds, dt_ns, actions,
                                       self.chunks_received)
            self.chunks_received += 1

    def on_reset(self, request: ResetEpisode.Request, response: ResetEpisode.Response):
        task = request.task or None
        if task is not None and task not in TASK_KINDS:
            response.success, response.message = False, f"unknown task '{task}'; choose one of {TASK_KINDS}"
            return response
        with self.lock:
            self.timeline.clear()
            self.tally, self.chunks_received = ExecutionTally(), 0
            self.episode, self.seed = self.episode + 1, int(request.seed)
            self.gripper = 1.0
            self.observation = self.env.reset(task=task, seed=int(request.seed))
            self.publish_observation()
            self.publish_summary()
        response.success, response.message = True, 'reset'
        response.instruction = self.env.instruction
        self.get_logger().info(f'reset (seed {request.seed}): {self.env.instruction!r}')
        return response

    def on_tick(self) -> None:
        with self.lock:
            step = self.timeline.pop_due(self.get_clock().now().nanoseconds, seconds_to_ns(self.control_dt))
            self.tally.tick(step)
            if step is not None:
                action = step.action
                self.gripper = float(action[-1])
            else:       # nothing due: hold still, the gripper as it was
                action = np.zeros(len(ACTION_NAMES))
                action[-1] = self.gripper
            self.observation = self.env.step(action)
            if self.observation.success:
                self.tally.succeed()
            self.publish_observation()
            self.publish_summary()

    def publish_summary(self) -> None:
        tally = self.tally
        summary = EpisodeSummary(
            episode=self.episode, task=self.env.task.kind, seed=self.seed, executed_steps=tally.executed,
            idle_steps=tally.idle, chunks_received=self.chunks_received, boundaries=tally.boundaries,
            boundary_jump_sum=tally.jump_sum, success=tally.success, task_time=tally.task_steps * self.control_dt,
            queued_steps=len(self.timeline))
        summary.header.stamp = self.get_clock().now().to_msg()
        self.summary_publisher.publish(summary)

    def publish_observation(self) -> None:
        stamp = self.get_clock().now().to_msg()
        obs = self.observation
        for name, publisher in self.image_publishers.items():
            publisher.publish(fill_image_msg(Image(), obs.images[name], 'rgb8', stamp=stamp, frame_id=f'{name}_camera'))
        joints = JointState()
        joints.header.stamp = stamp
        joints.name = list(obs.joint_names)
        joints.position = obs.joint_positions.tolist()
        joints.velocity = obs.joint_velocities.tolist()
        self.joint_publisher.publish(joints)
        self.done_publisher.publish(Bool(data=bool(obs.success)))

    def destroy_node(self):
        self.env.close()
        super().destroy_node()


def main(args=None) -> None:
    rclpy.init(args=args)
    node = SimNode()
    # One thread: MuJoCo's EGL context belongs to the thread that created it, and every
    # callback here renders (the timer steps and publishes; a reset re-renders).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
