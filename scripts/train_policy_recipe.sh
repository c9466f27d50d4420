#!/usr/bin/env bash
# The next policy recipe (work in progress; it has not yet beaten the bundled policy, see
# benchmarks/README.md "Why the bundled policy fails"). The bundled policies themselves come from
# scripts/train_default_policy.sh.
#   scripts/train_policy_recipe.sh [WORKDIR]   (default: runs/policy; THREADS=N sets torch threads;
#                                               BUNDLE=1 copies the result into the package's assets)
# Stages, each skipped when its output is complete, so re-running the same command resumes
# (a training stage continues from its OUT/resume.pt, written every few minutes):
# 1. demos:   1000 scripted-expert demonstrations, DART-perturbed, with privileged targets,
# 2. base:    the default policy from scratch (sim-small preset; L1 on chunks + auxiliary
#             target-position loss, EMA weights, bf16 autocast),
# 3. dagger1: 600 episodes driven by `base` for a random prefix, finished and labelled by the expert,
# 4. default: `base` fine-tuned on demos + dagger1 (the bundled default policy),
# 5. lightvla: `default` fine-tuned with LightVLA's selection in the loop.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$ROOT/runs/policy}"
VLA="$ROOT/.venv/bin/vla-prune"
THREADS="${THREADS:-0}"
mkdir -p "$WORK"

collect() {   # collect NAME ARGS...: written to NAME.partial, renamed when complete
  local name=$1; shift
  [ -f "$WORK/$name/meta.json" ] && { echo "[policy] $name: done"; return; }
  rm -rf "$WORK/$name.partial"
  time "$VLA" collect "$WORK/$name.partial" "$@"
  mv "$WORK/$name.partial" "$WORK/$name"
}
train() {     # train NAME ARGS...: resumes from NAME/resume.pt; complete once training_args.json exists
  local name=$1; shift
  [ -f "$WORK/$name/training_args.json" ] && { echo "[policy] $name: done"; return; }
  time "$VLA" train --out "$WORK/$name" --threads "$THREADS" --batch-size 32 --bf16 --ema 0.999 "$@"
}

collect demos --episodes 1000 --perturb-std 0.004 --seed 0
train base --data "$WORK/demos" --steps 3500 --lr 7e-4 --warmup 200 --aux-weight 0.5
collect dagger1 --episodes 600 --perturb-std 0.004 --seed 1 --policy "$WORK/base"
train default --init "$WORK/base" --data "$WORK/demos" "$WORK/dagger1" --steps 2000 --lr 3e-4 --warmup 100 \
  --aux-weight 0.5
train lightvla --init "$WORK/default" --data "$WORK/demos" "$WORK/dagger1" --method lightvla --steps 600 \
  --lr 2e-4 --warmup 50
echo "evaluate: $VLA eval --methods none,specprune,lightvla=$WORK/lightvla --checkpoint $WORK/default --episodes 100"
if [ "${BUNDLE:-0}" = 1 ]; then
  for name in default lightvla; do
    rm -rf "$ROOT/vla_prune_ros/assets/policies/$name"
    cp -r "$WORK/$name" "$ROOT/vla_prune_ros/assets/policies/$name"
  done
  echo "bundled: vla_prune_ros/assets/policies/{default,lightvla}"
fi
