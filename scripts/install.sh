#!/usr/bin/env bash
# Create or update a virtual environment holding everything vla_prune_ros needs.
#   scripts/install.sh [VENV]      (default: .venv)
# Idempotent: a second run only checks stamps and takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
PY="$VENV/bin/python"
log() { printf '[install] %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
# pip without this machine's notices about local index directories that do not exist (its pip config,
# not a problem of this install); real warnings and errors still show, and pip's exit status is kept.
pip_install() { "$PY" -m pip install --quiet "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }; }

if [ ! -x "$PY" ]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi

# 1. Python dependencies (pinned in requirements.txt).
req_hash=$(hash_of "$ROOT/requirements.txt")
if [ "$(cat "$VENV/.vla_prune_requirements" 2>/dev/null)" != "$req_hash" ]; then
  log "installing Python dependencies (about 2 minutes on a fresh venv)"
  pip_install --upgrade pip
  pip_install -r "$ROOT/requirements.txt"
  echo "$req_hash" > "$VENV/.vla_prune_requirements"
else
  log "Python dependencies up to date"
fi

# 2. The ROS message wheels bake their build container's include paths into their CMake exports;
#    point them at this venv's Python and numpy headers. Safe to repeat.
py_inc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_inc=$("$PY" -c 'import numpy; print(numpy.get_include())')
baked=$(grep -lE '/opt/python/cp311-cp311/' "$VENV"/share/*/cmake/*.cmake 2>/dev/null || true)
for f in $baked; do
  sed -i -E "s#/opt/python/cp311-cp311/[^;\"]*site-packages/numpy/_core/include#${np_inc}#g; s#/opt/python/cp311-cp311/include/python3.11#${py_inc}#g" "$f"
done

# 3. The interface package, built with CMake and installed straight into the venv.
iface="$ROOT/vla_prune_interfaces"
iface_hash=$(cd "$iface" && hash_of $(find . -type f | sort))
if [ "$(cat "$VENV/.vla_prune_interfaces" 2>/dev/null)" != "$iface_hash" ]; then
  log "building vla_prune_interfaces"
  build="$VENV/build/vla_prune_interfaces"
  rm -rf "$build"; mkdir -p "$VENV/build"
  (
    export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV"
    cmake -S "$iface" -B "$build" -G Ninja -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF > "$build.log" 2>&1 &&
    cmake --build "$build" >> "$build.log" 2>&1 &&
    cmake --install "$build" >> "$build.log" 2>&1
  ) || { log "interface build failed; see $build.log"; tail -n 30 "$build.log"; exit 1; }
  echo "$iface_hash" > "$VENV/.vla_prune_interfaces"
else
  log "vla_prune_interfaces up to date"
fi

# 4. This package, editable, so the checkout is what runs.
pkg_hash=$(hash_of "$ROOT/setup.py" "$ROOT/setup.cfg" "$ROOT/package.xml")
if [ "$(cat "$VENV/.vla_prune_package" 2>/dev/null)" != "$pkg_hash" ]; then
  log "installing vla_prune_ros (editable)"
  # setuptools announces how the editable install works as a warning ("Editable installation."); it is information.
  PYTHONWARNINGS="ignore:Editable installation" pip_install --no-deps --no-build-isolation -e "$ROOT"
  echo "$pkg_hash" > "$VENV/.vla_prune_package"
else
  log "vla_prune_ros up to date"
fi

"$PY" -c 'import rclpy, torch, vla_prune_interfaces.action, vla_prune_ros' \
  || { log "import check failed"; exit 1; }
log "ready: $VENV"
