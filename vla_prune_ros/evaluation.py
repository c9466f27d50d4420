"""Closed-loop evaluation (``vla-prune eval``): does pruning cost task success? Same seeded scenes per method.

Runs in-process for speed (the same policy, controller and kinematics code the node runs):
per control step the measured end-effector velocity (pinocchio on the simulator's joint
states) steps the coarse/fine controller; when the queued chunk is used up, or the controller
switches coarse -> fine, the policy infers a new chunk. ``--through-ros`` runs the same
episodes through ``vla_prune_node`` and ``vla_prune_sim`` over DDS instead (``sim.ros_episodes``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .control.controller import CoarseFineController, ControllerConfig
from .paths import DEFAULT_POLICY, LIGHTVLA_POLICY


def sim_controller_config() -> ControllerConfig:
    """The controller thresholds of the simulated arm, as its robot config (config/sim_robot.yaml) sets them."""
    from .parameters import controller_config, sim_robot_parameters
    return controller_config(sim_robot_parameters())


def episode_plan(tasks: list[str], episodes: int, seed: int) -> list[tuple[str, int]]:
    """(task, seed) of each evaluation episode: tasks in turn, seeds from ``seed``."""
    return [(tasks[i % len(tasks)], seed * 1000 + i) for i in range(episodes)]


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a success rate."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(successes: list[bool], baseline: list[bool], resamples: int = 10_000,
                      seed: int = 0) -> dict:
    """Success-rate difference against ``baseline`` on the same seeds, paired by seed.

    The 95 % interval is a percentile bootstrap over seeds (resampling whole pairs keeps the
    pairing); ``mcnemar_p`` is McNemar's exact two-sided test on the discordant pairs.
    """
    a = np.asarray(successes, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError('paired_difference needs two equally long, non-empty result lists')
    differences = a - b
    draws = np.random.default_rng(seed).integers(0, len(differences), size=(resamples, len(differences)))
    low, high = np.percentile(differences[draws].mean(axis=1), [2.5, 97.5])
    only_a, only_b = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    discordant = only_a + only_b
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1)) / 2 ** discordant
    return {'delta': float(differences.mean()), 'ci95': [float(low), float(high)],
            'mcnemar_p': min(1.0, 2 * tail) if discordant else 1.0, 'only_method': only_a, 'only_baseline': only_b}


@dataclass
class EpisodeResult:
    seed: int
    task: str
    instruction: str
    success: bool
    steps: int
    inferences: int
    latencies: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    flops_ratios: list[float] = field(default_factory=list)
    fine_steps: int = 0
    task_time_s: float | None = None            # simulated seconds until success
    boundary_jumps: list[float] = field(default_factory=list)   # m per step, at each chunk boundary
    tcp_jerk: float | None = None                # mean |d³p/dt³| of the executed TCP path, m/s³
    idle_steps: int = 0                          # through ROS: control steps with no action due
    dropped_steps: list[int] = field(default_factory=list)     # through ROS: expired steps dropped per chunk


def boundary_jump(previous_action: np.ndarray | None, next_action: np.ndarray) -> float | None:
    """Change of the commanded translation (m per step) from the last executed step to the next chunk's first."""
    if previous_action is None:
        return None
    return float(np.linalg.norm(np.asarray(next_action)[:3] - np.asarray(previous_action)[:3]))


def path_jerk(positions: list[np.ndarray], dt: float) -> float | None:
    """Mean magnitude of the third finite difference of a sampled path over dt³."""
    if len(positions) < 4:
        return None
    third = np.diff(np.asarray(positions), n=3, axis=0) / dt ** 3
    return float(np.linalg.norm(third, axis=1).mean())


