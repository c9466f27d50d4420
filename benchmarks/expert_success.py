"""Success of the scripted expert alone (no rendering), per task, clean or DART-perturbed as in ``collect``.

    .venv/bin/python benchmarks/expert_success.py --episodes 100 --seed 555 [--perturb-std 0.004] [--no-push-yaw]

``--no-push-yaw`` keeps the tool's yaw at home for push (the expert otherwise turns the fingers square
to the push line at the largest rotation step, a bang-bang signal the policy did not learn).
``episodes_with_a_retreat`` counts episodes where the cube slid off the push line and the expert lifted
to start again: a phase the images show late, so a policy has to infer it.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vla_prune_ros.sim.collect import drift
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.expert import ScriptedExpert
from vla_prune_ros.sim.tasks import TASK_KINDS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--episodes', type=int, default=100)
    parser.add_argument('--seed', type=int, default=555)
    parser.add_argument('--perturb-std', type=float, default=0.0)
    parser.add_argument('--no-push-yaw', action='store_true')
    args = parser.parse_args(argv)
    if args.no_push_yaw:
        ScriptedExpert._push_yaw = lambda self: 0.0
    report = {'command': 'python benchmarks/expert_success.py ' + ' '.join(argv)}
    with TabletopEnv(render_images=False) as env:
        expert = ScriptedExpert(env)
        for task in TASK_KINDS:
            solved, steps, retreated = 0, [], 0
            for index in range(args.episodes):
                seed = args.seed * 1000 + index
                obs = env.reset(task=task, seed=seed)
                expert.reset(seed=seed)
                rng = np.random.default_rng(seed + 1)
                scale, perturbation = rng.uniform(0.0, args.perturb_std), np.zeros(3)
                phases = set()
                for step in range(env.max_steps):
                    action = env.clip_action(expert.act(obs))
                    phases.add(expert.phase)
                    if scale > 0 and not obs.success:
                        perturbation = drift(perturbation, scale, rng)
                        action[:3] += perturbation
                    obs = env.step(env.clip_action(action))
                    if obs.success:
                        break
                solved += int(obs.success)
                retreated += int('retreat' in phases)
                steps.append(step + 1)
            report[task] = {'solved': solved, 'episodes': args.episodes, 'mean_steps': float(np.mean(steps)),
                            'episodes_with_a_retreat': retreated}
            print(task, report[task], flush=True)
    print(json.dumps(report))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
