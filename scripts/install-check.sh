#!/usr/bin/env bash
# Install carom into a temporary prefix and build a consumer against it, once
# through find_package(carom) and once through pkg-config.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
mkdir -p "$tmp/consumer"
cat > "$tmp/consumer/main.c" <<'C'
#include <carom/carom.h>
int main(void) {
  carom_lock_t l = CAROM_LOCK_INITIALIZER;
  return carom_lock_acquire(&l, NULL) == 0 && carom_lock_release(&l) == 0 ? 0 : 1;
}
C
cat > "$tmp/consumer/CMakeLists.txt" <<'C'
cmake_minimum_required(VERSION 3.25)
project(consumer C)
find_package(carom REQUIRED)
add_executable(consumer main.c)
target_link_libraries(consumer carom::carom)
C
cmake -S "$tmp/consumer" -B "$tmp/consumer/b" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/consumer/b" >/dev/null
LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/consumer/b/consumer"
cc "$tmp/consumer/main.c" $(PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" pkg-config --cflags --libs carom) \
  -o "$tmp/consumer/pc"
LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/consumer/pc"
echo "install-check: find_package(carom) and pkg-config consumers built and ran"
