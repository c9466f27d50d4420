#!/usr/bin/env bash
# Rebuild the bundled policies (vla_prune_ros/assets/policies/{default,lightvla}) from scratch on a CPU.
#   scripts/train_default_policy.sh [WORKDIR]   (default: runs/policy; BUNDLE=1 copies the results into
#                                                the package's assets; THREADS=N torch threads, default 1;
#                                                DAGGER_ROUNDS=N, default 2, the rounds the bundle had)
# Stages, each skipped when its output is complete, so re-running the same command resumes; a training
# stage continues from its OUT/resume.pt (the full state, written every 4 minutes), so a run split
# across sittings ends where an unbroken one would:
# 1. demos:    2000 scripted-expert episodes (seeded random start pose, DART-perturbed execution,
#              privileged targets and camera geometry for the training-only losses),
# 2. base:     the default policy from scratch: sim-small preset with FiLM (OFT+), L1 on chunks plus
#              the target-position and pointing losses, EMA weights, bf16 autocast (where the CPU has
#              native bf16, training.native_bf16; fp32 otherwise),
# 3. dagger1, dagger2: DAgger rounds. The latest policy drives each episode for a random part of it, the
#              expert finishes from there and only the expert's part is recorded; the policy is then
#              fine-tuned on every demonstration so far (actions only: the auxiliary heads start anew),
# 4. lightvla: the last DAgger policy fine-tuned with LightVLA's differentiable selection in the loop.
# Wall time on the 2-core development CPU: see benchmarks/README.md ("The bundled policy").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$ROOT/runs/policy}"
VLA="$ROOT/.venv/bin/vla-prune"
THREADS="${THREADS:-1}"
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

collect demos --episodes 2000 --perturb-std 0.004 --seed 300000
train base --data "$WORK/demos" --film --steps 4200 --lr 7e-4 --warmup 200 --ema 0.999 \
  --aux-weight 0.5 --pointing-weight 1.0 --pointing-layer 2
# DAgger rounds: collect with the latest policy, fine-tune it on everything collected so far.
latest=base
data=("$WORK/demos")
for round in $(seq 1 "${DAGGER_ROUNDS:-2}"); do
  collect "dagger$round" --episodes 800 --perturb-std 0.004 --seed $((600000 + 10000 * round)) --policy "$WORK/$latest"
  data+=("$WORK/dagger$round")
  train "dagger${round}_ft" --init "$WORK/$latest" --data "${data[@]}" --steps 1500 --lr 2e-4 --warmup 50 --ema 0.999
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
