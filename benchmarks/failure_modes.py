"""How does a policy fail? Closed-loop episodes (``evaluation.run_episode``, as ``vla-prune eval``), each
failure put in one class from what the simulator saw over the whole episode.

    .venv/bin/python benchmarks/failure_modes.py CHECKPOINT --episodes 40 --seed 5151 --json OUT

touch:
  hard_hit       the gripper struck the target cube faster than TOUCH_HIT_SPEED
  knocked        the target was pushed more than TOUCH_MAX_DISPLACEMENT
  near_miss      the TCP came within 3 cm of the target's surface but never touched it gently in time
  hovered        the TCP passed within 2 cm (horizontally) of the target's centre, never within 3 cm of it
  wrong_cube     none of those, and the TCP passed within 2 cm (horizontally) of a distractor's centre
  lost           none of those
push:
  wrong_cube     a distractor moved more than 2 cm, the target less
  pushed_off     the target moved more than 2 cm but did not end (stopped) on its pad
  never_pushed   the target moved less than 2 cm
Also, over failures, the median closest approach to the target surface and to its centre in xy (mm), and
per failed touch episode its path: xy distance to the target at the start and the end, the final TCP
height, and the TCP's xy and z motion over the first chunk (mm).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

from vla_prune_ros.control.controller import CoarseFineController
from vla_prune_ros.control.kinematics import EndEffectorVelocity
from vla_prune_ros.evaluation import episode_plan, run_episode, sim_controller_config
from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.tasks import TOUCH_MAX_DISPLACEMENT

MOVED = 0.02


class WatchedEnv:
    """The environment, recording after every step what the failure classes need."""

    def __init__(self, env: TabletopEnv):
        self.env = env

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, **kwargs):
        obs = self.env.reset(**kwargs)
        task = self.env.task
        self.start = {c: self.env.cube_position(c).copy() for c in task.cube_colours}
        self.closest = {c: np.inf for c in task.cube_colours}
        self.closest_xy = {c: np.inf for c in task.cube_colours}
        self.path = []
        self._watch()
        return obs

    def step(self, action):
        obs = self.env.step(action)
        self._watch()
        return obs

    def _watch(self):
        self.path.append(self.env.tcp_pose()[0].copy())
        for colour in self.closest:
            self.closest[colour] = min(self.closest[colour], self.env.tcp_distance_to_cube(colour))
            xy = float(np.linalg.norm(self.env.tcp_pose()[0][:2] - self.env.cube_position(colour)[:2]))
            self.closest_xy[colour] = min(self.closest_xy[colour], xy)

    def moved(self, colour: str) -> float:
        return float(np.linalg.norm(self.env.cube_position(colour)[:2] - self.start[colour][:2]))


def classify(env: WatchedEnv) -> str:
    task = env.task
    others = [c for c in task.cube_colours if c != task.target_cube]
    if task.kind == 'touch':
        if env.hard_hit:
            return 'hard_hit'
        if env.moved(task.target_cube) > TOUCH_MAX_DISPLACEMENT:
            return 'knocked'
        if env.closest[task.target_cube] <= 0.03:
            return 'near_miss'
        if env.closest_xy[task.target_cube] <= 0.02:
            return 'hovered'
        if min(env.closest_xy[c] for c in others) <= 0.02:
            return 'wrong_cube'
        return 'lost'
    target_moved = env.moved(task.target_cube) > MOVED
    if not target_moved and any(env.moved(c) > MOVED for c in others):
        return 'wrong_cube'
    return 'pushed_off' if target_moved else 'never_pushed'


def touch_path(env: WatchedEnv, chunk_len: int) -> dict:
    target = env.target_cube_position()[:2]
    path = np.array(env.path)
    first = path[min(chunk_len, len(path) - 1)] - path[0]
    return {'start_xy_to_target_mm': round(1e3 * float(np.linalg.norm(path[0, :2] - target))),
            'end_xy_to_target_mm': round(1e3 * float(np.linalg.norm(path[-1, :2] - target))),
            'end_z_mm': round(1e3 * float(path[-1, 2])),
            'first_chunk_xy_mm': round(1e3 * float(np.linalg.norm(first[:2]))),
            'first_chunk_dz_mm': round(1e3 * float(first[2]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint')
    parser.add_argument('--episodes', type=int, default=40)
    parser.add_argument('--seed', type=int, default=5151)
    parser.add_argument('--json', type=Path)
    args = parser.parse_args()
    env = WatchedEnv(TabletopEnv(seed=args.seed))
    policy = VLAPolicy.from_checkpoint(args.checkpoint)
    kinematics = EndEffectorVelocity(env.urdf_xml, env.tcp_frame, list(env.joint_names[:6]))
    controller = CoarseFineController(sim_controller_config())
    counts = {kind: collections.Counter() for kind in ('touch', 'push')}
    closest = {kind: [] for kind in ('touch', 'push')}
    closest_xy = {kind: [] for kind in ('touch', 'push')}
    touch_failures = {}
    for task, seed in episode_plan(['touch', 'push'], args.episodes, args.seed):
        result = run_episode(env, policy, kinematics, controller, task, seed, policy.config.chunk_len)
        label = 'success' if result.success else classify(env)
        counts[task][label] += 1
        if not result.success:
            closest[task].append(1e3 * env.closest[env.task.target_cube])
            closest_xy[task].append(1e3 * env.closest_xy[env.task.target_cube])
            if task == 'touch':
                touch_failures[str(seed)] = {'class': label, **touch_path(env, policy.config.chunk_len)}
    report = {'command': ' '.join(sys.argv), 'checkpoint': args.checkpoint, 'seed': args.seed,
              'episodes': args.episodes,
              'classes': {kind: dict(counter) for kind, counter in counts.items()},
              'failure_closest_to_target_mm_median': {kind: float(np.median(v)) if v else None
                                                      for kind, v in closest.items()},
              'failure_closest_xy_to_target_mm_median': {kind: float(np.median(v)) if v else None
                                                         for kind, v in closest_xy.items()},
              'touch_failures': touch_failures}
    env.env.close()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
