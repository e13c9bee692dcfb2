// tests/shm/test_tracker.cpp — the resource tracker: names of a SIGKILLed
// creator vanish within 1 s; a living family member keeps them; attaching never
// registers; a re-created name is never removed by a stale registration; the
// tracker itself exits once the family is gone.
//
// The creators here are separate programs (this binary re-executed with a
// gtest filter and CAROM_TEST_TRACK_* in the environment), so their family is
// theirs alone and not this test process's.
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <string>

#include "carom/shm.h"
#include "testutil.h"

// Test hook from shm/internal.h (a C-only header): this family's tracker pid.
extern "C" pid_t carom__tracker_pid(void);

using namespace carom_test;

namespace {
// Control block at the start of every helper segment.
struct Ctl {
  volatile uint32_t ready;    // helper -> test: set up
  volatile int32_t tracker;   // helper's tracker pid
  volatile int32_t grandkid;  // pid of the helper's fork child (family mode)
  volatile uint32_t release;  // test -> helper's fork child: exit now
  volatile uint32_t data[60];
};

std::string uniq(const char *tag) {
  static int n;
  return std::string("carom-test-") + tag + "-" + std::to_string(getpid()) + "-" +
         std::to_string(n++);
}

bool name_exists(const std::string &name) {
  struct stat st;
  return stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

void nap_ms(int ms) {
  struct timespec d = {0, ms * 1000000L};
  nanosleep(&d, nullptr);
}

// Has pid exited (reaped or zombie)? Through a pidfd, as carom does.
bool exited(pid_t pid) {
  int fd = int(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;
  struct pollfd p = {fd, POLLIN, 0};
  int r = poll(&p, 1, 0);
  close(fd);
  return r == 1;
}

pid_t spawn_helper(const std::string &name, const char *mode) {
  return fork_child([&] {
    setenv("CAROM_TEST_TRACK_NAME", name.c_str(), 1);
    setenv("CAROM_TEST_TRACK_MODE", mode, 1);
    execl("/proc/self/exe", "test_tracker", "--gtest_filter=TrackerHelper.Run", (char *)nullptr);
    return 127;
  });
}

// Attach to the helper's segment once it reports ready.
carom_shm_t *attach_ready(const std::string &name) {
  carom_shm_t *s = nullptr;
  bool ok = wait_until(
      [&] {
        if (!s && carom_shm_attach(name.c_str(), 0, &s) != 0) return false;
        return static_cast<Ctl *>(carom_shm_addr(s))->ready == 1;
      },
      10);
  if (!ok) {
    carom_shm_close(s);
    return nullptr;
  }
  return s;
}
}  // namespace

// The helper program (runs only when re-executed by the tests below).
TEST(TrackerHelper, Run) {
  const char *name = getenv("CAROM_TEST_TRACK_NAME");
  const char *mode = getenv("CAROM_TEST_TRACK_MODE");
  if (!name || !mode) GTEST_SKIP() << "helper: runs when re-executed by Tracker.* tests";
  std::string m = mode;
  carom_shm_t *s = nullptr;
  if (m == "attach") {
    // Attach, write, close, exit: must never register anything.
    ASSERT_EQ(0, carom_shm_attach(name, 0, &s));
    static_cast<Ctl *>(carom_shm_addr(s))->data[0] = 1234;
    carom_shm_close(s);
    ASSERT_EQ(0, carom__tracker_pid());
    return;
  }
  if (m == "recreate") {
    // Create (tracked); someone else removes the name and makes a new segment
    // under it; our stale registration must not remove theirs.
    ASSERT_EQ(0, carom_shm_create(name, 4096, 0, &s));
    auto *c = static_cast<Ctl *>(carom_shm_addr(s));
    ASSERT_EQ(0, carom_shm_unlink_name(name));
    carom_shm_t *other = nullptr;
    ASSERT_EQ(0, carom_shm_create(name, 4096, CAROM_SHM_UNTRACKED, &other));
    auto *oc = static_cast<Ctl *>(carom_shm_addr(other));
    oc->tracker = carom__tracker_pid();
    oc->ready = 1;
    (void)c;
    carom_shm_close(other);  // closing never unlinks
    carom_shm_close(s);
    return;  // exit: the family (just us) ends
  }
  ASSERT_EQ(0, carom_shm_create(name, 4096, 0, &s));
  auto *c = static_cast<Ctl *>(carom_shm_addr(s));
  c->tracker = carom__tracker_pid();
  if (m == "family") {
    // A fork child is a family member: it keeps the name alive after we die.
    pid_t k = fork();
    ASSERT_GE(k, 0);
    if (k == 0) {
      for (int i = 0; i < 60000 && !c->release; i++) nap_ms(1);
      _exit(0);
    }
    c->grandkid = k;
  }
  c->ready = 1;
  if (m == "hang" || m == "family") {
    for (;;) pause();  // until SIGKILLed by the test
  }
}

TEST(Tracker, SigkilledCreatorsNameIsGoneWithinOneSecond) {
  std::string name = uniq("kill");
  ChildGuard c(spawn_helper(name, "hang"));
  carom_shm_t *att = attach_ready(name);
  ASSERT_NE(nullptr, att);
  auto *ctl = static_cast<Ctl *>(carom_shm_addr(att));
  pid_t tracker = ctl->tracker;
  ASSERT_GT(tracker, 0);
  EXPECT_NE(0, kill(tracker, 0) == 0 ? 1 : 0);
  ASSERT_TRUE(name_exists(name));
  kill(c.pid(), SIGKILL);
  EXPECT_EQ(1000 + SIGKILL, reap_code(c));
  EXPECT_TRUE(wait_until([&] { return !name_exists(name); }, 1.0)) << "name outlived its family";
  // The tracker exits once it has cleaned up: no orphan that lives forever.
  EXPECT_TRUE(wait_until([&] { return exited(tracker); }, 5.0));
  // An attacher keeps a working mapping after the name is gone (P23).
  ctl->data[5] = 77;
  EXPECT_EQ(77u, ctl->data[5]);
  carom_shm_close(att);
}

TEST(Tracker, LivingFamilyMemberKeepsTheNameThenItIsRemoved) {
  std::string name = uniq("family");
  ChildGuard c(spawn_helper(name, "family"));
  carom_shm_t *att = attach_ready(name);
  ASSERT_NE(nullptr, att);
  auto *ctl = static_cast<Ctl *>(carom_shm_addr(att));
  pid_t tracker = ctl->tracker, kid = ctl->grandkid;
  ASSERT_GT(kid, 0);
  kill(c.pid(), SIGKILL);
  EXPECT_EQ(1000 + SIGKILL, reap_code(c));
  // The creator is gone but its fork child lives: the name must stay. (A
  // wrong tracker would act within milliseconds of the creator's death.)
  nap_ms(200);
  EXPECT_TRUE(name_exists(name));
  EXPECT_FALSE(exited(tracker));
  ctl->release = 1;
  EXPECT_TRUE(wait_until([&] { return !name_exists(name); }, 5.0));
  EXPECT_TRUE(wait_until([&] { return exited(tracker); }, 5.0));
  EXPECT_TRUE(wait_until([&] { return exited(kid); }, 5.0));
  carom_shm_close(att);
}

TEST(Tracker, AttachingNeverRegistersOrUnlinks) {
  std::string name = uniq("attach");
  carom_shm_t *s = nullptr;
  ASSERT_EQ(0, carom_shm_create(name.c_str(), 4096, CAROM_SHM_UNTRACKED, &s));
  pid_t c = spawn_helper(name, "attach");
  ASSERT_EQ(0, reap_code(c));
  EXPECT_EQ(1234u, static_cast<Ctl *>(carom_shm_addr(s))->data[0]);
  EXPECT_TRUE(name_exists(name));
  // A fork child that attaches and exits does not unlink either.
  pid_t k = fork_child([&] {
    carom_shm_t *a = nullptr;
    if (carom_shm_attach(name.c_str(), 0, &a) != 0) return 2;
    carom_shm_close(a);
    return 0;
  });
  ASSERT_EQ(0, reap_code(k));
  EXPECT_TRUE(name_exists(name));
  EXPECT_EQ(0, carom_shm_unlink(s));
  carom_shm_close(s);
}

TEST(Tracker, StaleRegistrationNeverRemovesARecreatedName) {
  std::string name = uniq("recreate");
  pid_t c = spawn_helper(name, "recreate");
  ASSERT_EQ(0, reap_code(c));
  carom_shm_t *s = nullptr;
  ASSERT_EQ(0, carom_shm_attach(name.c_str(), 0, &s));
  pid_t tracker = static_cast<Ctl *>(carom_shm_addr(s))->tracker;
  ASSERT_GT(tracker, 0);
  // Once the helper's tracker has done its end-of-family work and exited...
  EXPECT_TRUE(wait_until([&] { return exited(tracker); }, 5.0));
  // ...the untracked segment made under the same name is still there.
  EXPECT_TRUE(name_exists(name));
  EXPECT_EQ(0, carom_shm_unlink(s));
  carom_shm_close(s);
}

TEST(Tracker, CreatorUnlinkUnregistersAndForkChildrenShareTheTracker) {
  std::string name = uniq("own");
  carom_shm_t *s = nullptr;
  ASSERT_EQ(0, carom_shm_create(name.c_str(), 4096, 0, &s));
  pid_t tracker = carom__tracker_pid();
  ASSERT_GT(tracker, 0);
  // A fork child is in this family: it uses the same tracker.
  auto *seen = static_cast<volatile int32_t *>(shared_alloc(4096));
  pid_t k = fork_child([&] {
    carom_shm_t *t = nullptr;
    if (carom_shm_create((name + "-kid").c_str(), 4096, 0, &t) != 0) return 2;
    seen[0] = carom__tracker_pid();
    if (carom_shm_unlink(t) != 0) return 3;
    carom_shm_close(t);
    return 0;
  });
  ASSERT_EQ(0, reap_code(k));
  EXPECT_EQ(tracker, seen[0]);
  EXPECT_FALSE(name_exists(name + "-kid"));
  EXPECT_EQ(0, carom_shm_unlink(s));
  EXPECT_FALSE(name_exists(name));
  carom_shm_close(s);
  shared_free(const_cast<int32_t *>(seen), 4096);
}
