"""Scripted expert for the tabletop suite, using privileged simulator state.

It moves fast (``fast_speed``) when far from its goal and slows to ``slow_speed`` over the last
few centimetres, which is the profile the coarse/fine controller is built around:
  touch: fly above the target cube at hover height, then descend onto its top face.
  push:  turn the fingers' flat face square to the cube->pad line, fly to a stand-off point
         behind the cube (seen from the pad), lower to push height, push the cube along the
         line with lateral correction, stop when it is on the pad centre; if the cube slips
         sideways, lift and re-approach.
The gripper stays closed (+1) in both tasks. ``noise_std`` adds seeded Gaussian noise (metres)
to the translation for demonstration diversity.
"""
from __future__ import annotations

import numpy as np

from vla_prune_ros.sim.env import MAX_ROTATION_STEP, TabletopEnv
from vla_prune_ros.sim.scene import CUBE_HALF, HOME_TCP_ROTATION, rotation_vector_from_matrix
from vla_prune_ros.sim.tasks import PUSH_STANDOFF

HOVER_HEIGHT = 0.075          # TCP height for moving above the cubes (cube tops are at 0.04)
PUSH_HEIGHT = 0.018           # TCP height while pushing (fingertips just above the table)
TOUCH_CLEARANCE = 0.004       # final TCP height above the cube's top face
PUSHER_HALF_WIDTH = 0.015     # closed fingers, half extent along tool x (the push direction)
PUSH_DONE_RADIUS = 0.008      # cube centre this close to the pad centre: stop
PUSH_MAX_LATERAL = 0.02       # TCP this far off the push line: lift and re-approach
MAX_PUSH_YAW = np.radians(120.0)  # beyond this, push with the other finger face
LATERAL_STEP = 0.01           # largest sideways correction per step while pushing


