"""Teacher-forced first-chunk error of a policy through its inference path, on demonstration episodes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/teacher_forced.py CHECKPOINT DEMOS EPISODES

Every 4th step of the first EPISODES successful episodes: VLAPolicy.infer on the recorded frames, proprio
and instruction, against the demonstration's chunk. Per-step xyz L1 (mm) against the median action's, and
the first chunk's summed-displacement error (mm) against the median action's. Run it on the training
demonstrations and on fresh ones: equal errors mean underfit, a gap means memorised.
"""
import sys, numpy as np, torch
from pathlib import Path
from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.data.demonstrations import load_episodes, action_chunk
torch.set_num_threads(1)
ckpt, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
policy = VLAPolicy.from_checkpoint(ckpt, device='cpu', method='none')
meta, eps = load_episodes(Path(data), limit=n)
cams = policy.config.camera_names
errs, first, mean_err, first_mean = [], [], [], []
allact = np.concatenate([e.actions for e in eps])
mu = np.median(allact, 0)
for e in eps:
    policy.reset()
    for t in range(0, len(e), 4):
        out = policy.infer([e.frames[c][t] for c in cams], e.proprio[t], e.instruction)
        chunk = action_chunk(e.actions, t, policy.config.chunk_len)
        err = np.abs(out.actions[:, :3] - chunk[:, :3]).mean() * 1000
        base = np.abs(mu[:3] - chunk[:, :3]).mean() * 1000
        errs.append(err); mean_err.append(base)
        if t == 0:
            first.append(np.linalg.norm((out.actions[:, :3] - chunk[:, :3]).sum(0)) * 1000)
            first_mean.append(np.linalg.norm((mu[:3] - chunk[:, :3]).sum(0)) * 1000)
print(f'episodes {len(eps)}: per-step xyz L1 {np.mean(errs):.2f} mm (median-action baseline {np.mean(mean_err):.2f}); '
      f'first chunk displacement error {np.mean(first):.1f} mm (baseline {np.mean(first_mean):.1f})')
