// tests/pool/test_pool_methods.cpp — the pool's start methods: fork (template
// forked from the creator), forkserver (template exec'd afresh, workers forked
// from it) and spawn (every worker exec'd): the same behaviour under each, and
// what differs (inherited state, function and argument passing).
#include <gtest/gtest.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "carom/pool.h"
#include "pool_testutil.h"
#include "testutil.h"

using namespace carom_test;

namespace {


int pids_task(carom_task_ctx_t *ctx, const void *, size_t) {
  int32_t v[2] = {(int32_t)getpid(), (int32_t)getppid()};
  return carom_task_return(ctx, v, sizeof v);
}

// Set by the test before creating the pool: fork workers see it, exec'd ones
// see the program's initial value.
int g_parent_state = 0;

int state_task(carom_task_ctx_t *ctx, const void *, size_t) {
  int32_t v = g_parent_state;
  return carom_task_return(ctx, &v, sizeof v);
}

char g_init_copy[64];

int init_copy(void *arg, char *msg, size_t msg_len) {
  const char *s = static_cast<const char *>(arg);
  if (!s || strlen(s) >= sizeof g_init_copy) {
    snprintf(msg, msg_len, "bad initarg");
    return 1;
  }
  snprintf(g_init_copy, sizeof g_init_copy, "%s", s);
  return 0;
}

int init_copy_task(carom_task_ctx_t *ctx, const void *, size_t) {
  return carom_task_return(ctx, g_init_copy, strlen(g_init_copy) + 1);
}



class PoolMethod : public ::testing::TestWithParam<const char *> {};

// map and apply give the same results under every method; workers are
// children of the template, never of the creator.
TEST_P(PoolMethod, MapAndApplyWork) {
  carom_pool_t *p = make_method_pool(GetParam(), 2);
  ASSERT_NE(nullptr, p);
  Int64Items items(1000);
  carom_job_t *j;
  ASSERT_EQ(0, carom_pool_map(p, twice_task, items.iov.data(), items.size(), 0, &j));
  for (size_t i = 0; i < items.size(); i++) {
    const void *d;
    size_t n;
    ASSERT_EQ(0, carom_job_item(j, i, &d, &n));
    int64_t v;
    ASSERT_EQ(sizeof v, n);
    memcpy(&v, d, sizeof v);
    EXPECT_EQ(2 * (int64_t)i, v);
  }
  carom_job_release(j);
  void *res;
  size_t len;
  ASSERT_EQ(0, carom_pool_apply(p, pids_task, nullptr, 0, &res, &len));
  ASSERT_EQ(8u, len);
  int32_t v[2];
  memcpy(v, res, sizeof v);
  free(res);
  EXPECT_NE(getpid(), v[0]);
  EXPECT_NE(getpid(), v[1]);  // parent: the template
  // A failing task's message crosses as under fork.
  int32_t bad = 1;
  carom_job_t *e;
  ASSERT_EQ(0, carom_pool_apply_async(p, twice_task, &bad, sizeof bad, nullptr, &e));
  EXPECT_EQ(-EINVAL, carom_job_wait(e, nullptr));
  const void *d;
  size_t n;
  EXPECT_EQ(-EINVAL, carom_job_get(e, nullptr, &d, &n));
  EXPECT_STREQ("want 8 bytes, got 4", static_cast<const char *>(d));
  carom_job_release(e);
  carom_pool_close(p);
  EXPECT_EQ(0, carom_pool_join(p, nullptr));
  carom_pool_free(p);
}

// What workers see of the creator's memory: all of it under fork, none under
// forkserver and spawn (a fresh program image).
TEST_P(PoolMethod, CreatorStateIsInheritedOnlyUnderFork) {
  g_parent_state = 42;
  carom_pool_t *p = make_method_pool(GetParam(), 1);
  ASSERT_NE(nullptr, p);
  EXPECT_EQ(strcmp(GetParam(), "fork") == 0 ? 42 : 0, apply_value<int32_t>(p, state_task));
  g_parent_state = 0;
  carom_pool_free(p);
}

// The initializer's argument as bytes (initarg_len) reaches every worker under
// every method, replacements included.
TEST_P(PoolMethod, InitializerGetsArgumentBytes) {
  char arg[] = "hello from the creator";
  carom_pool_opts_t o = pool_opts(2);
  o.start_method = GetParam();
  o.initializer = init_copy;
  o.initarg = arg;
  o.initarg_len = sizeof arg;
  o.maxtasksperchild = 1;
  carom_pool_t *p;
  ASSERT_EQ(0, carom_pool_create(&o, &p));
  arg[0] = 'X';  // copied at create: later changes do not matter
  for (int i = 0; i < 4; i++) {
    void *res;
    size_t len;
    ASSERT_EQ(0, carom_pool_apply(p, init_copy_task, nullptr, 0, &res, &len));
    EXPECT_STREQ("hello from the creator", static_cast<char *>(res));
    free(res);
  }
  carom_pool_free(p);
}

// A worker killed mid-task: that task fails EWORKERLOST, a replacement serves.
TEST_P(PoolMethod, KilledWorkerIsLostAndReplaced) {
  carom_pool_t *p = make_method_pool(GetParam(), 1);
  ASSERT_NE(nullptr, p);
  int64_t hour = 3600 * 1000;
  carom_job_t *j;
  ASSERT_EQ(0, carom_pool_apply_async(p, sleep_ms, &hour, sizeof hour, nullptr, &j));
  pid_t w = running_pid(j);
  ASSERT_GT(w, 0);
  ASSERT_EQ(0, kill(w, SIGKILL));
  timespec ts;
  EXPECT_EQ(CAROM_EWORKERLOST, carom_job_wait(j, carom_deadline(10, &ts)));
  carom_job_release(j);
  int64_t x = 21;
  EXPECT_EQ(42, apply_value<int64_t>(p, twice_task, &x, sizeof x));
  carom_pool_free(p);
}

// maxtasksperchild=1: every task in a new process, nothing lost.
TEST_P(PoolMethod, RecyclingRunsEveryTaskInANewWorker) {
  carom_pool_t *p = make_method_pool(GetParam(), 2, 1);
  ASSERT_NE(nullptr, p);
  const int n = 40;
  std::vector<carom_job_t *> jobs(n);
  for (auto &j : jobs) ASSERT_EQ(0, carom_pool_apply_async(p, pids_task, nullptr, 0, nullptr, &j));
  std::set<int32_t> pids;
  for (auto j : jobs) {
    const void *d;
    size_t len;
    ASSERT_EQ(0, carom_job_get(j, nullptr, &d, &len));
    int32_t v[2];
    memcpy(v, d, sizeof v);
    pids.insert(v[0]);
    carom_job_release(j);
  }
  EXPECT_EQ((size_t)n, pids.size());
  carom_pool_close(p);
  EXPECT_EQ(0, carom_pool_join(p, nullptr));
  carom_pool_free(p);
}

// A failing initializer is reported with its message under every method
// (the message crosses from the worker image through shared memory).
TEST_P(PoolMethod, FailingInitializerIsReported) {
  carom_pool_opts_t o = pool_opts(1);
  o.start_method = GetParam();
  o.initializer = failing_init;
  o.init_retries = 2;
  carom_pool_t *p;
  ASSERT_EQ(0, carom_pool_create(&o, &p));
  carom_job_t *j;
  ASSERT_EQ(0, carom_pool_apply_async(p, twice_task, "12345678", 8, nullptr, &j));
  timespec ts;
  const void *d;
  size_t n;
  EXPECT_EQ(CAROM_EINITIALIZER, carom_job_get(j, carom_deadline(10, &ts), &d, &n));
  EXPECT_NE(nullptr, strstr(static_cast<const char *>(d), "no such database"))
      << static_cast<const char *>(d);
  carom_job_release(j);
  carom_pool_free(p);
  expect_no_children();
}

// Random SIGKILLs of workers under load: every task ends exactly once.
TEST_P(PoolMethod, RandomKillsEveryTaskEndsOnce) { check_random_kills(GetParam(), 2000, 6); }

// The owner SIGKILLed: the template (exec'd or forked) notices through its
// pidfd and takes every worker with it within 1 s.
TEST_P(PoolMethod, OwnerKilledLeavesNoWorker) {
  auto *pids = static_cast<volatile pid_t *>(shared_alloc(4096));
  const char *method = GetParam();
  pid_t owner = fork_child([&] {
    carom_pool_t *p = make_method_pool(method, 2);
    if (!p) return 1;
    int64_t x = 1;
    void *res;
    size_t len;
    if (carom_pool_apply(p, twice_task, &x, sizeof x, &res, &len) != 0) return 2;
    pid_t w[2];
    for (int k = 0; carom_pool_workers(p, w, 2) != 2; k++) {  // the second may still be starting
      if (k == 100000) return 3;
      if (carom_pool_apply(p, twice_task, &x, sizeof x, &res, &len) == 0) free(res);
    }
    pids[1] = w[0];
    pids[2] = w[1];
    pids[0] = 1;  // ready
    for (;;) pause();
    return 0;
  });
  ASSERT_TRUE(wait_flag(pids)) << "owner did not get its workers up";
  ASSERT_EQ(0, kill(owner, SIGKILL));
  EXPECT_EQ(1000 + SIGKILL, reap_code(owner));
  for (int i = 1; i <= 2; i++) {
    int fd = (int)syscall(SYS_pidfd_open, pids[i], 0);
    if (fd < 0) continue;  // already gone and reaped
    struct pollfd pf = {fd, POLLIN, 0};
    EXPECT_EQ(1, poll(&pf, 1, (int)(1000 * slow_factor()))) << "worker " << pids[i] << " survived";
    close(fd);
  }
}

// Create/destroy cycles leave no fd, no child and no zombie behind.
TEST_P(PoolMethod, CreateDestroyCyclesLeakNothing) {
  check_create_destroy_cycles(GetParam(), slow_factor() > 1 ? 20 : 60);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, PoolMethod,
                         ::testing::Values("fork", "forkserver", "spawn"),
                         [](const ::testing::TestParamInfo<const char *> &i) {
                           return std::string(i.param);
                         });

// Misuse is refused at once, with the error the header documents.
TEST(PoolMethods, BadOptionsAreRefused) {
  carom_pool_opts_t o = pool_opts(1);
  carom_pool_t *p = nullptr;
  o.start_method = "vfork";
  EXPECT_EQ(-EINVAL, carom_pool_create(&o, &p));
  EXPECT_EQ(nullptr, p);
  // A pointer initarg cannot cross exec: bytes (initarg_len) are required.
  static int cookie;
  o.initializer = init_copy;
  o.initarg = &cookie;
  o.start_method = "forkserver";
  EXPECT_EQ(-EINVAL, carom_pool_create(&o, &p));
  o.start_method = "spawn";
  EXPECT_EQ(-EINVAL, carom_pool_create(&o, &p));
  o.initarg = nullptr;
  o.initarg_len = 4;
  EXPECT_EQ(-EINVAL, carom_pool_create(&o, &p));
  EXPECT_EQ(nullptr, p);
}

// A task "function" outside every loaded object (here: a data address) cannot
// be named in the exec'd image: the submission fails, the pool keeps serving.
TEST(PoolMethods, FunctionOutsideLoadedObjectsIsRefused) {
  carom_pool_t *p = make_method_pool("forkserver", 1);
  ASSERT_NE(nullptr, p);
  static char not_code[16];
  carom_task_fn fn;
  void *addr = not_code;
  memcpy(&fn, &addr, sizeof fn);
  carom_job_t *j = nullptr;
  EXPECT_EQ(-ENOENT, carom_pool_apply_async(p, fn, nullptr, 0, nullptr, &j));
  EXPECT_EQ(nullptr, j);
  int64_t x = 4;
  void *res;
  size_t len;
  ASSERT_EQ(0, carom_pool_apply(p, twice_task, &x, sizeof x, &res, &len));
  free(res);
  carom_pool_free(p);
}

// Under forkserver nothing is forked from the creator, so a creator with many
// threads (some of them in malloc) is safe even with allocators that are not
// fork-safe. 8 threads each create and use pools; no child is left behind.
TEST(PoolMethods, EightThreadsCreateForkserverPools) {
  std::vector<pthread_t> ts(8);
  for (auto &t : ts)
    pthread_create(&t, nullptr, [](void *) -> void * {
      for (int r = 0; r < 2; r++) {
        carom_pool_t *p = make_method_pool("forkserver", 1);
        if (!p) return reinterpret_cast<void *>(1);
        int64_t x = 5;
        void *res;
        size_t len;
        int rc = carom_pool_apply(p, twice_task, &x, sizeof x, &res, &len);
        if (rc == 0) free(res);
        carom_pool_free(p);
        if (rc) return reinterpret_cast<void *>(2);
      }
      return nullptr;
    }, nullptr);
  for (auto t : ts) {
    void *r;
    pthread_join(t, &r);
    EXPECT_EQ(nullptr, r);
  }
  expect_no_children();
}

}  // namespace
