#!/usr/bin/env bash
# Reproduce the bundled policies (vla_prune_ros/assets/policies/{default,lightvla}) on a CPU.
#   scripts/train_default_policy.sh [WORKDIR]     (default: runs/policy)
# 1. 600 scripted-expert demonstrations of the simulated tabletop tasks (touch / push),
# 2. the default policy trained from scratch (sim-small preset, L1 on action chunks) in two stages,
#    the second a lower-learning-rate continuation; --max-minutes caps each stage's wall time,
#    and training_args.json in each checkpoint records the steps actually done,
# 3. the LightVLA variant: the default policy fine-tuned with LightVLA's selection in the loop.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$ROOT/runs/policy}"
VLA="$ROOT/.venv/bin/vla-prune"
mkdir -p "$WORK"
time "$VLA" collect "$WORK/demos" --episodes 600 --noise-std 0.002
time "$VLA" train --data "$WORK/demos" --out "$WORK/stage1" --steps 4000 --batch-size 32 --lr 7e-4 --warmup 200 \
  --max-minutes 40
time "$VLA" train --data "$WORK/demos" --init "$WORK/stage1" --out "$WORK/default" --steps 3500 --batch-size 32 \
  --lr 3e-4 --warmup 50 --max-minutes 24
time "$VLA" train --data "$WORK/demos" --init "$WORK/default" --out "$WORK/lightvla" --method lightvla \
  --steps 600 --batch-size 32 --lr 2e-4 --warmup 50 --max-minutes 9
for name in default lightvla; do
  rm -rf "$ROOT/vla_prune_ros/assets/policies/$name"
  mkdir -p "$ROOT/vla_prune_ros/assets/policies"
  cp -r "$WORK/$name" "$ROOT/vla_prune_ros/assets/policies/$name"
done
echo "bundled: vla_prune_ros/assets/policies/{default,lightvla}"
