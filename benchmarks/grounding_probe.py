"""Does a policy ground the instruction in the image? Its first chunk at the start of fresh touch scenes.

    .venv/bin/python benchmarks/grounding_probe.py CHECKPOINT [CHECKPOINT...] --scenes 20 --seed 9100 \
        --json benchmarks/grounding_probe.json

At the start pose (home plus a small random offset) the proprio says nothing about the target, so
only the images and the instruction can tell the policy where to go. Per checkpoint, over fresh
seeded touch scenes:
  first_step_error_mm    |policy - expert| of the first step's translation,
  expert_spread_mm       how much the expert's first step varies across scenes (the scale to beat;
                         a policy that ignores the scene scores about this as its error),
  instruction_effect_mm  how much the first step changes when only the cube colour in the
                         instruction changes (0 = language ignored),
  scene_effect_mm        how much it changes across scenes for the same instruction,
  heads_for_target       the fraction of scenes whose first chunk (summed xy motion) points closer to
                         the target cube than to either distractor (chance: 1/3),
  heading_error_deg      the median angle between that motion and the direction to the target cube.
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
    errors, experts, instruction_effects, firsts, hits, angles = [], [], [], [], [], []
    for i in range(scenes):
        obs = env.reset(task='touch', seed=seed + i)
        expert_step = ScriptedExpert(env).act(obs)[:3]
        images = [obs.images[name] for name in policy.config.camera_names]
        chunks = {colour: policy.infer(images, obs.proprio, f'touch the {colour} cube', mode='fine').actions
                  for colour in env.task.cube_colours}
        first = {colour: chunk[0, :3] for colour, chunk in chunks.items()}
        own = first[env.task.target_cube]
        motion = chunks[env.task.target_cube][:, :2].sum(axis=0)
        tcp = env.tcp_pose()[0][:2]
        cosines = [_cosine(motion, env.cube_position(colour)[:2] - tcp) for colour in env.task.cube_colours]
        target = env.task.cube_colours.index(env.task.target_cube)
        hits.append(int(np.argmax(cosines)) == target)
        angles.append(np.degrees(np.arccos(np.clip(cosines[target], -1, 1))))
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
            'scene_effect_mm': 1000 * float(scene), 'heads_for_target': float(np.mean(hits)),
            'heading_error_deg': float(np.median(angles))}


def _cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


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
             'scene effect mm | heads for target | heading error deg |', '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['first_step_error_mm']:.1f} | {r['expert_spread_mm']:.1f} | "
                     f"{r['instruction_effect_mm']:.1f} | {r['scene_effect_mm']:.1f} | {r['heads_for_target']:.2f} | "
                     f"{r['heading_error_deg']:.0f} |")
    print('\n'.join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({'command': command, 'rows': rows}, indent=2))
        Path(args.json).with_suffix('.md').write_text('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
