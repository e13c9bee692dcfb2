// tests/support/testutil.h — helpers for multi-process tests: shared memory,
// forking children that report through their exit status, reaping with a bound,
// bounded waits. Every wait here ends: a stuck peer fails the test instead of
// hanging it until ctest's TIMEOUT.
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

// Owns a forked child until it is reaped: if the parent returns early (a
// failed ASSERT), the destructor SIGKILLs and reaps the child, so it neither
// runs on nor stays a zombie. Reap through the guard (reap(g), reap_code(g)),
// which releases it first; pid() is for kill() and wait_until_sleeping().
class ChildGuard {
 public:
  ChildGuard() = default;
  explicit ChildGuard(pid_t pid) : pid_(pid) {}
  ChildGuard(ChildGuard &&o) noexcept : pid_(o.release()) {}
  ChildGuard &operator=(ChildGuard &&o) noexcept {
    reset(o.release());
    return *this;
  }
  ChildGuard(const ChildGuard &) = delete;
  ChildGuard &operator=(const ChildGuard &) = delete;
  ~ChildGuard() { reset(); }

  pid_t pid() const { return pid_; }
  // Stop owning the child (the caller reaps it); returns its pid.
  pid_t release() {
    pid_t p = pid_;
    pid_ = -1;
    return p;
  }
  // SIGKILL and reap the owned child, if any; then own `pid`.
  void reset(pid_t pid = -1);

 private:
  pid_t pid_ = -1;
};

inline int reap(ChildGuard &g, double timeout_s = 30.0) { return reap(g.release(), timeout_s); }
inline int reap_code(ChildGuard &g, double timeout_s = 30.0) {
  return reap_code(g.release(), timeout_s);
}

// Poll cond() until it is true; false if it is still false after timeout_s
// (scaled by slow_factor()). For flags set by another thread or process:
//   ASSERT_TRUE(wait_until([&] { return __atomic_load_n(&s->ready, __ATOMIC_SEQ_CST); }));
// A child process that waits this way exits with kChildTimedOut when it runs out.
bool wait_until(const std::function<bool()> &cond, double timeout_s = 10);

// Exit code of a child whose bounded wait for the test ran out (distinct from
// the small codes the tests' children use for their own checks).
constexpr int kChildTimedOut = 124;

// Is fd readable (poll POLLIN) within timeout_ms (not scaled; 0: right now)?
bool fd_readable(int fd, int timeout_ms);

// A deadline already past: calls taking one try once.
const timespec *past_deadline();

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
