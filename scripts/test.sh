#!/usr/bin/env bash
# Run the full test suite: install dependencies, build, run every test under ctest.
# Extra arguments go to ctest (e.g. -R Lock).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
cd build
ctest --output-on-failure -j "$(nproc)" "$@"
