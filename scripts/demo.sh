#!/usr/bin/env bash
# The main job: a short demo of what carom offers, then the benchmark table.
# Extra arguments go to carom-bench (default: --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build >/dev/null
./build/carom-demo
echo
if [ $# -eq 0 ]; then set -- --quick; fi
./build/bench/carom-bench "$@"
