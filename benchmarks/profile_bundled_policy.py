"""Stage timings of the bundled policy per method (the profile behind the bundled-policy analysis).

    .venv/bin/python benchmarks/profile_bundled_policy.py [THREADS] [compile]

80 control steps of the simulated expert; every policy observes every step and infers every 8th
(mode coarse, measured speed); medians of the second pass. Prints preprocess / vision / llm / head /
pruning / total in ms, the tokens per LLM layer and the FLOPs ratio; then each method's latency against
none, its efficiency and the ceiling of both (``vla_prune_ros.benchmark.efficiency_ceiling``).
With ``compile`` the layers run through ``torch.compile`` (``VLAModel.use_compiled_layers``); the first
pass compiles, and only the second is timed.
"""
import sys

import numpy as np
import torch

from vla_prune_ros.benchmark import summarise
from vla_prune_ros.paths import DEFAULT_POLICY, LIGHTVLA_POLICY
from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.expert import ScriptedExpert


def latency_at_ceiling(row, base):
    """The latency ratio to none of a method with free pruning and an LLM exactly proportional to its FLOPs."""
    unpruned = base['latency_ms'] - base['llm_ms']
    return (unpruned + base['llm_ms'] * row['llm_gflops'] / base['llm_gflops']) / base['latency_ms']


torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
policies = {m: VLAPolicy.from_checkpoint(LIGHTVLA_POLICY if m == 'lightvla' else DEFAULT_POLICY, method=m)
            for m in ('none', 'specprune', 'lightvla')}
if 'compile' in sys.argv[2:]:
    for policy in policies.values():
        policy.model.use_compiled_layers()
config = policies['none'].config
steps = []
with TabletopEnv(image_size=config.vision.image_size, seed=3) as env:
    obs = env.reset(task='push', seed=3)
    expert = ScriptedExpert(env, seed=3)
    expert.reset(seed=3)
    for _ in range(80):
        steps.append(([obs.images[c] for c in config.camera_names], obs.proprio,
                      float(np.linalg.norm(obs.tcp_linear_velocity)), obs.instruction))
        obs = env.step(expert.act(obs))
records = {m: [] for m in policies}
for rep in range(2):
    for policy in policies.values():
        policy.reset()
    for index, (images, proprio, speed, instruction) in enumerate(steps):
        for method, policy in policies.items():
            policy.observe_frames(images)
            if index % 8 == 0:
                out = policy.infer(images, proprio, instruction, mode='coarse', ee_speed=speed)
                if rep == 1:
                    records[method].append(out.record)
for method, rows in records.items():
    stages = {k: round(1000 * float(np.median([r.timings[k] for r in rows])), 2)
              for k in ('preprocess', 'vision', 'llm', 'head', 'pruning', 'total')}
    print(method, stages, 'tokens per layer', rows[-1].layer_tokens,
          'FLOPs ratio', round(float(np.mean([r.flops / r.flops_unpruned for r in rows])), 3))
# The same rows as `vla-prune bench`: latency against none, efficiency, and its ceiling (free pruning, an LLM
# exactly proportional to its FLOPs, the unpruned stages at none's time).
summary = summarise(records, config)['methods']
for method, row in summary.items():
    print(f"{method:<10} latency x{1 / row['latency_speedup']:.3f} of none  efficiency {row['efficiency']:.3f}  "
          f"ceiling {row['efficiency_ceiling']:.3f}  latency at the ceiling x{latency_at_ceiling(row, summary['none']):.3f}")
