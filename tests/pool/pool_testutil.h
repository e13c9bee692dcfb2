// tests/pool/pool_testutil.h — bounded waits (built on testutil.h's
// wait_until) and checks shared by the pool tests.
#pragma once
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdio>
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "carom/pool.h"
#include "testutil.h"

namespace carom_test {

// Wait until a worker has started `job` (its accept is visible); false if
// that does not happen within timeout_s (scaled by slow_factor()).
inline bool wait_accepted(carom_job_t *job, double timeout_s = 10) {
  return wait_until([job] { return carom_job_accepted(job); }, timeout_s);
}

// The pid of the worker running `job`, once a worker has started it; -1 if
// none did within timeout_s (scaled).
inline pid_t running_pid(carom_job_t *job, double timeout_s = 10) {
  pid_t pid;
  if (!wait_accepted(job, timeout_s) || carom_job_pids(job, &pid, 1) != 1) return -1;
  return pid;
}

// Items 0, 1, ..., n-1 as int64 map arguments (v[i] == i).
struct Int64Items {
  std::vector<int64_t> v;
  std::vector<iovec> iov;
  explicit Int64Items(size_t n) : v(n), iov(n) {
    for (size_t i = 0; i < n; i++) {
      v[i] = static_cast<int64_t>(i);
      iov[i] = {&v[i], sizeof v[i]};
    }
  }
  size_t size() const { return v.size(); }
};

// Tasks that sleep for their int64 argument (milliseconds / microseconds)
// and return it; a task whose soft limit expires gives up ("gave up",
// -EINTR: the soft-limit signal interrupts the sleep).
inline int sleep_task(carom_task_ctx_t *ctx, struct timespec ts, const void *arg) {
  while (nanosleep(&ts, &ts) != 0) {
    if (carom_task_soft_expired(ctx)) return carom_task_fail(ctx, -EINTR, "gave up");
  }
  return carom_task_return(ctx, arg, sizeof(int64_t));
}
inline int sleep_ms(carom_task_ctx_t *ctx, const void *arg, size_t) {
  int64_t ms;
  memcpy(&ms, arg, sizeof ms);
  return sleep_task(ctx, {static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1000000},
                    arg);
}
inline int sleep_us(carom_task_ctx_t *ctx, const void *arg, size_t) {
  int64_t us;
  memcpy(&us, arg, sizeof us);
  return sleep_task(ctx, {static_cast<time_t>(us / 1000000), static_cast<long>(us % 1000000) * 1000},
                    arg);
}

// Wait until *flag becomes nonzero (set by a child through shared memory).
inline bool wait_flag(const volatile int *flag, double timeout_s = 10) {
  return wait_until([flag] { return *flag != 0; }, timeout_s);
}

// Task: the int64 argument doubled (fails -EINVAL on another size).
inline int twice_task(carom_task_ctx_t *ctx, const void *arg, size_t len) {
  int64_t x;
  if (len != sizeof x) return carom_task_fail(ctx, -EINVAL, "want 8 bytes, got %zu", len);
  memcpy(&x, arg, sizeof x);
  x *= 2;
  return carom_task_return(ctx, &x, sizeof x);
}

// A pool of `processes` workers made with start method `method` (NULL: fork).
// An initializer that fails with the message "no such database".
inline int failing_init(void *, char *msg, size_t n) {
  snprintf(msg, n, "no such database");
  return 1;
}

// Default pool options with `processes` set, for a test to adjust.
inline carom_pool_opts_t pool_opts(int processes) {
  carom_pool_opts_t o = {};
  o.size = sizeof o;
  o.processes = processes;
  return o;
}

// A pool made from o; nullptr (and a failed expectation) when creation fails.
inline carom_pool_t *create_pool(const carom_pool_opts_t &o) {
  carom_pool_t *p = nullptr;
  int rc = carom_pool_create(&o, &p);
  EXPECT_EQ(0, rc) << carom_strerror(rc);
  return p;
}

inline carom_pool_t *make_method_pool(const char *method, int processes, unsigned maxtasks = 0) {
  carom_pool_opts_t o = pool_opts(processes);
  o.maxtasksperchild = maxtasks;
  o.start_method = method;
  return create_pool(o);
}

// How often each of n items came out (of next(), or read by index), from any
// thread: every item must come exactly once. An index past n counts as stray.
class ItemTally {
 public:
  explicit ItemTally(size_t n) : seen_(n) {}
  void add(size_t i) {
    if (i < seen_.size()) seen_[i]++;
    else stray_++;
  }
  size_t repeated() const { return count_if([](int c) { return c > 1; }); }
  size_t missing() const { return count_if([](int c) { return c == 0; }); }
  size_t stray() const { return stray_.load(); }
  // 0 when every item came exactly once, else how many did not (and the
  // first of them in *first).
  size_t not_once(size_t *first = nullptr) const {
    size_t bad = stray_.load();
    for (size_t i = seen_.size(); i-- > 0;)
      if (seen_[i].load() != 1) {
        bad++;
        if (first) *first = i;
      }
    return bad;
  }

