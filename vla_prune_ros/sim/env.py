"""A MuJoCo tabletop suite for the 6-DoF arm in ``assets/arm.urdf``: the scene (``scene``) with its
touch and push tasks (``tasks``), stepped by delta-pose actions.

Action (as OpenVLA-OFT on LIBERO): 7-D ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` per control
step; the TCP displacement in metres and a small world-frame rotation vector in radians, applied
to the *measured* TCP pose, plus gripper in [-1 (open), +1 (close)]. Each step solves damped
least-squares IK (``mj_jacSite`` on the TCP site) for the joint goal and ramps position-actuator
targets to it over the control period (with a velocity feed-forward so the ramp is tracked
without lag), running ``control_dt / physics_dt`` physics substeps.

Each episode starts the TCP at a seeded random offset from home (``tasks.START_OFFSET_RANGE``). With a
fixed start, the arm's position part-way along its approach told a policy where it was heading, so
a policy could copy its own past heading from the proprio instead of finding the target in the
images; the first step, the only one that needed vision, was a sliver of the loss.
"""
from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from ..paths import URDF_PATH
from .scene import (ARM_JOINT_NAMES, CAMERA_NAMES, COLOURS, CUBE_HALF, FINGER_JOINT_NAMES, HOME_JOINT_GUESS, HOME_TCP_POSITION, HOME_TCP_ROTATION, NUM_CUBES, NUM_PADS, PAD_HALF,
                    PAD_THICKNESS, TCP_FRAME, TCP_SITE, _yaw_quaternion, build_model, set_servo_gains,
                    quaternion_from_matrix, rotation_matrix_from_vector, rotation_vector_from_matrix,
                    rotation_vector_from_quaternion)
from .tasks import TASK_KINDS, TASK_SECONDS, TOUCH_HIT_SPEED, TaskSpec, sample_task, task_succeeded

ACTION_NAMES = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')

# Per-step action bounds (control step, not per second).
MAX_TRANSLATION_STEP = 0.03   # m
MAX_ROTATION_STEP = 0.15      # rad
ACTION_LOW = np.array([-MAX_TRANSLATION_STEP] * 3 + [-MAX_ROTATION_STEP] * 3 + [-1.0])
ACTION_HIGH = -ACTION_LOW

FINGER_OPEN = 0.04            # finger joint position when fully open (0 = closed)


@dataclasses.dataclass
class SimObservation:
    images: dict[str, np.ndarray]       # camera name -> H x W x 3 uint8 RGB
    joint_names: list[str]
    joint_positions: np.ndarray          # float64, URDF joints (arm then fingers)
    joint_velocities: np.ndarray
    proprio: np.ndarray                  # 8: TCP xyz (m), TCP axis-angle (3), finger positions (2)
    instruction: str
    success: bool
    time: float                          # simulated seconds since reset
    tcp_linear_velocity: np.ndarray      # world frame, m/s, from MuJoCo
    tcp_angular_velocity: np.ndarray     # world frame, rad/s, from MuJoCo
    step: int = 0



# ----------------------------------------------------------------------------- environment