def run_episode(env, policy, kinematics, controller, task: str, seed: int, execute_steps: int,
                frames_out: list | None = None) -> EpisodeResult:
    obs = env.reset(task=task, seed=seed)
    policy.reset()
    controller.reset()
    kinematics.reset()
    result = EpisodeResult(seed, task, obs.instruction, False, 0, 0)
    queue: list[np.ndarray] = []
    cameras = policy.config.camera_names
    last_action, path = None, [obs.proprio[:3]]
    for _ in range(env.max_steps):
        policy.observe_frames([obs.images[c] for c in cameras])     # the frame ring at the control rate
        velocity = kinematics.update(obs.joint_names, obs.joint_positions, obs.joint_velocities, obs.time)
        decision = controller.step(velocity.linear if velocity.valid else None,
                                   velocity.angular if velocity.valid else None, bool(queue), obs.time)
        if decision.flush_queue:
            queue.clear()
        if not queue:
            speed = velocity.linear_speed if velocity.valid else None
            out = policy.infer([obs.images[c] for c in cameras], obs.proprio, obs.instruction,
                               mode=decision.mode, ee_speed=speed)
            if not np.all(np.isfinite(out.actions)):
                break    # never execute a non-finite action: the episode fails
            queue = list(env.clip_action(a) for a in out.actions[:execute_steps])
            jump = boundary_jump(last_action, queue[0])
            if jump is not None:
                result.boundary_jumps.append(jump)
            record = out.record
            result.inferences += 1
            result.latencies.append(record.timings['total'])
            result.tokens.append(record.tokens_kept)
            result.flops_ratios.append(record.flops / record.flops_unpruned)
        result.fine_steps += int(decision.mode == 'fine')
        if frames_out is not None:
            frames_out.append(env.render_rgb('primary', 256))
        last_action = queue.pop(0)
        obs = env.step(last_action)
        path.append(obs.proprio[:3])
        result.steps += 1
        if obs.success:
            result.success = True
            result.task_time_s = obs.time
            break
    result.tcp_jerk = path_jerk(path, env.control_dt)
    return result


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(results: list[EpisodeResult], baseline: list[EpisodeResult] | None = None) -> dict:
    """One method's row; with ``baseline`` (``none`` on the same episodes) also the paired difference."""
    successes = sum(r.success for r in results)
    low, high = wilson_interval(successes, len(results))
    latencies = [x for r in results for x in r.latencies]
    tokens = [x for r in results for x in r.tokens]
    ratios = [x for r in results for x in r.flops_ratios]
    steps = sum(r.steps for r in results)
    paired = {}
    if baseline is not None:
        if [(r.task, r.seed) for r in results] != [(r.task, r.seed) for r in baseline]:
            raise ValueError('a paired comparison needs the same episodes for both methods')
        difference = paired_difference([r.success for r in results], [r.success for r in baseline])
        paired = {'delta_vs_none': difference['delta'], 'delta_vs_none_ci95': difference['ci95'],
                  'mcnemar_p': difference['mcnemar_p']}
    return {'episodes': len(results), 'successes': successes, 'success_rate': successes / max(len(results), 1),
            'success_ci95': [low, high], **paired,
            'mean_task_time_s': _mean(r.task_time_s for r in results if r.success),
            'boundary_jump': _mean(x for r in results for x in r.boundary_jumps),
            'tcp_jerk': _mean(r.tcp_jerk for r in results),
            'mean_latency_ms': 1000 * float(np.mean(latencies)) if latencies else None,
            'mean_tokens_kept': float(np.mean(tokens)) if tokens else None,
            'flops_ratio': float(np.mean(ratios)) if ratios else None,
            'fine_mode_fraction': sum(r.fine_steps for r in results) / max(steps, 1),
            'per_task': {task: float(np.mean([r.success for r in results if r.task == task]))
                         for task in sorted({r.task for r in results})},
            'failed_seeds': [r.seed for r in results if not r.success]}


def parse_method(spec: str, default_checkpoint: Path) -> tuple[str, str, Path]:
    """``specprune`` or ``lightvla=PATH``: (label, method, checkpoint). LightVLA methods default to the
    LightVLA-fine-tuned policy when it is bundled."""
    label, _, path = spec.partition('=')
    method = label.split('@')[0]
    if path:
        return label, method, Path(path)
    if method.startswith('lightvla') and LIGHTVLA_POLICY.is_dir() and default_checkpoint == DEFAULT_POLICY:
        return label, method, LIGHTVLA_POLICY
    return label, method, default_checkpoint


