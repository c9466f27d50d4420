"""Does a policy act on the task word? Each push scene is run twice from the same start: once with its
push instruction, once with "touch the {same colour} cube". Everything the cameras and proprio show is the
same; only the instruction differs.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/task_word_probe.py CHECKPOINT --episodes 50 --seed 1618 [--steps 16] --json OUT

The policy drives ``--steps`` control steps (whole chunks, mode fine). Per instruction it reports, over the
scenes, the median horizontal distance from the TCP to the cube and to the push stand-off point (where the
push expert goes first), the median lowest TCP height, and the median distance between the two runs' final
TCP positions; the scripted push expert, run the same number of steps, is the reference (``push_expert``).
A policy that reads the task word ends nearer the stand-off point under the push instruction, and nearer
the cube under the touch one.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.expert import ScriptedExpert
from vla_prune_ros.sim.tasks import PUSH_STANDOFF


def rollout(env, policy, seed: int, instruction: str | None, steps: int) -> tuple[np.ndarray, float]:
    """Final TCP position and lowest TCP height over ``steps`` control steps of ``policy`` (a VLAPolicy, or
    the scripted expert when None) from the scene."""
    obs = env.reset(task='push', seed=seed)
    expert = None
    if policy is None:
        expert = ScriptedExpert(env)
        expert.reset(seed=seed)
    else:
        policy.reset()
        cameras = policy.config.camera_names
    queue, lowest = [], float(obs.proprio[2])
    for _ in range(steps):
        if expert is not None:
            queue = [expert.act(obs)]
        elif not queue:
            out = policy.infer([obs.images[c] for c in cameras], obs.proprio, instruction or obs.instruction,
                               mode='fine')
            queue = [env.clip_action(a) for a in out.actions]
        obs = env.step(queue.pop(0))
        lowest = min(lowest, float(env.tcp_pose()[0][2]))
    return env.tcp_pose()[0], lowest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint')
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--seed', type=int, default=1618)
    parser.add_argument('--steps', type=int, default=16)
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    policy = VLAPolicy.from_checkpoint(args.checkpoint, device='cpu', method='none')
    rows = {'push': [], 'touch': [], 'push_expert': []}
    apart = []
    with TabletopEnv(image_size=policy.config.vision.image_size) as env:
        for index in range(args.episodes):
            seed = args.seed * 1000 + index
            env.reset(task='push', seed=seed)
            cube, pad = env.target_cube_position()[:2], env.target_pad_position()[:2]
            direction = (pad - cube) / np.linalg.norm(pad - cube)
            standoff = cube - PUSH_STANDOFF * direction
            finals = {}
            runs = (('push', policy, None), ('touch', policy, f'touch the {env.task.target_cube} cube'),
                    ('push_expert', None, None))
            for word, driver, instruction in runs:
                final, lowest = rollout(env, driver, seed, instruction, args.steps)
                finals[word] = final
                rows[word].append((np.linalg.norm(final[:2] - cube), np.linalg.norm(final[:2] - standoff), lowest))
            apart.append(np.linalg.norm(finals['push'] - finals['touch']))
    report = {'command': 'python benchmarks/task_word_probe.py ' + ' '.join(argv), 'episodes': args.episodes,
              'steps': args.steps, 'final_tcp_apart_mm_median': round(1000 * float(np.median(apart)), 1)}
    for word, values in rows.items():
        values = np.array(values)
        report[word] = {'to_cube_mm_median': round(1000 * float(np.median(values[:, 0])), 1),
                        'to_standoff_mm_median': round(1000 * float(np.median(values[:, 1])), 1),
                        'nearer_standoff_than_cube': int(np.sum(values[:, 1] < values[:, 0])),
                        'lowest_tcp_mm_median': round(1000 * float(np.median(values[:, 2])), 1)}
        print(word, report[word], flush=True)
    print('final TCP apart (mm, median):', report['final_tcp_apart_mm_median'])
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
