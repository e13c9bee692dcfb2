// tests/pool/pool_testutil.h — bounded waits shared by the pool tests.
#pragma once
#include <sched.h>

#include "carom/pool.h"
#include "testutil.h"

namespace carom_test {

// Wait until a worker has started `job` (its accept is visible); false if
// that does not happen within timeout_s (scaled by slow_factor()).
inline bool wait_accepted(carom_job_t *job, double timeout_s = 10) {
  uint64_t end = carom_now_ns() + (uint64_t)(timeout_s * slow_factor() * 1e9);
  while (!carom_job_accepted(job)) {
    if (carom_now_ns() > end) return false;
    sched_yield();
  }
  return true;
}

// Wait until *flag becomes nonzero (set by a child through shared memory).
inline bool wait_flag(const volatile int *flag, double timeout_s = 10) {
  uint64_t end = carom_now_ns() + (uint64_t)(timeout_s * slow_factor() * 1e9);
  while (!*flag) {
    if (carom_now_ns() > end) return false;
    sched_yield();
  }
  return true;
}

}  // namespace carom_test