def evaluate(args) -> dict:
    from .control.kinematics import EndEffectorVelocity
    from .policy import VLAPolicy
    from .sim.env import TabletopEnv
    from .sim.tasks import TASK_KINDS
    tasks = args.tasks.split(',') if args.tasks else list(TASK_KINDS)
    specs = [parse_method(m, Path(args.checkpoint)) for m in args.methods.split(',')]
    labels = [label for label, _, _ in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:   # the report is keyed by label: a repeat would overwrite a result
        raise ValueError(f'--methods: the label(s) {repeated} appear more than once; '
                         f'tell runs apart as METHOD@NAME=PATH, e.g. lightvla@zero_shot=PATH')
    env = TabletopEnv(image_size=args.image_size, seed=args.seed)
    kinematics = EndEffectorVelocity(env.urdf_xml, env.tcp_frame, list(env.joint_names[:6]))
    controller = CoarseFineController(sim_controller_config())
    episodes = episode_plan(tasks, args.episodes, args.seed)
    report = {'methods': {}, 'meta': {'command': args.command, 'seed': args.seed,
                                      'episodes': args.episodes, 'tasks': tasks, 'date': time.strftime('%Y-%m-%d')}}
    # `none` runs first, so every other method is compared with it on the same seeds.
    specs.sort(key=lambda spec: spec[1] != 'none')
    baseline = None
    try:
        for label, method, checkpoint in specs:
            policy = VLAPolicy.from_checkpoint(checkpoint, device=args.device, method=method)
            if getattr(args, 'compile', False):
                policy.model.use_compiled_layers()
            execute = args.execute_steps or policy.config.chunk_len
            results = []
            for task, seed in tqdm(episodes, desc=f'eval {label}', dynamic_ncols=True):
                results.append(run_episode(env, policy, kinematics, controller, task, seed, execute))
            if method == 'none' and baseline is None:
                baseline = results
            report['methods'][label] = {'method': method, 'checkpoint': str(checkpoint),
                                        **summarise(results, baseline)}
    finally:
        env.close()
    return report


def _format(value, scale: float = 1.0, digits: int = 1) -> str:
    return '–' if value is None else f'{scale * value:.{digits}f}'


def table(report: dict) -> str:
    lines = ['| method | success | 95 % CI | vs none (paired 95 % CI) | task time s | boundary jump mm | '
             'TCP jerk m/s³ | latency ms | tokens kept | FLOPs ratio | time in fine |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for label, row in report['methods'].items():
        low, high = row['success_ci95']
        paired = '–'
        if row.get('delta_vs_none') is not None and row['method'] != 'none':
            d_low, d_high = row['delta_vs_none_ci95']
            paired = f"{100 * row['delta_vs_none']:+.0f} pts ({100 * d_low:+.0f}, {100 * d_high:+.0f})"
        lines.append(f"| {label} | {row['successes']}/{row['episodes']} ({100 * row['success_rate']:.0f} %) | "
                     f"{100 * low:.0f}–{100 * high:.0f} % | {paired} | {_format(row['mean_task_time_s'], 1, 2)} | "
                     f"{_format(row['boundary_jump'], 1000)} | {_format(row['tcp_jerk'])} | "
                     f"{_format(row['mean_latency_ms'])} | {_format(row['mean_tokens_kept'], 1, 0)} | "
                     f"{_format(row['flops_ratio'], 1, 2)} | {100 * row['fine_mode_fraction']:.0f} % |")
    return '\n'.join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for label, row in report['methods'].items():
        low, high = row['success_ci95']
        rate = row['success_rate']
        axis.errorbar(row['flops_ratio'], 100 * rate, yerr=[[100 * (rate - low)], [100 * (high - rate)]],
                      fmt='o', capsize=4, label=label)
    axis.set_xlabel('FLOPs relative to unpruned')
    axis.set_ylabel('success rate (%)')
    axis.set_xlim(0, 1.05)
    axis.set_ylim(0, 105)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
