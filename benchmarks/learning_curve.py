"""Learning curve of the bundled policy: closed-loop success against training minutes.

    .venv/bin/python benchmarks/learning_curve.py --run runs/policy --snapshots runs/snapshots \
        --episodes 30 --seed 4242 --json benchmarks/learning_curve.json

``--run`` is the work directory of ``scripts/train_default_policy.sh``; ``--snapshots`` holds copies
of its training stages' ``OUT/latest`` taken while they trained (``base_stepNNNNN``, then
``dagger1_ft_stepNNNNN``, ...; each is the EMA weights the stage would have saved then, with
``progress.json``). Each snapshot and each finished stage are evaluated with ``method=none`` on the
same fresh seeds. Minutes are training wall time, summed over the stages so far: each DAgger
fine-tune continues from the stage before, so its minutes start where that one's end (collecting
demonstrations and the DAgger roll-outs are not counted).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from vla_prune_ros.evaluation import evaluate


def stages():
    """The stages that train the default policy, in order: base, then as many DAgger rounds as ran
    (``DAGGER_ROUNDS`` of the training script); the caller stops at the first one missing."""
    yield 'base'
    yield from (f'dagger{round_}_ft' for round_ in itertools.count(1))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run', required=True)
    parser.add_argument('--snapshots', required=True)
    parser.add_argument('--episodes', type=int, default=30)
    parser.add_argument('--seed', type=int, default=4242)
    parser.add_argument('--every', type=int, default=1, help='evaluate every N-th snapshot')
    parser.add_argument('--json', required=True)
    args = parser.parse_args(argv)
    candidates, minutes_before = [], 0.0
    for stage in stages():
        final = Path(args.run) / stage
        if not (final / 'training_args.json').is_file():
            break
        snapshots = sorted(Path(args.snapshots).glob(f'{stage}_step*'))[args.every - 1::args.every]
        record = json.loads((final / 'training_args.json').read_text())
        for snapshot in snapshots:
            progress = json.loads((snapshot / 'progress.json').read_text())
            candidates.append((snapshot, stage, progress['step'], minutes_before + progress['wall_time_s'] / 60))
        candidates.append((final, stage, record['steps_done'], minutes_before + record['wall_time_s'] / 60))
        minutes_before += record['wall_time_s'] / 60
    points = []
    for checkpoint, stage, step, minutes in candidates:
        report = evaluate(argparse.Namespace(methods='none', checkpoint=str(checkpoint), episodes=args.episodes,
                                             seed=args.seed, tasks='', image_size=128, execute_steps=0, device='cpu',
                                             command=''))
        row = report['methods']['none']
        points.append({'snapshot': checkpoint.name, 'stage': stage, 'step': step,
                       'training_minutes': round(minutes, 1), 'success_rate': row['success_rate'],
                       'success_ci95': row['success_ci95'], 'per_task': row['per_task']})
        print(json.dumps(points[-1]), flush=True)
    points.sort(key=lambda p: p['training_minutes'])
    command = 'python benchmarks/learning_curve.py ' + ' '.join(argv)
    out = Path(args.json)
    out.write_text(json.dumps({'command': command, 'episodes': args.episodes, 'seed': args.seed,
                               'points': points}, indent=2))
    lines = [f'`{command}`', '', '| training minutes | stage | step | success | 95 % CI | touch | push |',
             '|---|---|---|---|---|---|---|']
    for p in points:
        low, high = p['success_ci95']
        lines.append(f"| {p['training_minutes']} | {p['stage']} | {p['step']} | {100 * p['success_rate']:.0f} % | "
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
