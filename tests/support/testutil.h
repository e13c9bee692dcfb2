// tests/support/testutil.h — helpers for multi-process tests: shared memory,
// forking children that report through their exit status, reaping with a bound.
#pragma once
#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>
#include <functional>
#include <time.h>

#include "carom/common.h"

namespace carom_test {

// An anonymous MAP_SHARED region of `size` bytes, zeroed, inherited by children.
void *shared_alloc(size_t size);
void shared_free(void *p, size_t size);

// Fork a child that runs fn() and _exit()s with its return value. The child
// dies with its parent (PR_SET_PDEATHSIG) so a failed test never leaves it.
pid_t fork_child(const std::function<int()> &fn);

// Wait for pid up to timeout_s; on timeout SIGKILL it and reap it. Returns the
// raw wait status, or -1 if it had to be killed.
int reap(pid_t pid, double timeout_s = 30.0);
// Exit code of a child that exited normally, or 1000 + signal, or -1.
int reap_code(pid_t pid, double timeout_s = 30.0);

// Poll /proc until the process or thread `id` is asleep (state S), i.e.
// blocked in the kernel, as a futex waiter is. False if it does not get there
// within timeout_s (scaled by slow_factor()).
bool wait_until_sleeping(pid_t id, double timeout_s = 10);

// Number of open fds in this process (counted in /proc/self/fd).
int count_fds();

// Scale for timeouts in sanitizer builds (CAROM_TEST_SLOW env var, default 1).
double slow_factor();

// A relative timeout in seconds (scaled by slow_factor()) as the absolute
// deadline carom calls take: `f(..., Deadline(2).p)`.
struct Deadline {
  timespec ts;
  const timespec *p;
  explicit Deadline(double s) { p = carom_deadline(s * slow_factor(), &ts); }
};

}  // namespace carom_test
