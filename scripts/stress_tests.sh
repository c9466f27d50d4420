#!/usr/bin/env bash
# Run the ROS tests (real nodes over real DDS) while a CPU load generator keeps every core busy beside
# them, RUNS times in a row (default 3); stop at the first failing run. The tests wait on observable
# conditions, so a loaded machine may make them slower, never red.
#
#   scripts/stress_tests.sh [RUNS] [extra pytest args]     # e.g. scripts/stress_tests.sh 3
#
# Uses .venv (scripts/install.sh). The load generator is one busy Python loop per core, at the tests'
# own priority; it is stopped (by its process ids) when the script ends, however it ends.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
RUNS="${1:-3}"
shift || true
TESTS=(test/test_node_e2e.py test/test_node_bad_input.py test/test_node_robustness.py test/test_large_frames.py
       test/test_recording.py test/test_node_async.py test/test_sim_async.py test/test_pulled_joint_states.py)
CORES="$(nproc)"

load_pids=()
stop_load() {
  for pid in "${load_pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${load_pids[@]}"; do wait "$pid" 2>/dev/null; done
  load_pids=()
}
trap stop_load EXIT INT TERM

cd "$ROOT"
for run in $(seq 1 "$RUNS"); do
  for _ in $(seq 1 "$CORES"); do
    "$PY" -c 'while True: pass' &
    load_pids+=("$!")
  done
  echo "[stress] run $run/$RUNS: ${#TESTS[@]} test files beside $CORES busy loops ($(date +%H:%M:%S))"
  start=$(date +%s)
  "$PY" -m pytest -q "${TESTS[@]}" "$@"
  code=$?
  stop_load
  echo "[stress] run $run/$RUNS: exit $code after $(( $(date +%s) - start )) s"
  if [ "$code" -ne 0 ]; then
    echo "[stress] FAILED on run $run of $RUNS"
    exit "$code"
  fi
done
echo "[stress] PASSED $RUNS runs in a row"