 private:
  template <typename F>
  size_t count_if(F f) const {
    size_t k = 0;
    for (auto &c : seen_) k += f(c.load());
    return k;
  }
  std::vector<std::atomic<int>> seen_;
  std::atomic<size_t> stray_{0};
};

// Every item of t came exactly once (what names the run in the failure).
#define EXPECT_EACH_ONCE(t, what)                                                   \
  do {                                                                              \
    size_t first_ = 0;                                                              \
    EXPECT_EQ(0u, (t).not_once(&first_)) << (what) << ": item " << first_ << " not once"; \
  } while (0)

// on_process_down / on_process_exit that appends to the
// std::vector<carom_worker_exit_t> given as event_arg (called on the
// supervisor thread: read the vector once the pool is freed or the job the
// exit failed has ended).
inline void record_exit(const carom_worker_exit_t *e, void *arg) {
  static_cast<std::vector<carom_worker_exit_t> *>(arg)->push_back(*e);
}

// carom_pool_apply of fn(arg) whose result is one T: that value (a failed
// expectation, and T{}, when the call fails or the result has another size).
template <typename T>
T apply_value(carom_pool_t *p, carom_task_fn fn, const void *arg = nullptr, size_t len = 0) {
  void *res = nullptr;
  size_t n = 0;
  T v{};
  int rc = carom_pool_apply(p, fn, arg, len, &res, &n);
  EXPECT_EQ(0, rc) << carom_strerror(rc);
  EXPECT_EQ(sizeof v, n);
  if (rc == 0 && n == sizeof v) memcpy(&v, res, sizeof v);
  free(res);
  return v;
}

// Carom's log messages at `level` and above while alive (then the default
// sink and the previous level again). The sink may run on pool threads.
class LogCapture {
 public:
  explicit LogCapture(carom_log_level_t level = CAROM_LOG_WARNING) : old_(carom_log_get_level()) {
    carom_log_set_handler(&LogCapture::sink, this);
    carom_log_set_level(level);
  }
  ~LogCapture() {
    carom_log_set_handler(nullptr, nullptr);
    carom_log_set_level(old_);
  }
  // Messages at `min` or above that contain `needle` (all when null).
  std::vector<std::string> find(carom_log_level_t min, const char *needle = nullptr) {
    std::lock_guard<std::mutex> g(mu_);
    std::vector<std::string> out;
    for (auto &m : msgs_)
      if (m.first >= min && (!needle || m.second.find(needle) != std::string::npos))
        out.push_back(m.second);
    return out;
  }

 private:
  static void sink(carom_log_level_t lv, const char *m, void *arg) {
    auto *c = static_cast<LogCapture *>(arg);
    std::lock_guard<std::mutex> g(c->mu_);
    c->msgs_.emplace_back(lv, m);
  }
  std::mutex mu_;
  std::vector<std::pair<carom_log_level_t, std::string>> msgs_;
  carom_log_level_t old_;
};

// No child of ours may be left (zombie or alive) once pools are freed.
inline void expect_no_children() {
  int st;
  EXPECT_EQ(-1, waitpid(-1, &st, WNOHANG));
  EXPECT_EQ(ECHILD, errno);
}

// n tasks on 2 workers while `kills` random workers are SIGKILLed (paced by
// the pool's own progress, not by sleeping): every task ends exactly once,
// with its result or CAROM_EWORKERLOST, no more lost than killed, and the pool
// keeps serving.
inline void check_random_kills(const char *method, int n, int kills) {
  carom_pool_t *p = make_method_pool(method, 2);
  ASSERT_NE(nullptr, p);
  std::vector<carom_job_t *> jobs(n);
  for (int i = 0; i < n; i++) {
    int64_t x = i;
    ASSERT_EQ(0, carom_pool_apply_async(p, twice_task, &x, sizeof x, nullptr, &jobs[i]));
  }
  int done_kills = 0;
  for (int k = 0; k < kills; k++) {
    pid_t pids[2];
    int m = carom_pool_workers(p, pids, 2);
    if (m > 0 && kill(pids[(k * 7919) % m], SIGKILL) == 0) done_kills++;
    int64_t x = k;
    void *res;
    size_t len;
    ASSERT_EQ(0, carom_pool_apply(p, twice_task, &x, sizeof x, &res, &len));
    free(res);
  }
  int ok = 0, lost = 0;
  for (int i = 0; i < n; i++) {
    timespec ts;
    const void *d;
    size_t len;
    int rc = carom_job_get(jobs[i], carom_deadline(60, &ts), &d, &len);
    if (rc == 0) {
      ok++;
      int64_t v;
      memcpy(&v, d, sizeof v);
      EXPECT_EQ(2 * (int64_t)i, v);
    } else {
      EXPECT_EQ(CAROM_EWORKERLOST, rc);
      lost++;
    }
    carom_job_release(jobs[i]);
  }
  EXPECT_EQ(n, ok + lost);
  EXPECT_LE(lost, done_kills);
  carom_pool_free(p);
  expect_no_children();
}

// `cycles` pool create/destroy cycles (every other one runs a task) leave no
// fd, no child and no zombie behind.
inline void check_create_destroy_cycles(const char *method, int cycles) {
  int fds = count_fds();
  for (int i = 0; i < cycles; i++) {
    carom_pool_t *p = make_method_pool(method, 2);
    ASSERT_NE(nullptr, p);
    if (i % 2) {
      int64_t x = i;
      void *res;
      size_t len;
      ASSERT_EQ(0, carom_pool_apply(p, twice_task, &x, sizeof x, &res, &len));
      free(res);
    }
    carom_pool_free(p);
  }
  EXPECT_EQ(fds, count_fds());
  expect_no_children();
}

}  // namespace carom_test
