"""``vla-prune collect``: scripted-expert demonstrations in the on-disk format of ``vla_prune_ros.data``.

Demonstrations are collected DART-style: the executed action is the expert's plus a slowly
varying perturbation, while the recorded label is the expert's clean action at the perturbed
state. The policy so sees states off the expert's path together with the expert's correction
from there, which is what a closed-loop policy needs after its own small errors. Each episode
draws its perturbation scale uniformly from [0, ``perturb_std``], so clean paths stay in the data.

With ``--policy CKPT`` the episodes are DAgger-style instead: the policy drives the arm for a
random number of steps (chunks executed whole, as in evaluation), then the expert takes over
from wherever the policy left the arm and finishes the episode; only the expert's part is
recorded. This adds the states a trained policy really reaches, labelled with the expert's way
out of them.

Each step also records privileged targets (``data.PRIVILEGED_NAMES``) for training-only
auxiliary losses; the policy never sees them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.demonstrations import PRIVILEGED_NAMES, write_episode, write_meta
from .cameras import camera_geometry
from .env import ACTION_NAMES, TabletopEnv
from .expert import ScriptedExpert
from .scene import CAMERA_NAMES
from .tasks import TASK_KINDS

POST_SUCCESS_STEPS = 3     # a few "hold still" steps teach the policy to stop once done
PERTURB_CORRELATION = 0.7  # AR(1) coefficient of the per-step perturbation: drifts, not jitter


def privileged_targets(env: TabletopEnv) -> np.ndarray:
    """Target cube relative to the TCP (3) and the goal relative to the cube (2: pad for push, 0 for touch)."""
    tcp = env.tcp_pose()[0]
    cube = env.target_cube_position()
    pad = env.target_pad_position()
    goal = np.zeros(2) if pad is None else pad[:2] - cube[:2]
    return np.concatenate([cube - tcp, goal]).astype(np.float32)


def drift(perturbation: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """The next step of the AR(1) translation perturbation, stationary std ``scale``."""
    return (PERTURB_CORRELATION * perturbation
            + np.sqrt(1 - PERTURB_CORRELATION ** 2) * rng.normal(0.0, scale, 3))


def policy_prefix(env: TabletopEnv, policy, obs, steps: int):
    """Let ``policy`` drive for ``steps`` control steps (whole chunks); returns the last observation."""
    cameras = policy.config.camera_names
    policy.reset()
    queue = []
    for _ in range(steps):
        if not queue:
            out = policy.infer([obs.images[c] for c in cameras], obs.proprio, obs.instruction, mode='fine')
            if not np.all(np.isfinite(out.actions)):
                break
            queue = [env.clip_action(a) for a in out.actions]
        obs = env.step(queue.pop(0))
        if obs.success:
            break
    return obs


def collect(out: Path, episodes: int, seed: int = 0, tasks: tuple[str, ...] = TASK_KINDS, image_size: int = 128,
            noise_std: float = 0.0, control_dt: float = 0.1, perturb_std: float = 0.0,
            policy_checkpoint: str | None = None, takeover_fraction: float = 0.6) -> dict:
    out = Path(out)
    env = TabletopEnv(image_size=image_size, control_dt=control_dt, seed=seed)
    write_meta(out, {'camera_names': list(CAMERA_NAMES), 'action_names': list(ACTION_NAMES),
                     'control_dt': control_dt, 'image_size': image_size, 'proprio_dim': 8,
                     'action_dim': len(ACTION_NAMES), 'source': 'vla_prune_ros.sim scripted expert',
                     'tasks': list(tasks), 'seed': seed, 'perturb_std': perturb_std,
                     'privileged_names': list(PRIVILEGED_NAMES), 'policy': policy_checkpoint,
                     'camera_geometry': camera_geometry(env)})
    policy = None
    if policy_checkpoint:
        from ..policy import VLAPolicy
        policy = VLAPolicy.from_checkpoint(policy_checkpoint, device='cpu', method='none')
    expert = ScriptedExpert(env, noise_std=noise_std, seed=seed)
    successes = 0
    try:
        for index in tqdm(range(episodes), desc='collect', dynamic_ncols=True):
            episode_seed = seed * 100_000 + index
            task = tasks[index % len(tasks)]
            obs = env.reset(task=task, seed=episode_seed)
            rng = np.random.default_rng(episode_seed + 1)
            if policy is not None:
                obs = policy_prefix(env, policy, obs, int(rng.integers(0, int(takeover_fraction * env.max_steps))))
                if obs.success:
                    continue     # nothing to correct
            expert.reset(seed=episode_seed)
            scale = rng.uniform(0.0, perturb_std)
            perturbation = np.zeros(3)
            frames = {name: [] for name in CAMERA_NAMES}
            proprio, actions, privileged = [], [], []
            hold = POST_SUCCESS_STEPS
            for _ in range(env.max_steps - env.step_count):
                action = env.clip_action(expert.act(obs))
                for name in CAMERA_NAMES:
                    frames[name].append(obs.images[name])
                proprio.append(obs.proprio)
                actions.append(action)
                privileged.append(privileged_targets(env))
                executed = action.copy()
                if scale > 0 and not obs.success:
                    perturbation = drift(perturbation, scale, rng)
                    executed[:3] += perturbation
                obs = env.step(env.clip_action(executed))
                if obs.success:
                    hold -= 1
                    if hold < 0:
                        break
            successes += int(obs.success)
            write_episode(out, index, {k: np.stack(v) for k, v in frames.items()}, np.stack(proprio),
                          np.stack(actions), env.instruction, obs.success, task, episode_seed,
                          privileged=np.stack(privileged))
    finally:
        env.close()
    return {'episodes': episodes, 'successes': successes}
