"""Is LightVLA's success loss its train/inference gap? The same LightVLA fine-tune, closed loop on the same
seeds, selecting two ways:

- ``union``: inference as the method defines it, each chosen patch once (``vla-prune eval``'s lightvla);
- ``as_trained``: the training forward without noise, every patch row replaced by the patch its query
  chose, so a patch chosen by many queries appears many times, each copy at that patch's position.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lightvla_duplicates_probe.py --episodes 100 --seed 9931 --json OUT

The two share the selection (the argmax of every query row); only the copies differ. If ``as_trained`` solves
what ``none`` solves and ``union`` does not, the loss comes from the copies the model learnt to rely on.
``--modes union --min-visual-tokens N`` instead asks whether the union's few patches are the limit: the
union topped up to N patches by their best score.
"""
from __future__ import annotations

import argparse
import json
import sys

from vla_prune_ros.control.controller import CoarseFineController
from vla_prune_ros.control.kinematics import EndEffectorVelocity
from vla_prune_ros.evaluation import episode_plan, run_episode, sim_controller_config, summarise
from vla_prune_ros.paths import LIGHTVLA_POLICY
from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.tasks import TASK_KINDS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', default=str(LIGHTVLA_POLICY))
    parser.add_argument('--episodes', type=int, default=100)
    parser.add_argument('--seed', type=int, default=9931)
    parser.add_argument('--modes', default='union,as_trained')
    parser.add_argument('--min-visual-tokens', type=int, default=1,
                        help="lightvla.min_visual_tokens for the union (the inference floor)")
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    episodes = episode_plan(list(TASK_KINDS), args.episodes, args.seed)
    report = {'command': 'python benchmarks/lightvla_duplicates_probe.py ' + ' '.join(argv), 'modes': {}}
    with TabletopEnv(seed=args.seed) as env:
        kinematics = EndEffectorVelocity(env.urdf_xml, env.tcp_frame, list(env.joint_names[:6]))
        controller = CoarseFineController(sim_controller_config())
        for mode in args.modes.split(','):
            policy = VLAPolicy.from_checkpoint(args.checkpoint, device='cpu', method='lightvla',
                                               method_options={'min_visual_tokens': args.min_visual_tokens})
            if mode == 'as_trained':
                policy.method.train(True)
                policy.method.set_noise_scale(0.0)
            results = [run_episode(env, policy, kinematics, controller, task, seed, policy.config.chunk_len)
                       for task, seed in episodes]
            row = summarise(results, None)
            report['modes'][mode] = {key: row[key] for key in ('successes', 'episodes', 'success_rate',
                                                               'success_ci95', 'per_task', 'failed_seeds')}
            report['modes'][mode]['mean_tokens_kept'] = row['mean_tokens_kept']
            print(mode, row['successes'], '/', row['episodes'], row['per_task'], 'tokens', row['mean_tokens_kept'],
                  flush=True)
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
