#!/usr/bin/env bash
# The main job: a short demo of what carom offers, then the benchmark table.
# Extra arguments go to carom-bench (default: --quick, the whole suite in
# under a minute). The figures are also saved as JSON lines in
# build/bench-results.json and, when gnuplot is installed, drawn into
# build/bench-plots/ by bench/plot.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build >/dev/null
./build/carom-demo
echo
if [ $# -eq 0 ]; then set -- --quick; fi
./build/bench/carom-bench --json-out build/bench-results.json "$@"
if command -v gnuplot >/dev/null; then
  echo
  echo "plots of the queue shoot-out:"
  bench/plot.sh build/bench-results.json build/bench-plots png || echo "(plotting failed)"
fi
