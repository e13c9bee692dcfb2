// tests/sync/sync_testutil.h — helpers shared by the sync/ tests.
#pragma once
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "carom/common.h"
#include "testutil.h"

namespace carom_test {

// Poll /proc until `pid` is asleep (state S), i.e. blocked in the kernel, as a
// futex waiter is. Returns false if it does not get there within timeout_s.
inline bool wait_until_sleeping(pid_t pid, double timeout_s = 10) {
  uint64_t end = carom_now_ns() + (uint64_t)(timeout_s * slow_factor() * 1e9);
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  while (carom_now_ns() < end) {
    FILE *f = fopen(path, "re");
    if (f) {
      char buf[512];
      size_t n = fread(buf, 1, sizeof buf - 1, f);
      fclose(f);
      buf[n] = 0;
      const char *rp = strrchr(buf, ')');
      if (rp && rp[1] == ' ' && rp[2] == 'S') return true;
    }
    usleep(200);
  }
  return false;
}

inline double secs_since(uint64_t t0) { return (double)(carom_now_ns() - t0) / 1e9; }

}  // namespace carom_test
