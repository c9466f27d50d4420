"""``vla-prune collect``: scripted-expert demonstrations in the on-disk format of ``vla_prune_ros.data``."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.demonstrations import write_episode, write_meta
from .env import ACTION_NAMES, TabletopEnv
from .expert import ScriptedExpert
from .scene import CAMERA_NAMES
from .tasks import TASK_KINDS

POST_SUCCESS_STEPS = 3     # a few "hold still" steps teach the policy to stop once done


def collect(out: Path, episodes: int, seed: int = 0, tasks: tuple[str, ...] = TASK_KINDS, image_size: int = 128,
            noise_std: float = 0.0, control_dt: float = 0.1) -> dict:
    out = Path(out)
    write_meta(out, {'camera_names': list(CAMERA_NAMES), 'action_names': list(ACTION_NAMES),
                     'control_dt': control_dt, 'image_size': image_size, 'proprio_dim': 8,
                     'action_dim': len(ACTION_NAMES), 'source': 'vla_prune_ros.sim scripted expert',
                     'tasks': list(tasks), 'seed': seed})
    env = TabletopEnv(image_size=image_size, control_dt=control_dt, seed=seed)
    expert = ScriptedExpert(env, noise_std=noise_std, seed=seed)
    successes = 0
    try:
        for index in tqdm(range(episodes), desc='collect', dynamic_ncols=True):
            episode_seed = seed * 100_000 + index
            task = tasks[index % len(tasks)]
            obs = env.reset(task=task, seed=episode_seed)
            expert.reset(seed=episode_seed)
            frames = {name: [] for name in CAMERA_NAMES}
            proprio, actions = [], []
            hold = POST_SUCCESS_STEPS
            for _ in range(env.max_steps):
                action = env.clip_action(expert.act(obs))
                for name in CAMERA_NAMES:
                    frames[name].append(obs.images[name])
                proprio.append(obs.proprio)
                actions.append(action)
                obs = env.step(action)
                if obs.success:
                    hold -= 1
                    if hold < 0:
                        break
            successes += int(obs.success)
            write_episode(out, index, {k: np.stack(v) for k, v in frames.items()}, np.stack(proprio),
                          np.stack(actions), env.instruction, obs.success, task, episode_seed)
    finally:
        env.close()
    return {'episodes': episodes, 'successes': successes}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog='vla-prune collect', description=__doc__)
    parser.add_argument('out', help='output directory')
    parser.add_argument('--episodes', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tasks', default=','.join(TASK_KINDS), help='comma-separated task kinds')
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--noise-std', type=float, default=0.0, help='expert action noise, for diversity')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = collect(Path(args.out), args.episodes, args.seed, tuple(args.tasks.split(',')), args.image_size,
                      args.noise_std)
    print(f"wrote {summary['episodes']} episodes to {args.out}; expert succeeded in {summary['successes']}")
    return 0
