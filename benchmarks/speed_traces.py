"""Measured TCP speed traces of the simulated arm under the scripted expert, and what they imply for
the coarse/fine controller's dwell time and SpecPrune's Δ speed scale.

    .venv/bin/python benchmarks/speed_traces.py --episodes 20 --json benchmarks/speed_traces.json

Per control step the end-effector twist is measured as the node measures it (pinocchio J(q)·q̇ on
the simulator's joint states). For each candidate dwell the controller is replayed over the traces:
how often it switches, how often a switch is undone within one chunk (chatter), the share of steps
in fine, and how many steps of the queued chunk a coarse→fine flush still saves.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def traces(episodes: int, seed: int) -> tuple[list[dict], float]:
    from vla_prune_ros.control.kinematics import EndEffectorVelocity
    from vla_prune_ros.sim.env import TabletopEnv
    from vla_prune_ros.sim.expert import ScriptedExpert
    out = []
    with TabletopEnv(image_size=56, seed=seed) as env:
        kinematics = EndEffectorVelocity(env.urdf_xml, env.tcp_frame, list(env.joint_names[:6]))
        for index in range(episodes):
            task = ('touch', 'push')[index % 2]
            obs = env.reset(task=task, seed=seed * 1000 + index)
            kinematics.reset()
            expert = ScriptedExpert(env, seed=seed * 1000 + index)
            expert.reset(seed=seed * 1000 + index)
            linear, angular, stamps = [], [], []
            for _ in range(env.max_steps):
                v = kinematics.update(obs.joint_names, obs.joint_positions, obs.joint_velocities, obs.time)
                linear.append(v.linear if v.valid else [np.nan] * 3)
                angular.append(v.angular if v.valid else [np.nan] * 3)
                stamps.append(obs.time)
                obs = env.step(expert.act(obs))
                if obs.success:
                    break
            out.append(dict(task=task, linear=np.array(linear), angular=np.array(angular), stamps=np.array(stamps)))
        return out, env.control_dt


def replay_controller(trace: dict, dwell: float, chunk: int) -> dict:
    from vla_prune_ros.control.controller import CoarseFineController
    from vla_prune_ros.evaluation import sim_controller_config
    controller = CoarseFineController(sim_controller_config().replace(min_dwell_time=dwell))
    queue, modes, switches, saved = 0, [], [], []
    for step, (linear, angular, stamp) in enumerate(zip(trace['linear'], trace['angular'], trace['stamps'])):
        valid = np.all(np.isfinite(linear))
        decision = controller.step(linear if valid else None, angular if valid else None, queue > 0, stamp)
        if decision.switched:
            switches.append((step, decision.mode))
        if decision.flush_queue:
            saved.append(queue)          # steps of the coarse chunk not executed thanks to the flush
            queue = 0
        if queue == 0:
            queue = chunk
        queue -= 1
        modes.append(decision.mode)
    undone = sum(1 for (s0, _), (s1, _) in zip(switches, switches[1:]) if s1 - s0 < chunk)
    return dict(switches=len(switches), undone_within_a_chunk=undone, fine=float(np.mean([m == 'fine' for m in modes])),
                flush_saved_steps=saved)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--seed', type=int, default=7)
    parser.add_argument('--chunk', type=int, default=8)
    parser.add_argument('--json')
    args = parser.parse_args()
    runs, dt = traces(args.episodes, args.seed)
    speeds = np.concatenate([np.linalg.norm(r['linear'], axis=1) for r in runs])
    speeds = speeds[np.isfinite(speeds)]
    # Step-to-step change of the measured speed: how noisy the controller's input is.
    jitter = np.concatenate([np.abs(np.diff(np.linalg.norm(r['linear'], axis=1))) for r in runs])
    jitter = jitter[np.isfinite(jitter)]
    report = {'command': 'python benchmarks/speed_traces.py ' + ' '.join(
        f'--{k.replace("_", "-")} {v}' for k, v in vars(args).items() if v is not None and k != 'json'),
        'control_dt': dt, 'steps': int(len(speeds)),
        'speed_percentiles_m_s': {p: float(np.percentile(speeds, p)) for p in (5, 25, 50, 75, 90, 95, 99)},
        'speed_change_per_step_percentiles_m_s': {p: float(np.percentile(jitter, p)) for p in (50, 90, 99)},
        'dwell': {}}
    for dwell in (0.0, 0.1, 0.2, 0.3, 0.5):
        rows = [replay_controller(r, dwell, args.chunk) for r in runs]
        saved = [s for row in rows for s in row['flush_saved_steps']]
        report['dwell'][str(dwell)] = {
            'switches_per_episode': float(np.mean([row['switches'] for row in rows])),
            'undone_within_a_chunk_per_episode': float(np.mean([row['undone_within_a_chunk'] for row in rows])),
            'fine_fraction': float(np.mean([row['fine'] for row in rows])),
            'flushes_per_episode': len(saved) / len(rows),
            'mean_steps_saved_per_flush': float(np.mean(saved)) if saved else 0.0}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, 'w') as handle:
            handle.write(text + '\n')


if __name__ == '__main__':
    main()
