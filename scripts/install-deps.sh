#!/usr/bin/env bash
# Install every Debian package carom needs to build, test and benchmark.
# Idempotent: asks dpkg first and only runs apt-get when something is missing.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git
  clang libclang-rt-14-dev llvm            # clang builds, libFuzzer
  clang-19 libclang-rt-19-dev              # sanitizer builds (fork-safe allocators)
  libgtest-dev googletest                  # tests
  libssl-dev                               # HMAC-SHA256 for Listener/Client authentication
  liburcu-dev libatomic-ops-dev libck-dev  # peers in the queue benchmarks
  python3 python3-billiard                 # Python peers in the benchmarks
  gnuplot-nox                              # bench/plot.sh
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
