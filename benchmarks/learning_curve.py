"""Learning curve of the bundled policy: closed-loop success against training minutes.

    .venv/bin/python benchmarks/learning_curve.py --run runs/policy --snapshots runs/snapshots \
        --episodes 40 --seed 4242 --json benchmarks/learning_curve.json

``--run`` is the work directory of ``scripts/train_default_policy.sh``; ``--snapshots`` holds
copies of its stages' ``resume.pt`` taken while they trained (``STAGE_*.pt``). Each snapshot's EMA
weights (what the stage would save) and each finished stage are evaluated with ``method=none``
on the same fresh seeds. Minutes are training wall time summed over the stages so far
(demonstration collection, about 3 + 4 min, is not counted).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from vla_prune_ros.evaluation import evaluate
from vla_prune_ros.model.checkpoint import load_checkpoint, save_checkpoint

STAGES = ('base', 'default')   # the stages that train the default policy, in order


def stage_minutes(run: Path) -> dict[str, float]:
    """Training minutes before each stage starts."""
    offsets, total = {}, 0.0
    for stage in STAGES:
        offsets[stage] = total
        record = json.loads((run / stage / 'training_args.json').read_text())
        total += record['wall_time_s'] / 60
    offsets['end'] = total
    return offsets


def snapshot_checkpoint(snapshot: Path, stage_dir: Path, out: Path) -> tuple[Path, float]:
    """The EMA weights of a resume state as a checkpoint beside the stage's config and tokenizer."""
    state = torch.load(snapshot, map_location='cpu', weights_only=False)
    model, tokenizer = load_checkpoint(stage_dir)
    weights = state.get('ema', state['model'])
    weights = {k.removeprefix('module.'): v for k, v in weights.items() if k != 'n_averaged'}
    model.load_state_dict(weights)
    stats = json.loads((stage_dir / 'dataset_statistics.json').read_text())
    save_checkpoint(model, tokenizer, out, stats)
    return out, state['wall_time_s'] / 60


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run', required=True)
    parser.add_argument('--snapshots', required=True)
    parser.add_argument('--episodes', type=int, default=40)
    parser.add_argument('--seed', type=int, default=4242)
    parser.add_argument('--json', required=True)
    args = parser.parse_args(argv)
    run, offsets = Path(args.run), stage_minutes(Path(args.run))
    scratch = Path(tempfile.mkdtemp(prefix='learning_curve_'))
    points = []
    candidates = [(stage, path) for stage in STAGES for path in sorted(Path(args.snapshots).glob(f'{stage}_*.pt'))]
    candidates += [(stage, None) for stage in STAGES]
    for stage, snapshot in candidates:
        if snapshot is None:
            checkpoint = run / stage
            minutes = json.loads((checkpoint / 'training_args.json').read_text())['wall_time_s'] / 60
        else:
            checkpoint, minutes = snapshot_checkpoint(snapshot, run / stage, scratch / snapshot.stem)
        report = evaluate(argparse.Namespace(methods='none', checkpoint=str(checkpoint), episodes=args.episodes,
                                             seed=args.seed, tasks='', image_size=128, execute_steps=0, device='cpu',
                                             command=''))
        row = report['methods']['none']
        points.append({'stage': stage, 'snapshot': snapshot.name if snapshot else 'final',
                       'training_minutes': round(offsets[stage] + minutes, 1), 'success_rate': row['success_rate'],
                       'success_ci95': row['success_ci95'], 'per_task': row['per_task']})
        print(json.dumps(points[-1]), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    points.sort(key=lambda p: p['training_minutes'])
    command = 'python benchmarks/learning_curve.py ' + ' '.join(argv)
    out = Path(args.json)
    out.write_text(json.dumps({'command': command, 'episodes': args.episodes, 'seed': args.seed,
                               'points': points}, indent=2))
    lines = [f'`{command}`', '', '| training minutes | stage | success | 95 % CI | touch | push |', '|---|---|---|---|---|---|']
    for p in points:
        low, high = p['success_ci95']
        lines.append(f"| {p['training_minutes']} | {p['stage']} ({p['snapshot']}) | {100 * p['success_rate']:.0f} % | "
                     f"{100 * low:.0f}–{100 * high:.0f} % | {100 * p['per_task'].get('touch', 0):.0f} % | "
                     f"{100 * p['per_task'].get('push', 0):.0f} % |")
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    plot(points, out.with_suffix('.png'))
    print(f'wrote {out}')
    return 0


def plot(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(5, 3.5))
    minutes = [p['training_minutes'] for p in points]
    axis.plot(minutes, [100 * p['success_rate'] for p in points], 'o-', label='both tasks')
    for task in ('touch', 'push'):
        axis.plot(minutes, [100 * p['per_task'].get(task, 0) for p in points], '.--', label=task)
    axis.set_xlabel('training minutes (this 2-core CPU)')
    axis.set_ylabel('success rate (%)')
    axis.set_ylim(0, 105)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
