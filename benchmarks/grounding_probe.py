"""Does a policy ground the instruction in the image? Its first chunk at the start of fresh touch scenes.

    .venv/bin/python benchmarks/grounding_probe.py CHECKPOINT [CHECKPOINT...] --scenes 20 --seed 9100 \
        --json benchmarks/grounding_probe.json

At the home pose the proprio is the same in every scene, so only the images and the instruction
can tell the policy where to go. Per checkpoint, over fresh seeded touch scenes:
  first_step_error_mm    |policy - expert| of the first step's translation,
  expert_spread_mm       how much the expert's first step varies across scenes (the scale to beat;
                         a policy that ignores the scene scores about this as its error),
  instruction_effect_mm  how much the first step changes when only the cube colour in the
                         instruction changes (0 = language ignored),
  scene_effect_mm        how much it changes across scenes for the same instruction.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.expert import ScriptedExpert


def probe(checkpoint: str, env: TabletopEnv, scenes: int, seed: int) -> dict:
    policy = VLAPolicy.from_checkpoint(checkpoint)
    errors, experts, instruction_effects, firsts = [], [], [], []
    for i in range(scenes):
        obs = env.reset(task='touch', seed=seed + i)
        expert_step = ScriptedExpert(env).act(obs)[:3]
        images = [obs.images[name] for name in policy.config.camera_names]
        first = {colour: policy.infer(images, obs.proprio, f'touch the {colour} cube', mode='fine').actions[0, :3]
                 for colour in env.task.cube_colours}
        own = first[env.task.target_cube]
        errors.append(np.linalg.norm(own - expert_step))
        experts.append(expert_step)
        firsts.append(own)
        instruction_effects += [np.linalg.norm(own - other) for colour, other in first.items()
                                if colour != env.task.target_cube]
    experts, firsts = np.array(experts), np.array(firsts)
    spread = np.linalg.norm(experts - experts.mean(0), axis=1).mean()
    scene = np.linalg.norm(firsts - firsts.mean(0), axis=1).mean()
    return {'checkpoint': checkpoint, 'first_step_error_mm': 1000 * float(np.mean(errors)),
            'expert_spread_mm': 1000 * float(spread), 'instruction_effect_mm': 1000 * float(np.mean(instruction_effects)),
            'scene_effect_mm': 1000 * float(scene)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoints', nargs='+')
    parser.add_argument('--scenes', type=int, default=20)
    parser.add_argument('--seed', type=int, default=9100)
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    with TabletopEnv(image_size=128) as env:
        rows = [probe(c, env, args.scenes, args.seed) for c in args.checkpoints]
    command = 'python benchmarks/grounding_probe.py ' + ' '.join(argv)
    lines = [f'`{command}`', '', '| checkpoint | first-step error mm | expert spread mm | instruction effect mm | '
             'scene effect mm |', '|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['first_step_error_mm']:.1f} | {r['expert_spread_mm']:.1f} | "
                     f"{r['instruction_effect_mm']:.1f} | {r['scene_effect_mm']:.1f} |")
    print('\n'.join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({'command': command, 'rows': rows}, indent=2))
        Path(args.json).with_suffix('.md').write_text('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