class ScriptedExpert:
    """Speeds in m/s; radii in m (distance to the goal where the slow-down starts and ends)."""

    def __init__(self, env: TabletopEnv, noise_std: float = 0.0, seed: int = 0,
                 fast_speed: float = 0.2, push_speed: float = 0.12, slow_speed: float = 0.025,
                 slow_radius: float = 0.04, fast_radius: float = 0.08, lateral_gain: float = 0.5):
        self.env = env
        self.noise_std = float(noise_std)
        self.lateral_gain = lateral_gain
        self.fast_speed = fast_speed
        self.push_speed = push_speed
        self.slow_speed = slow_speed
        self.slow_radius = slow_radius
        self.fast_radius = fast_radius
        self._rng = np.random.default_rng(seed)
        self.phase = 'start'
        self._episode = None

    def reset(self, seed: int | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.phase = 'start'
        self._episode = (self.env.episode_seed, self.env.instruction, self.env.step_count)

    # ------------------------------------------------------------------ helpers
    def speed_for_distance(self, distance: float, fast: float) -> float:
        """Fast beyond ``fast_radius``, slow within ``slow_radius``, linear in between."""
        if distance >= self.fast_radius:
            return fast
        if distance <= self.slow_radius:
            return self.slow_speed
        blend = (distance - self.slow_radius) / (self.fast_radius - self.slow_radius)
        return self.slow_speed + blend * (fast - self.slow_speed)

    def _toward(self, tcp, waypoint, speed) -> np.ndarray:
        delta = np.asarray(waypoint, float) - tcp
        distance = float(np.linalg.norm(delta))
        step = speed * self.env.control_dt
        return delta if distance <= step else delta / distance * step

    def _orient(self, yaw: float) -> np.ndarray:
        """Rotation step toward the tool pointing down, turned by ``yaw`` about world z."""
        desired = _yaw_rotation(yaw) @ HOME_TCP_ROTATION
        error = rotation_vector_from_matrix(desired @ self.env.tcp_pose()[1].T)
        return np.clip(error, -MAX_ROTATION_STEP, MAX_ROTATION_STEP)

    # ------------------------------------------------------------------ policy
    def act(self, obs=None) -> np.ndarray:
        env = self.env
        episode = (env.episode_seed, env.instruction)
        if self._episode is None or self._episode[:2] != episode or env.step_count < self._episode[2]:
            self.reset()
        self._episode = (*episode, env.step_count)

        tcp = env.tcp_pose()[0]
        yaw = 0.0
        if env.task.kind == 'push':
            yaw = self._push_yaw()
        if obs is not None and obs.success:
            translation = np.zeros(3)
        elif env.task.kind == 'touch':
            translation = self._touch(tcp)
        else:
            translation = self._push(tcp)
        if self.noise_std > 0:
            translation = translation + self._rng.normal(0.0, self.noise_std, 3)
        action = np.concatenate([translation, self._orient(yaw), [1.0]])
        return np.clip(action, env.action_low, env.action_high)

    def _touch(self, tcp) -> np.ndarray:
        cube = self.env.target_cube_position()
        goal = np.array([cube[0], cube[1], cube[2] + CUBE_HALF + TOUCH_CLEARANCE])
        hover = np.array([cube[0], cube[1], max(goal[2] + 0.05, HOVER_HEIGHT)])
        speed = self.speed_for_distance(float(np.linalg.norm(goal - tcp)), self.fast_speed)
        horizontal_error = float(np.linalg.norm(tcp[:2] - cube[:2]))
        # Descend once above the cube; only a clear miss (not noise) sends it back to hover.
        if self.phase == 'descend' and horizontal_error > 0.02:
            self.phase = 'hover'
        if self.phase != 'descend':
            self.phase = 'hover'
            if horizontal_error <= 0.008:
                self.phase = 'descend'
            else:
                # Above hover height go straight to the hover point; below it, climb first.
                waypoint = hover if tcp[2] >= hover[2] - 0.01 else np.array([*tcp[:2], hover[2]])
                return self._toward(tcp, waypoint, speed)
        return self._toward(tcp, goal, speed)

    def _push_yaw(self) -> float:
        """Tool yaw that puts the fingers' flat face (normal to tool x) square to the push line,
        since a flat face pushing a cube at an angle lets it slide off sideways. Preferably the
        tool's -x side (where the wrist camera sits) faces the pad, so the camera sees the cube;
        pushes back toward the robot would need a half turn of the wrist, so those use +x."""
        to_pad = self.env.target_pad_position()[:2] - self.env.target_cube_position()[:2]
        yaw = float(np.arctan2(to_pad[1], to_pad[0]))
        if abs(yaw) > MAX_PUSH_YAW:
            yaw -= np.copysign(np.pi, yaw)
        return yaw

    def _push(self, tcp) -> np.ndarray:
        env = self.env
        cube = env.target_cube_position()[:2]
        pad = env.target_pad_position()[:2]
        to_pad = pad - cube
        remaining = float(np.linalg.norm(to_pad))
        direction = to_pad / max(remaining, 1e-9)
        normal = np.array([-direction[1], direction[0]])
        standoff = cube - PUSH_STANDOFF * direction
        relative = tcp[:2] - cube
        along, lateral = float(relative @ direction), float(relative @ normal)

        if self.phase in ('start', 'approach'):
            self.phase = 'approach'
            if tcp[2] < HOVER_HEIGHT - 0.01 and np.linalg.norm(tcp[:2] - standoff) > 0.01:
                return self._toward(tcp, [*tcp[:2], HOVER_HEIGHT], self.fast_speed)
            waypoint = np.array([*standoff, HOVER_HEIGHT])
            if np.linalg.norm(waypoint[:2] - tcp[:2]) < 0.01:
                self.phase = 'lower'
            else:
                return self._toward(tcp, waypoint, self.fast_speed)
        if self.phase == 'lower':
            waypoint = np.array([*standoff, PUSH_HEIGHT])
            if np.linalg.norm(waypoint - tcp) < 0.005:
                self.phase = 'push'
            else:
                return self._toward(tcp, waypoint, self.fast_speed)
        if self.phase == 'retreat':
            if tcp[2] >= HOVER_HEIGHT - 0.005:
                self.phase = 'approach'
                return self._push(tcp)
            return self._toward(tcp, [*tcp[:2], HOVER_HEIGHT], self.fast_speed)
        if self.phase == 'done':
            if remaining <= 2 * PUSH_DONE_RADIUS:
                return np.zeros(3)
            self.phase = 'push'

        # phase == 'push'
        if remaining <= PUSH_DONE_RADIUS:
            self.phase = 'done'
            return np.zeros(3)
        if abs(lateral) > PUSH_MAX_LATERAL or along > -CUBE_HALF:
            self.phase = 'retreat'
            return self._toward(tcp, [*tcp[:2], HOVER_HEIGHT], self.fast_speed)
        speed = self.speed_for_distance(remaining, self.push_speed)
        advance = min(speed * env.control_dt, remaining)
        gap = -along - (CUBE_HALF + PUSHER_HALF_WIDTH)
        # Along the push line: close any gap to the cube (at push speed at most), then advance.
        along_step = advance if gap < 0.003 else min(gap + advance, self.push_speed * env.control_dt)
        # Across it: steer back behind the cube centre, bounded per step.
        lateral_step = float(np.clip(-self.lateral_gain * lateral, -LATERAL_STEP, LATERAL_STEP))
        delta_xy = along_step * direction + lateral_step * normal
        return np.array([*delta_xy, PUSH_HEIGHT - tcp[2]])


def _yaw_rotation(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