class TabletopEnv:
    """Tabletop touch/push tasks with a 6-DoF arm, two cameras and delta-pose actions."""

    tcp_frame = TCP_FRAME
    action_names = ACTION_NAMES
    task_kinds = TASK_KINDS
    camera_names = CAMERA_NAMES

    def __init__(self, image_size: int = 128, control_dt: float = 0.1, seed: int = 0,
                 physics_dt: float = 0.002, render_images: bool = True,
                 ik_damping: float = 0.02, ik_iterations: int = 6):
        self.image_size = int(image_size)
        self.control_dt = float(control_dt)
        self.physics_dt = float(physics_dt)
        self.substeps = max(1, int(round(self.control_dt / self.physics_dt)))
        self.render_images = render_images
        self.ik_damping = ik_damping
        self.ik_iterations = ik_iterations
        self.action_low = ACTION_LOW.copy()
        self.action_high = ACTION_HIGH.copy()
        self.urdf_path = str(URDF_PATH)
        self.urdf_xml = URDF_PATH.read_text()
        self.joint_names = list(ARM_JOINT_NAMES + FINGER_JOINT_NAMES)
        self._seed_rng = np.random.default_rng(seed)

        self.model = build_model(self.urdf_xml, self.physics_dt,
                                 max_render_size=max(1024, self.image_size))
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)   # scratch state for IK iterations
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

        m = self.model
        joint_ids = [m.joint(n).id for n in self.joint_names]
        self._qpos_index = np.array([m.jnt_qposadr[j] for j in joint_ids])
        self._dof_index = np.array([m.jnt_dofadr[j] for j in joint_ids])
        self._arm_qpos = self._qpos_index[:6]
        self._arm_dofs = self._dof_index[:6]
        self._finger_qpos = self._qpos_index[6:]
        self._arm_range = m.jnt_range[joint_ids[:6]].copy()
        self._arm_actuators = np.array([m.actuator(f'{n}_servo').id for n in ARM_JOINT_NAMES])
        self._finger_actuators = np.array([m.actuator(f'{n}_servo').id for n in FINGER_JOINT_NAMES])
        self._tcp_site = m.site(TCP_SITE).id
        self._cube_bodies = [m.body(f'cube{i}').id for i in range(NUM_CUBES)]
        self._cube_qpos = [m.jnt_qposadr[m.joint(f'cube{i}_free').id] for i in range(NUM_CUBES)]
        self._cube_geoms = [m.geom(f'cube{i}_geom').id for i in range(NUM_CUBES)]
        self._pad_bodies = [m.body(f'pad{i}').id for i in range(NUM_PADS)]
        self._pad_geoms = [m.geom(f'pad{i}_geom').id for i in range(NUM_PADS)]
        self._gripper_body_ids = np.array([m.body(n).id for n in ('link6', 'finger_left', 'finger_right')])
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))

        self.home_qpos = self._solve_home()
        self._feedforward_lead = set_servo_gains(self.model, self.home_qpos, self._arm_qpos, self._arm_dofs,
                                                 self._dof_index[6:], self._arm_actuators, self._finger_actuators)
        self._reference_quat = quaternion_from_matrix(HOME_TCP_ROTATION)

        self.task: TaskSpec | None = None
        self.episode_seed: int | None = None
        self.step_count = 0
        self._success = False
        self.hard_hit = False      # touch only: the gripper struck the target cube too fast
        self._touch_start = np.zeros(3)
        self.reset(seed=int(self._seed_rng.integers(2**31)))

    # ------------------------------------------------------------------ setup helpers
    def _solve_home(self) -> np.ndarray:
        self.data.qpos[self._arm_qpos] = HOME_JOINT_GUESS
        mujoco.mj_forward(self.model, self.data)
        q = self._inverse_kinematics(HOME_TCP_POSITION, HOME_TCP_ROTATION, iterations=100)
        return q

    def _renderer(self, height: int, width: int) -> mujoco.Renderer:
        key = (height, width)
        if key not in self._renderers:
            self._renderers[key] = mujoco.Renderer(self.model, height=height, width=width)
        return self._renderers[key]

    # ------------------------------------------------------------------ public API
    @property
    def max_steps(self) -> int:
        return self.max_steps_for(self.task.kind if self.task else 'push')

    def max_steps_for(self, kind: str) -> int:
        return int(round(TASK_SECONDS[kind] / self.control_dt))

    @property
    def instruction(self) -> str:
        return self.task.instruction if self.task else ''

    def reset(self, task: str | None = None, seed: int | None = None) -> SimObservation:
        """New episode. Same (task, seed) => same scene; ``seed=None`` draws from the env's seed."""
        if seed is None:
            seed = int(self._seed_rng.integers(2**31))
        self.episode_seed = int(seed)
        rng = np.random.default_rng(self.episode_seed)
        kind = task if task is not None else TASK_KINDS[int(rng.integers(len(TASK_KINDS)))]
        self.task = sample_task(rng, kind)

        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self._arm_qpos] = self.home_qpos   # where the start pose's IK begins
        d.qpos[self._finger_qpos] = d.ctrl[self._finger_actuators] = 0.0
        start = self._inverse_kinematics(HOME_TCP_POSITION + self.task.start_offset, HOME_TCP_ROTATION, 100)
        d.qpos[self._arm_qpos] = d.ctrl[self._arm_actuators] = start
        for i in range(NUM_CUBES):
            adr = self._cube_qpos[i]
            d.qpos[adr:adr + 3] = [*self.task.cube_positions[i], CUBE_HALF]
            d.qpos[adr + 3:adr + 7] = _yaw_quaternion(self.task.cube_yaws[i])
            m.geom_rgba[self._cube_geoms[i]] = COLOURS[self.task.cube_colours[i]]
        for i in range(NUM_PADS):
            m.body_pos[self._pad_bodies[i]] = [*self.task.pad_positions[i], PAD_THICKNESS / 2]
            m.geom_rgba[self._pad_geoms[i]] = COLOURS[self.task.pad_colours[i]]
        mujoco.mj_forward(m, d)
        self.step_count = 0
        self._success = False
        self.hard_hit = False
        self._touch_start = self.cube_position(self.task.target_cube).copy()
        return self.observe()

    def clip_action(self, action) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,):
            raise ValueError(f'action must have 7 values {ACTION_NAMES}, got {action.shape[0]}')
        if not np.all(np.isfinite(action)):
            raise ValueError('action contains NaN or Inf')
        return np.clip(action, self.action_low, self.action_high)

    def step(self, action) -> SimObservation:
        action = self.clip_action(action)
        m, d = self.model, self.data
        position, rotation = self.tcp_pose()
        target_position = position + action[:3]
        target_rotation = rotation_matrix_from_vector(action[3:6]) @ rotation
        goal = self._inverse_kinematics(target_position, target_rotation)

        # Ramp the servo targets from the measured joints to the IK goal over the control period;
        # the feed-forward lead makes the servos track the ramp instead of lagging behind it, so
        # the TCP ends the step (close to) where the action asked.
        start = d.qpos[self._arm_qpos].copy()
        ramp_velocity = (goal - start) / (self.substeps * self.physics_dt)
        d.ctrl[self._finger_actuators] = FINGER_OPEN * (1.0 - action[6]) / 2.0
        watch_for_hits = self.task.kind == 'touch' and not self._success and not self.hard_hit
        for i in range(self.substeps):
            fraction = (i + 1) / self.substeps
            lead = self._feedforward_lead * ramp_velocity if i + 1 < self.substeps else 0.0
            d.ctrl[self._arm_actuators] = start + fraction * (goal - start) + lead
            mujoco.mj_step(m, d)
            if watch_for_hits and self._struck(self.task.target_cube):
                self.hard_hit = True
                watch_for_hits = False
        mujoco.mj_forward(m, d)   # derived quantities (site poses, velocities) for observe()
        self.step_count += 1
        return self.observe()

    @property
    def touch_start(self) -> np.ndarray:
        """Where the touch target stood at reset (a touch must not knock it away)."""
        return self._touch_start

    def observe(self) -> SimObservation:
        d = self.data
        linear, angular = self.tcp_velocity()
        if not self._success and task_succeeded(self, linear):
            self._success = True
        images = {}
        if self.render_images:
            images = {name: self.render_rgb(name, self.image_size) for name in CAMERA_NAMES}
        return SimObservation(
            images=images,
            joint_names=list(self.joint_names),
            joint_positions=d.qpos[self._qpos_index].astype(np.float64),
            joint_velocities=d.qvel[self._dof_index].astype(np.float64),
            proprio=self.proprio(),
            instruction=self.instruction,
            success=self._success,
            time=float(d.time),
            tcp_linear_velocity=linear,
            tcp_angular_velocity=angular,
            step=self.step_count,
        )

    def render_rgb(self, camera: str, size: int | tuple[int, int] = 128) -> np.ndarray:
        """RGB uint8 image (H x W x 3) from a named camera; ``size`` is an int or (height, width)."""
        height, width = (size, size) if np.isscalar(size) else size
        renderer = self._renderer(int(height), int(width))
        renderer.update_scene(self.data, camera=camera)
        return renderer.render().copy()

    def close(self):
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ state queries
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP (tool0) position and 3x3 rotation in the world frame."""
        return (self.data.site_xpos[self._tcp_site].copy(),
                self.data.site_xmat[self._tcp_site].reshape(3, 3).copy())

    def tcp_velocity(self) -> tuple[np.ndarray, np.ndarray]:
        """World-frame linear and angular TCP velocity from MuJoCo."""
        velocity = np.zeros(6)
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_SITE,
                                 self._tcp_site, velocity, 0)
        return velocity[3:].copy(), velocity[:3].copy()

    def tcp_rotation_vector(self) -> np.ndarray:
        """Axis-angle of the TCP orientation. The quaternion sign is chosen nearest the
        tool-down home orientation, so the vector is continuous around the working poses
        (where the principal axis-angle would flip at angle pi)."""
        quat = quaternion_from_matrix(self.tcp_pose()[1])
        if np.dot(quat, self._reference_quat) < 0:
            quat = -quat
        return rotation_vector_from_quaternion(quat)

    def proprio(self) -> np.ndarray:
        return np.concatenate([self.data.site_xpos[self._tcp_site], self.tcp_rotation_vector(),
                               self.data.qpos[self._finger_qpos]]).astype(np.float64)

    def cube_position(self, colour: str) -> np.ndarray:
        return self.data.xpos[self._cube_bodies[self._cube_slot(colour)]].copy()

    def cube_rotation(self, colour: str) -> np.ndarray:
        return self.data.xmat[self._cube_bodies[self._cube_slot(colour)]].reshape(3, 3).copy()

    def pad_position(self, colour: str) -> np.ndarray:
        return self.data.xpos[self._pad_bodies[self.task.pad_colours.index(colour)]].copy()

    def _cube_slot(self, colour: str) -> int:
        return self.task.cube_colours.index(colour)

    def target_cube_position(self) -> np.ndarray:
        return self.cube_position(self.task.target_cube)

    def target_pad_position(self) -> np.ndarray | None:
        return None if self.task.target_pad is None else self.pad_position(self.task.target_pad)

    def gripper_touches(self, colour: str) -> bool:
        """Any contact between the cube and a gripper geom (palm or fingers)."""
        pairs = self.data.contact.geom[:self.data.ncon]
        cube_geom = self._cube_geoms[self._cube_slot(colour)]
        others = np.concatenate([pairs[pairs[:, 0] == cube_geom, 1], pairs[pairs[:, 1] == cube_geom, 0]])
        return bool(np.isin(self.model.geom_bodyid[others], self._gripper_body_ids).any())

    def _struck(self, colour: str) -> bool:
        """Gripper in contact with the cube while the TCP moves faster than TOUCH_HIT_SPEED."""
        cube = self.data.xpos[self._cube_bodies[self._cube_slot(colour)]]
        if np.sum((self.data.site_xpos[self._tcp_site] - cube) ** 2) > 0.1 ** 2:
            return False   # cheap early out: the gripper is nowhere near the cube
        if not self.gripper_touches(colour):
            return False
        return float(np.linalg.norm(self.tcp_velocity()[0])) > TOUCH_HIT_SPEED

    def tcp_distance_to_cube(self, colour: str) -> float:
        """Distance from the TCP to the cube's surface (0 inside)."""
        local = self.cube_rotation(colour).T @ (self.tcp_pose()[0] - self.cube_position(colour))
        outside = np.maximum(np.abs(local) - CUBE_HALF, 0.0)
        return float(np.linalg.norm(outside))

    def cube_velocity(self, colour: str) -> np.ndarray:
        """World-frame linear velocity of a cube."""
        velocity = np.zeros(6)
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_BODY,
                                 self._cube_bodies[self._cube_slot(colour)], velocity, 0)
        return velocity[3:].copy()

    def cube_on_pad(self, cube_colour: str, pad_colour: str) -> bool:
        """Cube centre inside the pad square and the cube on the table (not lifted)."""
        offset = self.cube_position(cube_colour) - self.pad_position(pad_colour)
        on_table = offset[2] < CUBE_HALF + 0.01
        return bool(on_table and np.all(np.abs(offset[:2]) <= PAD_HALF))

    # ------------------------------------------------------------------ inverse kinematics
    def _inverse_kinematics(self, target_position, target_rotation, iterations: int | None = None):
        """Damped least squares on the arm joints, starting from the current joint positions."""
        m, scratch = self.model, self._ik_data
        scratch.qpos[:] = self.data.qpos
        q = scratch.qpos[self._arm_qpos].copy()
        damping = self.ik_damping ** 2 * np.eye(6)
        for _ in range(iterations or self.ik_iterations):
            mujoco.mj_kinematics(m, scratch)
            mujoco.mj_comPos(m, scratch)
            position = scratch.site_xpos[self._tcp_site]
            rotation = scratch.site_xmat[self._tcp_site].reshape(3, 3)
            error = np.concatenate([target_position - position,
                                    rotation_vector_from_matrix(target_rotation @ rotation.T)])
            if np.linalg.norm(error[:3]) < 1e-6 and np.linalg.norm(error[3:]) < 1e-5:
                break
            mujoco.mj_jacSite(m, scratch, self._jacp, self._jacr, self._tcp_site)
            jacobian = np.vstack([self._jacp[:, self._arm_dofs], self._jacr[:, self._arm_dofs]])
            dq = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + damping, error)
            q = np.clip(q + dq, self._arm_range[:, 0], self._arm_range[:, 1])
            scratch.qpos[self._arm_qpos] = q
        return q
