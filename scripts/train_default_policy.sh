#!/usr/bin/env bash
# Rebuild the bundled policies (vla_prune_ros/assets/policies/{default,lightvla}) from scratch on a CPU.
#   scripts/train_default_policy.sh [WORKDIR]   (default: runs/policy; BUNDLE=1 copies the results into
#                                                the package's assets; THREADS=N torch threads, default 2;
#                                                DAGGER_ROUNDS=N, default 2, the rounds the bundle had)
# Stages, each skipped when its output is complete, so re-running the same command resumes; a training
# stage continues from its OUT/resume.pt (the full state, written every 4 minutes), so a run split
# across sittings ends where an unbroken one would:
# 1. demos:    2000 scripted-expert episodes, two halves side by side (seeded random start pose,
#              DART-perturbed execution, privileged targets and camera geometry for the training-only
#              losses),
# 2. base:     the default policy from scratch: sim-small preset with FiLM (OFT+), L1 on chunks plus
#              the target-position (cube, pad, first waypoint) and pointing losses, EMA weights
#              (bf16 autocast where the CPU has native bf16: training.native_bf16),
# 3. dagger1, dagger2: DAgger rounds (800 episodes of both tasks, 400 more of push). The latest policy
#              drives each episode for a random part of it, the expert finishes from there and only the
#              expert's part is recorded; the policy is then fine-tuned on every demonstration so far
#              (actions only: the auxiliary heads start anew),
# 4. lightvla: the last DAgger policy fine-tuned with LightVLA's differentiable selection in the loop.
# Wall time on the 2-core development CPU: see benchmarks/README.md ("The bundled policy").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$ROOT/runs/policy}"
VLA="$ROOT/.venv/bin/vla-prune"
THREADS="${THREADS:-2}"
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
  time "$VLA" train --out "$WORK/$name" --threads "$THREADS" --batch-size 32 --bf16 --checkpoint-minutes 4 "$@"
}

# two halves side by side, one per core (one torch thread each)
OMP_NUM_THREADS=1 collect demos_a --episodes 1000 --perturb-std 0.004 --seed 310000 &
OMP_NUM_THREADS=1 collect demos_b --episodes 1000 --perturb-std 0.004 --seed 320000 &
wait
train base --data "$WORK/demos_a" "$WORK/demos_b" --film --steps 2400 --lr 7e-4 --warmup 200 --ema 0.999 \
  --aux-weight 0.5 --pointing-weight 1.0 --pointing-layer 2
# DAgger rounds: collect with the latest policy, fine-tune it on everything collected so far.
latest=base
data=("$WORK/demos_a" "$WORK/demos_b")
for round in $(seq 1 "${DAGGER_ROUNDS:-2}"); do
  OMP_NUM_THREADS=1 collect "dagger${round}_a" --episodes 400 --perturb-std 0.004 --seed $((600000 + 10000 * round)) \
    --policy "$WORK/$latest" &
  OMP_NUM_THREADS=1 collect "dagger${round}_b" --episodes 400 --perturb-std 0.004 --seed $((605000 + 10000 * round)) \
    --policy "$WORK/$latest" &
  wait
  # push is the task the policy fails: 400 more push-only relabelled episodes a round
  OMP_NUM_THREADS=1 collect "dagger${round}_push_a" --episodes 200 --tasks push --perturb-std 0.004 \
    --seed $((608000 + 10000 * round)) --policy "$WORK/$latest" &
  OMP_NUM_THREADS=1 collect "dagger${round}_push_b" --episodes 200 --tasks push --perturb-std 0.004 \
    --seed $((609000 + 10000 * round)) --policy "$WORK/$latest" &
  wait
  data+=("$WORK/dagger${round}_a" "$WORK/dagger${round}_b" "$WORK/dagger${round}_push_a" "$WORK/dagger${round}_push_b")
  train "dagger${round}_ft" --init "$WORK/$latest" --data "${data[@]}" --steps 1000 --lr 2e-4 --warmup 50 --ema 0.999
  latest="dagger${round}_ft"
done
train lightvla --init "$WORK/$latest" --data "${data[@]}" --method lightvla --steps 600 --lr 2e-4 --warmup 50 \
  --ema 0.99
echo "evaluate: $VLA eval --methods none,specprune,lightvla=$WORK/lightvla --checkpoint $WORK/$latest --episodes 100"
if [ "${BUNDLE:-0}" = 1 ]; then
  for pair in "$latest:default" lightvla:lightvla; do
    rm -rf "$ROOT/vla_prune_ros/assets/policies/${pair#*:}"
    mkdir -p "$ROOT/vla_prune_ros/assets/policies/${pair#*:}"
    cp "$WORK/${pair%%:*}"/{config.json,dataset_statistics.json,model.safetensors,tokenizer.json,tokenizer_config.json,training_args.json} \
      "$ROOT/vla_prune_ros/assets/policies/${pair#*:}/"
  done
  echo "bundled: vla_prune_ros/assets/policies/{default,lightvla}"
fi
