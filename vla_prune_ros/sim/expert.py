"""Scripted expert for the tabletop suite, using privileged simulator state.

The expert is a function of the state it acts in (TCP pose, cube and pad poses): it keeps no phase
between steps, so every action it labels can be read off the images and the proprio of that step.
An earlier expert switched between hidden phases (hover, descend, retreat, ...): a policy cannot see
which phase it is in, and one that ends up low beside the wrong spot has no demonstration of the
way out. Now the height it aims for grows with the horizontal misalignment (a funnel), so a policy
that is unsure where the target is stays high, where the wrist camera sees the cubes, and only a
small horizontal error brings it down.

It moves fast (``fast_speed``) when far from its goal and slows to ``slow_speed`` over the last few
centimetres, which is the profile the coarse/fine controller is built around:
  touch: head for the point above the target cube's top face, at a height over it of
         ``FUNNEL_SLOPE`` x the horizontal error (at most the cruise height), then settle onto it.
  push:  turn the fingers' flat face square to the cube->pad line; head for a stand-off point behind
         the cube (seen from the pad) down the same funnel; once low, behind the cube and on the
         line, push it along the line with lateral correction and stop when it is on the pad centre.
         Low but off the line, it rises first (straight up) and comes round again.
The gripper stays closed (+1) in both tasks. ``noise_std`` adds seeded Gaussian noise (metres)
to the translation for demonstration diversity.
"""
from __future__ import annotations

import numpy as np

from vla_prune_ros.sim.env import MAX_ROTATION_STEP, TabletopEnv
from vla_prune_ros.sim.scene import CUBE_HALF, HOME_TCP_ROTATION, rotation_vector_from_matrix
from vla_prune_ros.sim.tasks import PUSH_STANDOFF

CRUISE_HEIGHT = 0.14          # TCP height for travelling: the wrist camera overlooks ~20 cm of table
PUSH_HEIGHT = 0.018           # TCP height while pushing (fingertips just above the table)
TOUCH_CLEARANCE = 0.004       # final TCP height above the cube's top face
FUNNEL_SLOPE = 1.5            # aimed height above the goal per metre of horizontal error
CLIMB_MARGIN = 0.01           # more than this below the funnel: climb straight up first
PUSHER_HALF_WIDTH = 0.015     # closed fingers, half extent along tool x (the push direction)
PUSH_DONE_RADIUS = 0.008      # cube centre this close to the pad centre: stop
PUSH_MAX_LATERAL = 0.02       # TCP this far off the push line: not in a pushing position
PUSH_LOW = PUSH_HEIGHT + 0.012  # TCP at most this high counts as down at push height
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
        self.phase = 'start'      # what the last action did (a label for tests and plots, never an input)

    def reset(self, seed: int | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.phase = 'start'

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

    def _down_the_funnel(self, tcp, goal, speed) -> np.ndarray:
        """Toward ``goal`` along the funnel: aim at the goal's xy at a height over it that grows with
        the horizontal error; far below that height (e.g. low beside a cube), climb straight up first."""
        horizontal_error = float(np.linalg.norm(goal[:2] - tcp[:2]))
        height = goal[2] + min(FUNNEL_SLOPE * horizontal_error, max(CRUISE_HEIGHT - goal[2], 0.0))
        if tcp[2] < height - CLIMB_MARGIN:
            self.phase = 'climb'
            return self._toward(tcp, [*tcp[:2], height], self.fast_speed)
        self.phase = 'descend' if horizontal_error <= 0.008 else 'travel'
        return self._toward(tcp, [*goal[:2], height], speed)

    def _orient(self, yaw: float) -> np.ndarray:
        """Rotation step toward the tool pointing down, turned by ``yaw`` about world z."""
        desired = _yaw_rotation(yaw) @ HOME_TCP_ROTATION
        error = rotation_vector_from_matrix(desired @ self.env.tcp_pose()[1].T)
        return np.clip(error, -MAX_ROTATION_STEP, MAX_ROTATION_STEP)

    # ------------------------------------------------------------------ policy
    def act(self, obs=None) -> np.ndarray:
        env = self.env
        tcp = env.tcp_pose()[0]
        yaw = 0.0
        if env.task.kind == 'push':
            yaw = self._push_yaw()
        if obs is not None and obs.success:
            self.phase = 'done'
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
        speed = self.speed_for_distance(float(np.linalg.norm(goal - tcp)), self.fast_speed)
        return self._down_the_funnel(tcp, goal, speed)

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
        relative = tcp[:2] - cube
        along, lateral = float(relative @ direction), float(relative @ normal)

        if remaining <= PUSH_DONE_RADIUS:
            self.phase = 'done'
            return np.zeros(3)
        pushing = (tcp[2] <= PUSH_LOW and along <= -(CUBE_HALF + 0.005)
                   and abs(lateral) <= PUSH_MAX_LATERAL)
        if not pushing:
            standoff = np.array([*(cube - PUSH_STANDOFF * direction), PUSH_HEIGHT])
            return self._down_the_funnel(tcp, standoff, self.fast_speed)
        self.phase = 'push'
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
