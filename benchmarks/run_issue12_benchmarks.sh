#!/bin/sh
# The speed benchmarks of issue 12, on an otherwise idle machine (under the CPU lock), in this order.
#   sh benchmarks/run_issue12_benchmarks.sh [CHECKOUT]
# CHECKOUT (default: this one) is the tree whose code runs; results go to this checkout's benchmarks/.
# Outputs: bench_oft_scaled.{json,txt}, bench_oft_32.{json,txt}, latency_bundled_policy.{json,md,png}
set -e
here="$(cd "$(dirname "$0")/.." && pwd)"
tree="${1:-$here}"
out="$here/benchmarks"
cd "$tree"
run="$here/.venv/bin/python -m vla_prune_ros.cli"
flock /work/cpu.lock sh -c "
  $run bench --preset oft-scaled --methods none,specprune,lightvla,lightvla_star \
      --frames 8 --warmup 2 --json $out/bench_oft_scaled.json | tee $out/bench_oft_scaled.txt
  $run bench --preset oft-32 --methods none,specprune,lightvla,lightvla_star \
      --frames 6 --warmup 2 --json $out/bench_oft_32.json | tee $out/bench_oft_32.txt
  $run eval --methods none,specprune,lightvla --episodes 10 --seed 912 --json $out/latency_bundled_policy.json
"
