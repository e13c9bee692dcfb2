// tests/shm/test_segment.cpp — anonymous and named segments: inheritance by
// fork, attach by name (also from an exec'd process), error codes, a tmpfs
// too small (ENOSPC at create, no SIGBUS) and a machine without /dev/shm.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "carom/shm.h"
#include "testutil.h"

using namespace carom_test;

static std::string uniq(const char *tag) {
  static int n;
  return std::string("carom-test-") + tag + "-" + std::to_string(getpid()) + "-" +
         std::to_string(n++);
}

static bool name_exists(const std::string &name) {
  struct stat st;
  return stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

TEST(ShmAnon, ForkChildSeesSameAddressAndWrites) {
  carom_shm_t *s = nullptr;
  ASSERT_EQ(0, carom_shm_anon_create(1 << 20, &s));
  ASSERT_EQ(size_t(1 << 20), carom_shm_size(s));
  EXPECT_EQ(nullptr, carom_shm_name(s));
  auto *p = static_cast<volatile uint64_t *>(carom_shm_addr(s));
  EXPECT_EQ(0u, p[1000]);  // zero-filled
  void *addr = carom_shm_addr(s);
  pid_t c = fork_child([&] {
    if (carom_shm_addr(s) != addr) return 2;
    for (int i = 0; i < 1000; i++) p[i] = uint64_t(i) * 3;
    return 0;
  });
  ASSERT_EQ(0, reap_code(c));
  for (int i = 0; i < 1000; i++) ASSERT_EQ(uint64_t(i) * 3, p[i]);
  EXPECT_EQ(-EINVAL, carom_shm_unlink(s));
  carom_shm_close(s);
  carom_shm_close(nullptr);
}

TEST(ShmAnon, ZeroSizeIsEinval) {
  carom_shm_t *s = nullptr;
  EXPECT_EQ(-EINVAL, carom_shm_anon_create(0, &s));
}

TEST(ShmNamed, CreateAttachSizeCloseUnlink) {
  std::string name = uniq("basic");
  carom_shm_t *c = nullptr, *a = nullptr;
  ASSERT_EQ(0, carom_shm_create(("/" + name).c_str(), 10000, 0, &c));
  EXPECT_STREQ(name.c_str(), carom_shm_name(c));
  EXPECT_EQ(size_t(10000), carom_shm_size(c));
  EXPECT_TRUE(name_exists(name));
  memcpy(carom_shm_addr(c), "hello", 6);
  ASSERT_EQ(0, carom_shm_attach(name.c_str(), 0, &a));
  EXPECT_EQ(size_t(10000), carom_shm_size(a));
  EXPECT_NE(carom_shm_addr(a), carom_shm_addr(c));  // a second mapping
  EXPECT_STREQ("hello", static_cast<char *>(carom_shm_addr(a)));
  carom_shm_close(a);
  // A prefix may be mapped; a larger size may not.
  ASSERT_EQ(0, carom_shm_attach(name.c_str(), 100, &a));
  EXPECT_EQ(size_t(100), carom_shm_size(a));
  carom_shm_close(a);
  EXPECT_EQ(-EOVERFLOW, carom_shm_attach(name.c_str(), 10001, &a));
  EXPECT_TRUE(name_exists(name));  // closing an attachment never unlinks
  EXPECT_EQ(0, carom_shm_unlink(c));
  EXPECT_FALSE(name_exists(name));
  EXPECT_EQ(-ENOENT, carom_shm_unlink(c));
  // The creator's mapping outlives the name.
  EXPECT_STREQ("hello", static_cast<char *>(carom_shm_addr(c)));
  carom_shm_close(c);
}

TEST(ShmNamed, ClearErrors) {
  std::string name = uniq("err");
  carom_shm_t *s = nullptr, *t = nullptr;
  EXPECT_EQ(-ENOENT, carom_shm_attach(name.c_str(), 0, &s));
  EXPECT_EQ(-ENOENT, carom_shm_unlink_name(name.c_str()));
  ASSERT_EQ(0, carom_shm_create(name.c_str(), 4096, 0, &s));
  EXPECT_EQ(-EEXIST, carom_shm_create(name.c_str(), 4096, 0, &t));
  EXPECT_EQ(-EEXIST, carom_shm_create(("/" + name).c_str(), 8192, 0, &t));
  EXPECT_TRUE(name_exists(name));  // the failed create left the original alone
  const char *bad[] = {"", "/", "a/b", "/a/b", ".", "..", "/..", nullptr};
  for (const char **b = bad; *b; b++) {
    EXPECT_EQ(-EINVAL, carom_shm_create(*b, 4096, 0, &t)) << *b;
    EXPECT_EQ(-EINVAL, carom_shm_attach(*b, 0, &t)) << *b;
  }
  EXPECT_EQ(-EINVAL, carom_shm_create(nullptr, 4096, 0, &t));
  std::string longname(CAROM_SHM_NAME_MAX + 1, 'x');
  EXPECT_EQ(-EINVAL, carom_shm_create(longname.c_str(), 4096, 0, &t));
  EXPECT_EQ(-EINVAL, carom_shm_create((name + "z").c_str(), 0, 0, &t));
  EXPECT_EQ(-EINVAL, carom_shm_create((name + "z").c_str(), 4096, 0x80, &t));
  EXPECT_EQ(0, carom_shm_unlink(s));
  carom_shm_close(s);
}

// ---- attach from a process started with exec (not a fork child) ----

// Runs only when re-executed by AttachFromExecedProcess.
TEST(ShmExecHelper, AttachCheckAndAnswer) {
  const char *name = getenv("CAROM_TEST_SHM_NAME");
  if (!name) GTEST_SKIP() << "helper: runs when re-executed by ShmNamed.AttachFromExecedProcess";
  carom_shm_t *s = nullptr;
  ASSERT_EQ(0, carom_shm_attach(name, 0, &s));
  ASSERT_EQ(size_t(65536), carom_shm_size(s));
  auto *p = static_cast<uint32_t *>(carom_shm_addr(s));
  for (uint32_t i = 1; i < 16384; i++) ASSERT_EQ(i * 7, p[i]);
  p[0] = 0xC0FFEE;
  carom_shm_close(s);
}

TEST(ShmNamed, AttachFromExecedProcess) {
  std::string name = uniq("exec");
  carom_shm_t *s = nullptr;
  ASSERT_EQ(0, carom_shm_create(name.c_str(), 65536, 0, &s));
  auto *p = static_cast<volatile uint32_t *>(carom_shm_addr(s));
  for (uint32_t i = 1; i < 16384; i++) p[i] = i * 7;
  pid_t c = fork_child([&] {
    setenv("CAROM_TEST_SHM_NAME", name.c_str(), 1);
    execl("/proc/self/exe", "test_segment", "--gtest_filter=ShmExecHelper.AttachCheckAndAnswer",
          (char *)nullptr);
    return 127;
  });
  ASSERT_EQ(0, reap_code(c));
  EXPECT_EQ(0xC0FFEEu, p[0]);
  EXPECT_TRUE(name_exists(name));  // the attacher exited: the name stays
  EXPECT_EQ(0, carom_shm_unlink(s));
  carom_shm_close(s);
}

// ---- private mount namespaces (root only) ----

// Run fn in a child inside a private mount namespace; 77 means "cannot".
static int in_mount_ns(const std::function<int()> &fn) {
  pid_t c = fork_child([&] {
    if (unshare(CLONE_NEWNS) != 0) return 77;
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return 77;
    return fn();
  });
  return reap_code(c);
}

TEST(ShmNamed, TinyTmpfsFailsAtCreateWithEnospcNotSigbus) {
  std::string name = uniq("tiny");
  int rc = in_mount_ns([&] {
    if (mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=1m") != 0) return 77;
    carom_shm_t *s = nullptr;
    // Larger than the filesystem: a clean error, and nothing left behind.
    if (carom_shm_create(name.c_str(), 4 << 20, CAROM_SHM_UNTRACKED, &s) != -ENOSPC) return 2;
    if (name_exists(name)) return 3;
    // Fits: reserved at create, so touching every page cannot SIGBUS.
    if (carom_shm_create(name.c_str(), 768 << 10, CAROM_SHM_UNTRACKED, &s) != 0) return 4;
    memset(carom_shm_addr(s), 0xAB, carom_shm_size(s));
    // The space is taken: a second segment that would fit only in the
    // unreserved remainder of the first one's size fails now, not later.
    carom_shm_t *t = nullptr;
    if (carom_shm_create((name + "b").c_str(), 512 << 10, CAROM_SHM_UNTRACKED, &t) != -ENOSPC)
      return 5;
    if (carom_shm_unlink(s) != 0) return 6;
    carom_shm_close(s);
    return 0;
  });
  if (rc == 77) GTEST_SKIP() << "needs root and unshare(CLONE_NEWNS)";
  EXPECT_EQ(0, rc);
}

TEST(ShmNamed, NoDevShmIsEnodevWhileAnonymousMemoryWorks) {
  int rc = in_mount_ns([&] {
    // A fresh tmpfs over /dev hides /dev/shm (and everything else in /dev).
    if (mount("tmpfs", "/dev", "tmpfs", 0, "size=64k") != 0) return 77;
    struct stat st;
    if (stat("/dev/shm", &st) == 0) return 2;
    carom_shm_t *s = nullptr;
    if (carom_shm_create("carom-test-nodevshm", 4096, CAROM_SHM_UNTRACKED, &s) != -ENODEV)
      return 3;
    if (carom_shm_attach("carom-test-nodevshm", 0, &s) != -ENODEV) return 4;
    if (carom_shm_anon_create(8 << 20, &s) != 0) return 5;
    memset(carom_shm_addr(s), 1, carom_shm_size(s));
    carom_shm_close(s);
    carom_heap_t *h = nullptr;
    if (carom_heap_create(16 << 20, &h) != 0) return 6;
    void *p = nullptr;
    if (carom_heap_alloc(h, 1 << 20, 64, &p) != 0) return 7;
    memset(p, 2, 1 << 20);
    carom_value_opts_t o{};
    o.size = sizeof o;
    o.heap = h;
    carom_value_t *v = nullptr;
    int64_t x = 41;
    if (carom_value_create('q', &x, &o, &v) != 0) return 8;
    if (carom_value_fetch_add(v, 1, nullptr) != 0 || carom_value_get_i64(v, &x) != 0 || x != 42)
      return 9;
    carom_heap_destroy(h);
    return 0;
  });
  if (rc == 77) GTEST_SKIP() << "needs root and unshare(CLONE_NEWNS)";
  EXPECT_EQ(0, rc);
}
