"""The tasks of the tabletop suite: what a scene holds, how it is drawn, and what counts as success.

Tasks (language instruction + distractors):
  touch: "touch the {colour} cube". Success: the TCP is within ``TOUCH_DISTANCE`` of the cube
         surface (or a gripper geom contacts the cube) and moves slower than ``TOUCH_MAX_SPEED``,
         the cube was not knocked more than ``TOUCH_MAX_DISPLACEMENT``, and the gripper never
         struck it: contact while the TCP moves faster than ``TOUCH_HIT_SPEED`` (checked every
         physics substep) fails the episode. So an imprecise fast approach fails; only a slow
         (or perfectly precise) final approach succeeds.
  push:  "push the {colour} cube onto the {colour} pad". Success: the cube centre lies on the pad
         (inside its square), the cube is on the table and has (nearly) stopped, slower than
         ``PUSH_MAX_CUBE_SPEED``; pushing it across the pad at speed does not count.
Success is latched: once reached in an episode, ``SimObservation.success`` stays True.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .scene import COLOUR_NAMES, CUBE_HALF, NUM_CUBES, NUM_PADS, PAD_HALF

TASK_KINDS = ('touch', 'push')

# Episode length in seconds per task; ``max_steps`` is this over ``control_dt``.
TASK_SECONDS = {'touch': 6.0, 'push': 12.0}

TOUCH_DISTANCE = 0.015        # TCP to cube surface
TOUCH_MAX_SPEED = 0.05        # m/s, a touch must be gentle
TOUCH_MAX_DISPLACEMENT = 0.02  # the touched cube must not be knocked away
TOUCH_HIT_SPEED = 0.1         # m/s, gripper contact with the cube faster than this is a hit
PUSH_MAX_CUBE_SPEED = 0.04    # m/s, the pushed cube must have stopped on the pad

# Where objects are sampled (robot base at the origin, table top at z = 0).
OBJECT_X_RANGE = (0.30, 0.54)
OBJECT_Y_RANGE = (-0.20, 0.20)
REACH_RADIUS = (0.25, 0.58)   # horizontal TCP distance from the base axis that IK handles well
PUSH_DISTANCE_RANGE = (0.12, 0.25)
PUSH_STANDOFF = 0.07          # the expert starts a push this far behind the cube centre
# The TCP starts this far (uniform, per axis) from the home position, so the arm's position along
# its approach does not reveal where it is heading: only the images and the instruction do.
START_OFFSET_RANGE = np.array([0.05, 0.08, 0.03])


@dataclasses.dataclass
class TaskSpec:
    kind: str
    instruction: str
    target_cube: str                     # colour of the cube to touch / push
    target_pad: str | None               # colour of the goal pad (push only)
    cube_colours: tuple[str, ...]
    cube_positions: np.ndarray           # (NUM_CUBES, 2) xy
    cube_yaws: np.ndarray                # (NUM_CUBES,)
    pad_colours: tuple[str, ...]
    pad_positions: np.ndarray            # (NUM_PADS, 2) xy
    start_offset: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))  # TCP start - home



# ----------------------------------------------------------------------------- scene sampling

def _point_segment_distance(point, start, end) -> float:
    segment = end - start
    t = np.clip(np.dot(point - start, segment) / max(np.dot(segment, segment), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(point - (start + t * segment)))


def _reachable(xy) -> bool:
    return REACH_RADIUS[0] <= float(np.hypot(*xy)) <= REACH_RADIUS[1]


def sample_task(rng: np.random.Generator, kind: str) -> TaskSpec:
    """Draw colours and a collision-free layout; for push, keep the push corridor clear."""
    if kind not in TASK_KINDS:
        raise ValueError(f'unknown task kind {kind!r}; expected one of {TASK_KINDS}')

    def uniform_xy():
        return np.array([rng.uniform(*OBJECT_X_RANGE), rng.uniform(*OBJECT_Y_RANGE)])

    for _ in range(10000):
        cube_colours = tuple(str(c) for c in rng.permutation(COLOUR_NAMES)[:NUM_CUBES])
        pad_colours = tuple(str(c) for c in rng.permutation(COLOUR_NAMES)[:NUM_PADS])
        pads = [uniform_xy() for _ in range(NUM_PADS)]
        cubes = [uniform_xy() for _ in range(NUM_CUBES)]
        yaws = rng.uniform(-np.pi / 4, np.pi / 4, NUM_CUBES)
        if np.linalg.norm(pads[0] - pads[1]) < 2 * PAD_HALF + 0.04:
            continue
        if any(np.linalg.norm(cubes[i] - cubes[j]) < 0.09
               for i in range(NUM_CUBES) for j in range(i)):
            continue
        # No cube starts on (or touching) a pad.
        if any(np.max(np.abs(c - p)) < PAD_HALF + CUBE_HALF * 1.5 for c in cubes for p in pads):
            continue
        if not all(_reachable(xy) for xy in cubes + pads):
            continue
        # Cube 0 is the target; its colour is random, so the slot carries no information.
        if kind == 'push':
            offset = pads[0] - cubes[0]
            distance = float(np.linalg.norm(offset))
            if not PUSH_DISTANCE_RANGE[0] <= distance <= PUSH_DISTANCE_RANGE[1]:
                continue
            direction = offset / distance
            standoff = cubes[0] - PUSH_STANDOFF * direction
            if not _reachable(standoff) or not _reachable(pads[0] + 0.03 * direction):
                continue
            if any(_point_segment_distance(c, standoff, pads[0] + 0.03 * direction) < 0.07
                   for c in cubes[1:]):
                continue
            instruction = f'push the {cube_colours[0]} cube onto the {pad_colours[0]} pad'
            target_pad = pad_colours[0]
        else:
            instruction = f'touch the {cube_colours[0]} cube'
            target_pad = None
        return TaskSpec(
            kind=kind, instruction=instruction, target_cube=cube_colours[0], target_pad=target_pad,
            cube_colours=cube_colours, cube_positions=np.array(cubes), cube_yaws=np.array(yaws),
            pad_colours=pad_colours, pad_positions=np.array(pads),
            start_offset=rng.uniform(-START_OFFSET_RANGE, START_OFFSET_RANGE))
    raise RuntimeError('could not sample a valid scene layout')


def task_succeeded(env, tcp_linear_velocity: np.ndarray) -> bool:
    """Whether ``env`` (a TabletopEnv) is in its task's success state right now (see the module docstring)."""
    task = env.task
    if task.kind == 'touch':
        close = (env.tcp_distance_to_cube(task.target_cube) <= TOUCH_DISTANCE
                 or env.gripper_touches(task.target_cube))
        gentle = float(np.linalg.norm(tcp_linear_velocity)) <= TOUCH_MAX_SPEED
        moved = np.linalg.norm(env.cube_position(task.target_cube)[:2] - env.touch_start[:2])
        return bool(close and gentle and moved <= TOUCH_MAX_DISPLACEMENT and not env.hard_hit)
    stopped = float(np.linalg.norm(env.cube_velocity(task.target_cube))) <= PUSH_MAX_CUBE_SPEED
    return bool(stopped and env.cube_on_pad(task.target_cube, task.target_pad))
