"""Print a policy's closed-loop path beside what the scripted expert would do in each visited state.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/policy_trace.py CHECKPOINT --task push --episodes 3 --seed 880

Every 4th step: TCP, target cube relative to the TCP, pad relative to the cube (push), the expert's
phase label and translation (cm) and the policy's, and both yaw steps (rad). Chunks run whole, mode fine.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.expert import ScriptedExpert


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint')
    parser.add_argument('--task', default='push')
    parser.add_argument('--episodes', type=int, default=3)
    parser.add_argument('--seed', type=int, default=880)
    args = parser.parse_args(argv)
    policy = VLAPolicy.from_checkpoint(args.checkpoint, device='cpu', method='none')
    cameras = policy.config.camera_names
    with TabletopEnv(image_size=128) as env:
        expert = ScriptedExpert(env)
        for index in range(args.episodes):
            obs = env.reset(task=args.task, seed=args.seed * 1000 + index)
            policy.reset()
            queue = []
            print(obs.instruction)
            for step in range(env.max_steps):
                if not queue:
                    out = policy.infer([obs.images[c] for c in cameras], obs.proprio, obs.instruction, mode='fine')
                    queue = [env.clip_action(a) for a in out.actions]
                labelled, action = expert.act(obs), queue.pop(0)
                tcp, cube = env.tcp_pose()[0], env.target_cube_position()
                pad = env.target_pad_position() if args.task == 'push' else cube
                if step % 4 == 0:
                    print(f'{step:3d} tcp {np.round(tcp, 3)} cube-tcp {np.round(cube[:2] - tcp[:2], 3)} '
                          f'pad-cube {np.round(pad[:2] - cube[:2], 3)} expert {expert.phase:7s} '
                          f'{np.round(labelled[:3] * 100, 1)} policy {np.round(action[:3] * 100, 1)} '
                          f'yaw expert {labelled[5]:+.2f} policy {action[5]:+.2f}')
                obs = env.step(action)
                if obs.success:
                    print('success at step', step)
                    break
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
