// tests/proc/test_process.cpp — Process under the three start methods: exit
// codes and signals, join timeouts, terminate/kill, sentinels, identity and
// environment in the child, a parent that runs threads, daemonic children of
// a SIGKILLed parent, exit handlers, no zombies or fd leaks over many cycles,
// contexts, cpu_count.
//
// The spawn method re-executes this test binary: proc/boot.c's constructor
// takes the child over before GoogleTest's main() runs.
#include <gtest/gtest.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "carom/process.h"
#include "testutil.h"

// Internal hooks of proc/ (proc/internal.h is C-only; the library is linked
// statically, so hidden symbols resolve).
extern "C" {
int carom__cgroup_cpu_limit(const char *root, const char *path);
void carom__proc_force_no_pidfd(bool off);
pid_t carom__forkserver_pid(void);
void carom__forkserver_set_reply_timeout(double seconds);
}

using namespace carom_test;

namespace {

// ---- targets (plain functions: they must be nameable across exec) ----

int t_return(const void *arg, size_t len) { return len ? *(const unsigned char *)arg : 0; }

int t_loop(const void *, size_t) {
  for (;;) pause();
}

// Loop forever after creating the file named by arg (so a test knows the
// target runs, whatever the start method).
int t_loop_flag(const void *arg, size_t) {
  int fd = open((const char *)arg, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  if (fd >= 0) close(fd);
  for (;;) pause();
}

int t_selfkill(const void *, size_t) {
  kill(getpid(), SIGKILL);
  return 0;
}

// 300 ms of work, then exit with arg[0].
int t_sleep_then(const void *arg, size_t len) {
  usleep(300 * 1000);
  return len ? *(const unsigned char *)arg : 0;
}

// Block until the test writes one byte into the FIFO named by arg, then exit
// with that byte (a FIFO reaches the target under every start method). EOF
// (every writer gone: the test failed or died) gives 200.
int t_wait_release(const void *arg, size_t) {
  int fd = open((const char *)arg, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 201;
  unsigned char b;
  ssize_t n;
  do n = read(fd, &b, 1);
  while (n < 0 && errno == EINTR);
  close(fd);
  return n == 1 ? b : 200;
}

int t_checksum(const void *arg, size_t len) {
  const unsigned char *b = (const unsigned char *)arg;
  for (size_t i = 0; i < len; i++)
    if (b[i] != (unsigned char)(i * 7 % 251)) return 1;
  return len == (1u << 20) ? 0 : 2;
}

// arg: "name\0identity\0parent-name\0" then the parent pid as text.
int t_identity(const void *arg, size_t len) {
  const char *a = (const char *)arg;
  const char *name = a, *ident = name + strlen(name) + 1, *pname = ident + strlen(ident) + 1;
  const char *ppid = pname + strlen(pname) + 1;
  if ((size_t)(ppid - a) >= len) return 10;
  if (strcmp(carom_current_process_name(), name)) return 11;
  if (strcmp(carom_current_process_identity(), ident)) return 12;
  if (!carom_parent_process_name() || strcmp(carom_parent_process_name(), pname)) return 13;
  if (carom_parent_process_pid() != atoi(ppid)) return 14;
  if (carom_parent_process_pid() != getppid() && getppid() == 1) return 15;
  // A grandchild's identity extends ours.
  carom_process_opts_t o = {};
  o.size = sizeof o;
  carom_process_t *g;
  if (carom_process_create(&o, &g)) return 16;
  std::string want = std::string(ident) + ":1";
  int rc = strcmp(carom_process_identity(g), want.c_str()) ? 17 : 0;
  if (!rc && strcmp(carom_process_name(g), ("Process-" + want).c_str())) rc = 18;
  carom_process_free(g);
  return rc;
}

int t_env(const void *, size_t) {
  const char *s = getenv("CAROM_T_SET");
  if (!s || strcmp(s, "42")) return 1;
  if (getenv("CAROM_T_UNSET")) return 2;
  if (getenv("CAROM_SPAWN_FD") || getenv("CAROM_FORKSERVER_FD")) return 3;
  return 0;
}

// arg[0]: 1 when SIGINT must be ignored.
int t_signals(const void *arg, size_t) {
  bool want_ign = *(const unsigned char *)arg;
  struct sigaction sa;
  sigaction(SIGINT, nullptr, &sa);
  if (want_ign != (sa.sa_handler == SIG_IGN)) return 1;
  sigaction(SIGUSR1, nullptr, &sa);
  if (sa.sa_handler != SIG_DFL) return 2;
  sigset_t m;
  sigprocmask(SIG_SETMASK, nullptr, &m);
  if (sigismember(&m, SIGUSR2)) return 3;
  return 0;
}

pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
int t_trylock(const void *, size_t) { return pthread_mutex_trylock(&g_mu) == 0 ? 0 : 3; }

int g_marker = 0;
int t_marker(const void *, size_t) { return g_marker; }

int t_start_child(const void *, size_t) {
  carom_process_opts_t o = {};
  o.size = sizeof o;
  carom_process_t *g;
  if (carom_process_create(&o, &g)) return 1;
  int rc = carom_process_start(g);
  carom_process_free(g);
  return rc == -EPERM ? 0 : 2;
}

int t_named(const void *, size_t) { return 42; }
CAROM_ENTRY(t_entry, t_named)

int g_preloaded = 0;
int t_preload(const void *, size_t) {
  g_preloaded = 77;
  return 0;
}
CAROM_ENTRY(t_preload_entry, t_preload)
int t_preloaded(const void *, size_t) { return g_preloaded; }

// ---- helpers ----

carom_context_t *ctx_of(const std::string &m) {
  carom_context_t *c = nullptr;
  EXPECT_EQ(0, carom_get_context(m.c_str(), &c));
  return c;
}

struct Opts {
  carom_process_fn fn = nullptr;
  const char *entry = nullptr;
  const void *arg = nullptr;
  size_t len = 0;
  bool daemon = false;
  const char *name = nullptr;
  const char *const *env = nullptr;
  bool ignore_sigint = false;
};

carom_process_t *make(const std::string &method, const Opts &x) {
  carom_process_opts_t o = {};
  o.size = sizeof o;
  o.target = x.fn;
  o.entry = x.entry;
  o.arg = x.arg;
  o.arg_len = x.len;
  o.daemon = x.daemon;
  o.name = x.name;
  o.env = x.env;
  o.ignore_sigint = x.ignore_sigint;
  o.ctx = ctx_of(method);
  carom_process_t *p = nullptr;
  EXPECT_EQ(0, carom_process_create(&o, &p));
  return p;
}

// Start, join (bounded), return the exit code; 1000 on failure.
int run(const std::string &method, const Opts &x) {
  carom_process_t *p = make(method, x);
  if (!p) return 1000;
  int rc = carom_process_start(p);
  EXPECT_EQ(0, rc);
  if (rc) {
    carom_process_free(p);
    return 1000;
  }
  timespec ts;
  EXPECT_EQ(0, carom_process_join(p, carom_deadline(30 * slow_factor(), &ts)));
  int code = 1000;
  EXPECT_EQ(0, carom_process_exitcode(p, &code));
  carom_process_free(p);
  return code;
}

int run_fn(const std::string &method, carom_process_fn fn, int byte = -1) {
  unsigned char b = (unsigned char)byte;
  Opts x;
  x.fn = fn;
  if (byte >= 0) {
    x.arg = &b;
    x.len = 1;
  }
  return run(method, x);
}

// Zombie children of this process (state Z in /proc/<pid>/stat).
int count_zombies() {
  int z = 0;
  DIR *d = opendir("/proc/self/task");
  while (dirent *e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string path = std::string("/proc/self/task/") + e->d_name + "/children";
    FILE *f = fopen(path.c_str(), "r");
    if (!f) continue;
    int pid;
    while (fscanf(f, "%d", &pid) == 1) {
      char sp[64], buf[512];
      snprintf(sp, sizeof sp, "/proc/%d/stat", pid);
      FILE *s = fopen(sp, "r");
      if (!s) continue;
      size_t n = fread(buf, 1, sizeof buf - 1, s);
      fclose(s);
      buf[n] = 0;
      const char *rp = strrchr(buf, ')');
      if (rp && rp[2] == 'Z') z++;
    }
    fclose(f);
  }
  closedir(d);
  return z;
}

const char *kMethods[] = {"fork", "spawn", "forkserver"};

class Method : public ::testing::TestWithParam<const char *> {};

}  // namespace

// ---------------------------------------------------------------- exit codes

TEST_P(Method, ExitCodeIsTargetReturnValue) {
  EXPECT_EQ(0, run_fn(GetParam(), t_return, 0));
  EXPECT_EQ(7, run_fn(GetParam(), t_return, 7));
  EXPECT_EQ(255, run_fn(GetParam(), t_return, 255));
  EXPECT_EQ(0, run_fn(GetParam(), nullptr));  // no target: exit 0
}

TEST_P(Method, SignalDeathIsMinusSignal) {
  EXPECT_EQ(-SIGKILL, run_fn(GetParam(), t_selfkill));
}

TEST_P(Method, NamedEntryRunsUnderEveryMethod) {
  Opts x;
  x.entry = "t_entry";
  EXPECT_EQ(42, run(GetParam(), x));
  x.entry = nullptr;
  x.fn = t_named;  // the same function by pointer: sent by its registry name
  EXPECT_EQ(42, run(GetParam(), x));
}

TEST_P(Method, LargeArgumentArrivesIntact) {
  std::vector<unsigned char> big(1u << 20);
  for (size_t i = 0; i < big.size(); i++) big[i] = (unsigned char)(i * 7 % 251);
  Opts x;
  x.fn = t_checksum;
  x.arg = big.data();
  x.len = big.size();
  EXPECT_EQ(0, run(GetParam(), x));
}

// ---------------------------------------------------- join, signals, sentinel

TEST_P(Method, JoinTimesOutThenTerminateEndsIt) {
  Opts x;
  x.fn = t_loop;
  x.daemon = true;  // dies with the test process if the test fails
  carom_process_t *p = make(GetParam(), x);
  int code;
  EXPECT_EQ(CAROM_ENOTREADY, carom_process_exitcode(p, &code));
  EXPECT_EQ(0, carom_process_pid(p));
  ASSERT_EQ(0, carom_process_start(p));
  EXPECT_GT(carom_process_pid(p), 0);
  EXPECT_TRUE(carom_process_is_alive(p));
  timespec ts;
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(-ETIMEDOUT, carom_process_join(p, carom_deadline(0.1, &ts)));
  double el = (double)(carom_now_ns() - t0) / 1e9;
  EXPECT_GE(el, 0.099);
  EXPECT_LT(el, 5.0 * slow_factor());
  EXPECT_EQ(-ETIMEDOUT, carom_process_join(p, carom_deadline(0, &ts)));  // try once
  EXPECT_EQ(CAROM_ENOTREADY, carom_process_exitcode(p, &code));
  EXPECT_EQ(-EBUSY, carom_process_close(p));
  EXPECT_EQ(0, carom_process_terminate(p));
  EXPECT_EQ(0, carom_process_join(p, carom_deadline(30 * slow_factor(), &ts)));
  EXPECT_FALSE(carom_process_is_alive(p));
  ASSERT_EQ(0, carom_process_exitcode(p, &code));
  EXPECT_EQ(-SIGTERM, code);
  EXPECT_EQ(0, carom_process_terminate(p));  // ended: a no-op
  EXPECT_EQ(0, carom_process_close(p));
  EXPECT_EQ(-EINVAL, carom_process_exitcode(p, &code));
  EXPECT_EQ(-EINVAL, carom_process_sentinel(p));
  carom_process_free(p);
}

TEST_P(Method, KillGivesMinusSigkill) {
  Opts x;
  x.fn = t_loop;
  x.daemon = true;  // dies with the test process if the test fails
  carom_process_t *p = make(GetParam(), x);
  ASSERT_EQ(0, carom_process_start(p));
  EXPECT_EQ(0, carom_process_kill(p));
  timespec ts;
  EXPECT_EQ(0, carom_process_join(p, carom_deadline(30 * slow_factor(), &ts)));
  int code;
  ASSERT_EQ(0, carom_process_exitcode(p, &code));
  EXPECT_EQ(-SIGKILL, code);
  carom_process_free(p);
}

TEST_P(Method, SentinelBecomesReadableOnDeath) {
  Opts x;
  x.fn = t_loop;
  x.daemon = true;  // dies with the test process if the test fails
  carom_process_t *p = make(GetParam(), x);
  EXPECT_EQ(-EINVAL, carom_process_sentinel(p));
  ASSERT_EQ(0, carom_process_start(p));
  int fd = carom_process_sentinel(p);
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(fd_readable(fd, 50));
  EXPECT_EQ(0, carom_process_kill(p));
  EXPECT_TRUE(fd_readable(fd, (int)(10000 * slow_factor())));
  // Readable does not mean reaped: the status is still collected by join.
  int code;
  timespec ts;
  EXPECT_EQ(0, carom_process_join(p, carom_deadline(0, &ts)));
  ASSERT_EQ(0, carom_process_exitcode(p, &code));
  EXPECT_EQ(-SIGKILL, code);
  EXPECT_TRUE(fd_readable(fd, 0));  // stays readable until close
  carom_process_free(p);
}

// Three threads join one process at the same time and all see its end. The
// target blocks until the test releases it, and the test releases it only
// once every joiner is asleep inside join, so the joins really overlap.
TEST_P(Method, ConcurrentJoinersBothSeeTheEnd) {
  char dir[] = "/tmp/carom-join-XXXXXX";
  ASSERT_NE(nullptr, mkdtemp(dir));
  std::string fifo = std::string(dir) + "/release";
  ASSERT_EQ(0, mkfifo(fifo.c_str(), 0600));
  // Held open for reading and writing, so the target's open does not wait for
  // a writer.
  int release = open(fifo.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(release, 0);
  Opts x;
  x.fn = t_wait_release;
  x.arg = fifo.c_str();
  x.len = fifo.size() + 1;
  x.daemon = true;  // dies with the test process if the test fails
  carom_process_t *p = make(GetParam(), x);
  ASSERT_NE(nullptr, p);
  ASSERT_EQ(0, carom_process_start(p));
  constexpr int kJoiners = 3;
  std::atomic<int> ok{0}, returned{0};
  std::atomic<pid_t> tids[kJoiners];
  for (auto &t : tids) t = 0;
  std::vector<std::thread> th;
  for (int i = 0; i < kJoiners; i++)
    th.emplace_back([&, i] {
      timespec ts;
      const timespec *dl = carom_deadline(30 * slow_factor(), &ts);
      // From here on this thread calls nothing that sleeps but join.
      tids[i] = (pid_t)syscall(SYS_gettid);
      int code = -1;
      if (carom_process_join(p, dl) == 0 && carom_process_exitcode(p, &code) == 0 && code == 9)
        ok++;
      returned++;
    });
  bool all_asleep = true;
  for (auto &t : tids)
    all_asleep = all_asleep && wait_until([&] { return t.load() != 0; }) &&
                 wait_until_sleeping(t.load());
  EXPECT_TRUE(all_asleep) << "a joiner never went to sleep in join";
  EXPECT_EQ(0, returned.load());  // nobody saw an end that has not happened
  EXPECT_TRUE(carom_process_is_alive(p));
  const unsigned char code = 9;
  EXPECT_EQ(1, write(release, &code, 1));
  for (auto &t : th) t.join();
  EXPECT_EQ(kJoiners, ok.load());
  carom_process_free(p);
  close(release);
  unlink(fifo.c_str());
  rmdir(dir);
}

// ------------------------------------------------- identity, env, signals

TEST_P(Method, ChildKnowsItsNameIdentityAndParent) {
  // Identity is assigned at create from a counter: predict the next one.
  Opts x;
  carom_process_t *probe = make(GetParam(), x);
  std::string ident = std::to_string(std::stoi(carom_process_identity(probe)) + 1);
  carom_process_free(probe);
  std::string a = std::string("worker-a") + '\0' + ident + '\0' + carom_current_process_name() +
                  '\0' + std::to_string(getpid());
  x.fn = t_identity;
  x.name = "worker-a";
  x.arg = a.data();
  x.len = a.size() + 1;
  carom_process_t *p = make(GetParam(), x);
  EXPECT_STREQ("worker-a", carom_process_name(p));
  EXPECT_EQ(ident, carom_process_identity(p));
  ASSERT_EQ(0, carom_process_start(p));
  timespec ts;
  EXPECT_EQ(0, carom_process_join(p, carom_deadline(30 * slow_factor(), &ts)));
  int code = -1;
  EXPECT_EQ(0, carom_process_exitcode(p, &code));
  EXPECT_EQ(0, code);
  carom_process_free(p);
}

TEST(Process, DefaultNamesFollowIdentity) {
  EXPECT_STREQ("MainProcess", carom_current_process_name());
  EXPECT_STREQ("", carom_current_process_identity());
  EXPECT_EQ(0, carom_parent_process_pid());
  EXPECT_EQ(nullptr, carom_parent_process_name());
  Opts x;
  carom_process_t *a = make("fork", x), *b = make("fork", x);
  int ia = std::stoi(carom_process_identity(a));
  EXPECT_EQ(std::to_string(ia + 1), carom_process_identity(b));
  EXPECT_EQ("Process-" + std::to_string(ia), carom_process_name(a));
  carom_process_free(a);
  carom_process_free(b);
}

TEST_P(Method, EnvironmentChangesReachTheChild) {
  setenv("CAROM_T_UNSET", "x", 1);
  unsetenv("CAROM_T_SET");
  const char *env[] = {"CAROM_T_SET=42", "CAROM_T_UNSET", nullptr};
  Opts x;
  x.fn = t_env;
  x.env = env;
  EXPECT_EQ(0, run(GetParam(), x));
  EXPECT_STREQ("x", getenv("CAROM_T_UNSET"));  // the parent is untouched
  unsetenv("CAROM_T_UNSET");
}

TEST_P(Method, SignalsResetAndSigintIgnoredOnlyWhenAsked) {
  // The parent ignores SIGUSR1 and blocks SIGUSR2; the child must not inherit.
  struct sigaction ign = {}, old1;
  ign.sa_handler = SIG_IGN;
  sigaction(SIGUSR1, &ign, &old1);
  sigset_t m, oldm;
  sigemptyset(&m);
  sigaddset(&m, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &m, &oldm);
  unsigned char want = 0;
  Opts x;
  x.fn = t_signals;
  x.arg = &want;
  x.len = 1;
  EXPECT_EQ(0, run(GetParam(), x));
  want = 1;
  x.ignore_sigint = true;
  EXPECT_EQ(0, run(GetParam(), x));
  pthread_sigmask(SIG_SETMASK, &oldm, nullptr);
  sigaction(SIGUSR1, &old1, nullptr);
}

// --------------------------------------------------- a parent with threads

TEST_P(Method, SameTargetFromParentRunningThreads) {
  // One thread holds g_mu the whole time, two more churn malloc. A fork child
  // inherits g_mu locked; spawn and forkserver children start from a fresh
  // image where it is free — the reason those methods exist.
  std::atomic<bool> stop{false}, held{false};
  std::thread holder([&] {
    pthread_mutex_lock(&g_mu);
    held = true;
    while (!stop) usleep(1000);
    pthread_mutex_unlock(&g_mu);
  });
  std::vector<std::thread> churn;
  for (int i = 0; i < 2; i++)
    churn.emplace_back([&] {
      while (!stop) {
        std::vector<char> v(4096);
        v[0] = 1;
      }
    });
  // No ASSERT until the threads are joined (a joinable std::thread aborts).
  if (wait_until([&] { return held.load(); })) {
    std::string m = GetParam();
    for (int i = 0; i < 5; i++) EXPECT_EQ(m == "fork" ? 3 : 0, run_fn(m, t_trylock));
    for (int i = 0; i < 5; i++) EXPECT_EQ(17, run_fn(m, t_return, 17));
  } else {
    ADD_FAILURE() << "the holder thread never took g_mu";
  }
  stop = true;
  holder.join();
  for (auto &t : churn) t.join();
}

TEST_P(Method, SpawnedChildIsAFreshImage) {
  g_marker = 5;
  EXPECT_EQ(std::string(GetParam()) == "fork" ? 5 : 0, run_fn(GetParam(), t_marker));
  g_marker = 0;
}

// ----------------------------------------------------- daemonic children

TEST_P(Method, DaemonicChildrenDieWithSigkilledParent) {
  struct Sh {
    volatile pid_t kid, nd;
    volatile int ready;
  };
  auto *sh = static_cast<Sh *>(shared_alloc(sizeof(Sh)));
  std::string m = GetParam();
  char flag[] = "/tmp/carom-flag-XXXXXX";
  int ffd = mkstemp(flag);
  ASSERT_GE(ffd, 0);
  close(ffd);
  unlink(flag);
  ChildGuard parent(fork_child([&] {
    Opts x;
    x.fn = t_loop_flag;
    x.arg = flag;
    x.len = sizeof flag;
    x.daemon = true;
    carom_process_t *p = make(m, x);
    if (carom_process_start(p)) return 1;
    sh->kid = carom_process_pid(p);
    __atomic_store_n(&sh->ready, 1, __ATOMIC_SEQ_CST);
    for (;;) pause();
  }));
  ASSERT_TRUE(wait_until([&] { return __atomic_load_n(&sh->ready, __ATOMIC_SEQ_CST) == 1; }, 20));
  // The daemonic child runs its target (past every start-up check).
  ASSERT_TRUE(wait_until([&] { return access(flag, F_OK) == 0; }, 20));
  unlink(flag);
  int kfd = (int)syscall(SYS_pidfd_open, sh->kid, 0);
  ASSERT_GE(kfd, 0);
  EXPECT_FALSE(fd_readable(kfd, 0));
  kill(parent.pid(), SIGKILL);
  EXPECT_EQ(1000 + SIGKILL, reap_code(parent));
  uint64_t t0 = carom_now_ns();
  EXPECT_TRUE(fd_readable(kfd, (int)(1000 * slow_factor())));
  double el = (double)(carom_now_ns() - t0) / 1e9;
  EXPECT_LT(el, 1.0 * slow_factor());
  if (!fd_readable(kfd, 0)) kill(sh->kid, SIGKILL);
  close(kfd);
  shared_free(sh, sizeof(Sh));
}

TEST_P(Method, DaemonicProcessMayNotStartChildren) {
  Opts x;
  x.fn = t_start_child;
  x.daemon = true;
  EXPECT_EQ(0, run(GetParam(), x));
}

TEST_P(Method, ExitTerminatesDaemonicAndJoinsOthers) {
  struct Sh {
    volatile pid_t d, nd;
    volatile int ready, go;
  };
  auto *sh = static_cast<Sh *>(shared_alloc(sizeof(Sh)));
  std::string m = GetParam();
  ChildGuard parent(fork_child([&]() -> int {
    Opts x;
    x.fn = t_loop;
    x.daemon = true;
    carom_process_t *d = make(m, x);
    Opts y;
    unsigned char b = 3;
    y.fn = t_sleep_then;
    y.arg = &b;
    y.len = 1;
    carom_process_t *nd = make(m, y);
    if (carom_process_start(d) || carom_process_start(nd)) return 1;
    sh->d = carom_process_pid(d);
    sh->nd = carom_process_pid(nd);
    carom_process_free(nd);  // detached: still joined at exit
    __atomic_store_n(&sh->ready, 1, __ATOMIC_SEQ_CST);
    if (!wait_until([&] { return __atomic_load_n(&sh->go, __ATOMIC_SEQ_CST) == 1; }, 20))
      return kChildTimedOut;
    exit(0);  // carom's atexit handler must terminate d and join nd
  }));
  ASSERT_TRUE(wait_until([&] { return __atomic_load_n(&sh->ready, __ATOMIC_SEQ_CST) == 1; }, 20));
  int dfd = (int)syscall(SYS_pidfd_open, sh->d, 0);
  int nfd = (int)syscall(SYS_pidfd_open, sh->nd, 0);
  ASSERT_GE(dfd, 0);
  ASSERT_GE(nfd, 0);
  __atomic_store_n(&sh->go, 1, __ATOMIC_SEQ_CST);
  EXPECT_EQ(0, reap_code(parent));
  // The parent waited for both before it exited: the non-daemonic child (300
  // ms of work) had finished, the daemonic one (an endless loop) was ended.
  EXPECT_TRUE(fd_readable(nfd, 0));
  EXPECT_TRUE(fd_readable(dfd, 0));
  close(dfd);
  close(nfd);
  shared_free(sh, sizeof(Sh));
}

// ------------------------------------------------------ children list

TEST_P(Method, ActiveChildrenReapsFinishedOnes) {
  Opts x;
  x.fn = t_loop;
  x.daemon = true;
  carom_process_t *p[3];
  for (auto &q : p) {
    q = make(GetParam(), x);
    ASSERT_EQ(0, carom_process_start(q));
  }
  carom_process_t *out[8];
  EXPECT_EQ(3, carom_active_children(out, 8));
  EXPECT_EQ(0, carom_process_kill(p[1]));
  ASSERT_TRUE(fd_readable(carom_process_sentinel(p[1]), (int)(10000 * slow_factor())));
  EXPECT_EQ(2, carom_active_children(out, 8));
  EXPECT_TRUE((out[0] == p[0] && out[1] == p[2]) || (out[0] == p[2] && out[1] == p[0]));
  int code;
  ASSERT_EQ(0, carom_process_exitcode(p[1], &code));  // reaped by active_children
  EXPECT_EQ(-SIGKILL, code);
  // A freed (detached) running child is reaped later, never left a zombie.
  pid_t pid0 = carom_process_pid(p[0]);
  carom_process_free(p[0]);
  EXPECT_EQ(1, carom_active_children(out, 8));
  kill(pid0, SIGKILL);
  int pfd = (int)syscall(SYS_pidfd_open, pid0, 0);
  if (pfd >= 0) {
    EXPECT_TRUE(fd_readable(pfd, (int)(10000 * slow_factor())));
    close(pfd);
  }
  // The forkserver reports the death asynchronously; wait for the count.
  EXPECT_TRUE(wait_until([&] { return carom_active_children(out, 8) == 1; }));
  EXPECT_EQ(1, carom_active_children(out, 8));
  siginfo_t si = {};
  EXPECT_EQ(-1, waitid(P_PID, (id_t)pid0, &si, WEXITED | WNOHANG));  // gone: ECHILD
  carom_process_kill(p[2]);
  timespec ts;
  EXPECT_EQ(0, carom_process_join(p[2], carom_deadline(30 * slow_factor(), &ts)));
  EXPECT_EQ(0, carom_active_children(out, 8));
  carom_process_free(p[1]);
  carom_process_free(p[2]);
}

TEST_P(Method, NoZombiesNoFdLeaksOverManyCycles) {
  std::string m = GetParam();
  const int n = m == "spawn" ? 200 : 1000;
  EXPECT_EQ(0, run_fn(m, t_return, 0));  // warm-up (starts the forkserver)
  int fds0 = count_fds();
  for (int i = 0; i < n; i++) {
    int code = run_fn(m, t_return, i % 256);
    if (code != i % 256) {
      ADD_FAILURE() << "cycle " << i << " exit code " << code;
      break;
    }
  }
  EXPECT_EQ(fds0, count_fds());
  EXPECT_EQ(0, count_zombies());
  carom_process_t *out[1];
  EXPECT_EQ(0, carom_active_children(out, 1));
}

// ----------------------------------------------------------- misuse

TEST(Process, MisuseErrors) {
  carom_process_opts_t o = {};
  carom_process_t *p;
  EXPECT_EQ(-EINVAL, carom_process_create(&o, &p));  // size not set
  o.size = sizeof o;
  o.entry = "no-such-entry";
  EXPECT_EQ(-ENOENT, carom_process_create(&o, &p));
  o.entry = "t_entry";
  o.target = t_return;
  EXPECT_EQ(-EINVAL, carom_process_create(&o, &p));
  o.target = nullptr;
  ASSERT_EQ(0, carom_process_create(&o, &p));
  timespec ts;
  EXPECT_EQ(-EINVAL, carom_process_join(p, carom_deadline(0, &ts)));
  EXPECT_EQ(-EINVAL, carom_process_terminate(p));
  EXPECT_FALSE(carom_process_is_alive(p));
  ASSERT_EQ(0, carom_process_start(p));
  EXPECT_EQ(-EINVAL, carom_process_start(p));
  EXPECT_EQ(0, carom_process_join(p, nullptr));
  int code;
  EXPECT_EQ(0, carom_process_exitcode(p, &code));
  EXPECT_EQ(42, code);
  // A handle used in a forked child is not the child's.
  pid_t c = fork_child([&] {
    int k;
    return carom_process_exitcode(p, &k) == CAROM_EFORKED ? 0 : 1;
  });
  EXPECT_EQ(0, reap_code(c));
  carom_process_free(p);
  carom_process_free(nullptr);
}

// ------------------------------------------------ fallback sentinels

// A kernel (or seccomp policy) without pidfd_open, for real: the syscall
// fails with ENOSYS in this process and every image it execs. The first start
// under each method must already choose the fallback sentinel (the mode is
// settled before the fork, not learnt from a failure after it).
TEST(Process, FirstStartsWorkWhenPidfdOpenIsRefused) {
  pid_t c = fork_child([] {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pidfd_open, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {static_cast<unsigned short>(sizeof f / sizeof *f), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 20;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) return 21;
    if (syscall(SYS_pidfd_open, getpid(), 0) != -1 || errno != ENOSYS) return 22;
    int byte = 1;
    for (const char *m : kMethods) {
      if (run_fn(m, t_return, byte) != byte) return byte;  // the first start of each method
      byte++;
    }
    return count_zombies() == 0 ? 0 : 9;
  });
  EXPECT_EQ(0, reap_code(c, 120));
}

TEST(Process, DeathPipeFallbackWithoutPidfd) {
  pid_t c = fork_child([] {
    carom__proc_force_no_pidfd(true);
    for (const char *m : kMethods) {
      if (run_fn(m, t_return, 5) != 5) return 1;
      Opts x;
      x.fn = t_loop;
      x.daemon = true;
      carom_process_t *p = make(m, x);
      if (carom_process_start(p)) return 2;
      if (fd_readable(carom_process_sentinel(p), 20)) return 3;
      carom_process_terminate(p);
      if (!fd_readable(carom_process_sentinel(p), (int)(10000 * slow_factor()))) return 4;
      int code = 0;
      if (carom_process_join(p, nullptr) || carom_process_exitcode(p, &code) || code != -SIGTERM)
        return 5;
      carom_process_free(p);
      int fds = count_fds();
      for (int i = 0; i < 50; i++)
        if (run_fn(m, t_return, 1) != 1) return 6;
      if (count_fds() != fds) return 7;
    }
    return count_zombies() == 0 ? 0 : 8;
  });
  EXPECT_EQ(0, reap_code(c, 120));
}

// --------------------------------------------------------- contexts

TEST(Context, StartMethodRules) {
  pid_t c = fork_child([] {
    if (carom_set_start_method(nullptr, true)) return 1;  // unset (test isolation)
    if (carom_get_start_method(true) != nullptr) return 2;
    const char *all[3];
    if (carom_get_all_start_methods(all, 3) != 3 || strcmp(all[0], "fork") ||
        strcmp(all[1], "spawn") || strcmp(all[2], "forkserver"))
      return 3;
    if (carom_set_start_method("bogus", false) != -EINVAL) return 4;
    if (carom_set_start_method("spawn", false) != 0) return 5;
    if (carom_set_start_method("fork", false) != -EBUSY) return 6;
    if (strcmp(carom_get_start_method(true), "spawn")) return 7;
    if (carom_get_all_start_methods(all, 3) != 3 || strcmp(all[0], "spawn")) return 8;
    carom_context_t *ctx;
    if (carom_get_context(nullptr, &ctx) || strcmp(carom_context_start_method(ctx), "spawn"))
      return 9;
    if (carom_get_context("nope", &ctx) != -EINVAL) return 10;
    // A Process on the default context uses the default method at start.
    g_marker = 6;
    carom_process_opts_t o = {};
    o.size = sizeof o;
    o.target = t_marker;
    carom_process_t *p;
    if (carom_process_create(&o, &p) || carom_process_start(p) || carom_process_join(p, nullptr))
      return 11;
    int code = -1;
    carom_process_exitcode(p, &code);
    carom_process_free(p);
    if (code != 0) return 12;  // spawned: a fresh image, g_marker == 0
    if (carom_set_start_method("fork", true) != 0) return 13;
    if (carom_set_start_method(nullptr, true) || carom_get_start_method(true)) return 14;
    if (strcmp(carom_get_start_method(false), "fork")) return 15;  // fixes the default
    if (carom_set_start_method("spawn", false) != -EBUSY) return 16;
    return 0;
  });
  EXPECT_EQ(0, reap_code(c));
}

TEST(Context, ForkserverPreloadRunsInServer) {
  pid_t c = fork_child([] {
    const char *pre[] = {"t_preload_entry", nullptr};
    if (carom_set_forkserver_preload(pre)) return 1;
    if (run_fn("forkserver", t_preloaded) != 77) return 2;
    if (g_preloaded != 0) return 3;  // ran in the server, not here
    if (run_fn("spawn", t_preloaded) != 0) return 4;
    return 0;
  });
  EXPECT_EQ(0, reap_code(c));
}

// A forkserver that is alive but does not answer (stopped here) does not
// hang a start: it fails with -ETIMEDOUT after the reply timeout, the server
// is killed and reaped, and the next start runs a new one.
TEST(Context, StoppedForkserverTimesOutAndIsReplaced) {
  pid_t c = fork_child([] {
    if (run_fn("forkserver", t_return, 3) != 3) return 1;  // the server is up
    pid_t server = carom__forkserver_pid();
    if (server <= 0) return 2;
    if (kill(server, SIGSTOP) != 0) return 3;
    carom__forkserver_set_reply_timeout(0.2);
    Opts x;
    x.fn = t_return;
    carom_process_t *p = make("forkserver", x);
    if (!p) return 4;
    uint64_t t0 = carom_now_ns();
    int rc = carom_process_start(p);
    double took = (carom_now_ns() - t0) / 1e9;
    carom_process_free(p);
    if (rc != -ETIMEDOUT) return 5;
    if (took > 0.2 + 2 * slow_factor()) return 6;
    if (kill(server, 0) == 0 || errno != ESRCH) return 7;  // killed and reaped
    if (run_fn("forkserver", t_return, 9) != 9) return 8;  // a new server
    if (carom__forkserver_pid() == server) return 9;
    return 0;
  });
  EXPECT_EQ(0, reap_code(c));
}

// --------------------------------------------------------- cpu_count

TEST(CpuCount, HonoursAffinityMask) {
  int n = carom_cpu_count();
  EXPECT_GE(n, 1);
  EXPECT_LE(n, (int)sysconf(_SC_NPROCESSORS_ONLN));
  pid_t c = fork_child([] {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set)) return 1;
    int first = -1;
    for (int i = 0; i < CPU_SETSIZE && first < 0; i++)
      if (CPU_ISSET(i, &set)) first = i;
    CPU_ZERO(&set);
    CPU_SET(first, &set);
    if (sched_setaffinity(0, sizeof set, &set)) return 2;
    return carom_cpu_count() == 1 ? 0 : 3;
  });
  EXPECT_EQ(0, reap_code(c));
}

TEST(CpuCount, CgroupQuotaIsMinimumOverAncestors) {
  char tmpl[] = "/tmp/carom-cg-XXXXXX";
  ASSERT_NE(nullptr, mkdtemp(tmpl));
  std::string root = tmpl;
  auto put = [&](const std::string &rel, const char *text) {
    std::string d = root + rel;
    mkdir(d.c_str(), 0755);
    FILE *f = fopen((d + "/cpu.max").c_str(), "w");
    ASSERT_NE(nullptr, f);
    fputs(text, f);
    fclose(f);
  };
  put("", "100000 100000\n");  // the root's own file is never read
  put("/a", "150000 100000\n");
  put("/a/b", "max 100000\n");
  mkdir((root + "/a/b/c").c_str(), 0755);
  EXPECT_EQ(0, carom__cgroup_cpu_limit(root.c_str(), "/"));
  EXPECT_EQ(2, carom__cgroup_cpu_limit(root.c_str(), "/a"));
  EXPECT_EQ(2, carom__cgroup_cpu_limit(root.c_str(), "/a/b"));
  EXPECT_EQ(2, carom__cgroup_cpu_limit(root.c_str(), "/a/b/c"));  // no file: ancestors
  put("/a/b/c", "50000 100000\n");
  EXPECT_EQ(1, carom__cgroup_cpu_limit(root.c_str(), "/a/b/c"));
  EXPECT_EQ(0, carom__cgroup_cpu_limit(root.c_str(), "/missing"));
  (void)!system(("rm -rf " + root).c_str());
}

INSTANTIATE_TEST_SUITE_P(StartMethods, Method, ::testing::ValuesIn(kMethods),
                         [](const ::testing::TestParamInfo<const char *> &i) {
                           return std::string(i.param);
                         });
