#!/usr/bin/env bash
# scripts/build.sh BUILD_DIR [cmake options...] — configure (once) and build.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}; shift || true
if [ ! -f "$dir/build.ninja" ]; then
  cmake -S . -B "$dir" -G Ninja -DCAROM_WERROR=ON "$@" >/dev/null
fi
cmake --build "$dir" -j "$(nproc)"
