// tests/ipc/test_ring.cpp — SPSC and MPMC rings: sizes and misuse, FIFO,
// full/empty/closed, timeouts, exact cross-process delivery, and recovery from
// a producer or consumer that dies in the middle of its copy (made
// deterministic by a guard page that faults the memcpy half-way).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "carom/ring.h"
#include "testutil.h"

using namespace carom_test;

namespace {

struct Ring {
  void *mem = nullptr;
  size_t size = 0;
  carom_ring_t *r = nullptr;
  Ring(carom_ring_kind_t kind, size_t slots, size_t slot_size) {
    size = carom_ring_size(slots, slot_size);
    mem = shared_alloc(size);
    if (carom_ring_init(mem, size, kind, slots, slot_size, &r) != 0) abort();
  }
  ~Ring() { shared_free(mem, size); }
};

// A buffer whose first `good` bytes are accessible and whose next page is not:
// a memcpy of more than `good` bytes through it faults half-way.
struct GuardBuf {
  unsigned char *region;
  long page = sysconf(_SC_PAGESIZE);
  unsigned char *p;
  explicit GuardBuf(size_t good) {
    region = static_cast<unsigned char *>(
        mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (region == MAP_FAILED) abort();
    mprotect(region + page, page, PROT_NONE);
    p = region + page - good;
    memset(region, 0x5a, page);
  }
  ~GuardBuf() { munmap(region, 2 * page); }
};

// Die by the fault itself, not by a sanitizer's report.
void default_segv() {
  signal(SIGSEGV, SIG_DFL);
  signal(SIGBUS, SIG_DFL);
}

const carom_ring_kind_t kKinds[] = {CAROM_RING_SPSC, CAROM_RING_MPMC};

}  // namespace

TEST(Ring, SizeAndInitValidation) {
  EXPECT_EQ(0u, carom_ring_size(0, 64));
  EXPECT_EQ(0u, carom_ring_size((size_t)CAROM_RING_MAX_SLOTS + 1, 64));
  size_t sz = carom_ring_size(8, 64);
  ASSERT_GT(sz, 8u * 64);
  EXPECT_EQ(sz, carom_ring_size(8, 60) + 0);  // slots round to 16 bytes
  void *mem = shared_alloc(sz + 64);
  carom_ring_t *r = nullptr;
  EXPECT_EQ(-EINVAL, carom_ring_init(mem, sz - 1, CAROM_RING_MPMC, 8, 64, &r));
  EXPECT_EQ(-EINVAL, carom_ring_init(static_cast<char *>(mem) + 8, sz, CAROM_RING_MPMC, 8, 64, &r));
  EXPECT_EQ(-EINVAL, carom_ring_init(mem, sz, (carom_ring_kind_t)7, 8, 64, &r));
  EXPECT_EQ(nullptr, carom_ring_attach(mem));
  ASSERT_EQ(0, carom_ring_init(mem, sz, CAROM_RING_MPMC, 8, 64, &r));
  EXPECT_EQ(r, carom_ring_attach(mem));
  EXPECT_EQ(8u, carom_ring_capacity(r));
  EXPECT_EQ(64u, carom_ring_slot_size(r));
  EXPECT_EQ(CAROM_RING_MPMC, carom_ring_kind(r));
  carom_ring_destroy(r);
  shared_free(mem, sz + 64);
}

TEST(Ring, FifoFullEmptyAndSizeErrorsBothKinds) {
  for (carom_ring_kind_t kind : kKinds) {
    for (size_t slots : {4u, 5u}) {  // power of two and not
      SCOPED_TRACE(testing::Message() << "kind " << kind << " slots " << slots);
      Ring ring(kind, slots, 32);
      char buf[64];
      EXPECT_EQ(-EAGAIN, carom_ring_tryget(ring.r, buf, sizeof buf));
      for (int round = 0; round < 3; round++) {  // wraps around the slots
        for (size_t i = 0; i < slots; i++) {
          char item[32];
          int n = snprintf(item, sizeof item, "item-%d-%zu", round, i);
          ASSERT_EQ(0, carom_ring_tryput(ring.r, item, (size_t)n));
        }
        EXPECT_EQ(slots, carom_ring_count(ring.r));
        EXPECT_EQ(-EAGAIN, carom_ring_tryput(ring.r, "x", 1));
        for (size_t i = 0; i < slots; i++) {
          char want[32];
          int n = snprintf(want, sizeof want, "item-%d-%zu", round, i);
          ASSERT_EQ(n, carom_ring_tryget(ring.r, buf, sizeof buf));
          EXPECT_EQ(0, memcmp(want, buf, (size_t)n));
        }
        EXPECT_EQ(-EAGAIN, carom_ring_tryget(ring.r, buf, sizeof buf));
      }
      char big[33] = {0};
      EXPECT_EQ(CAROM_EMSGSIZE, carom_ring_tryput(ring.r, big, 33));
      EXPECT_EQ(0, carom_ring_tryput(ring.r, big, 0));  // empty items are items
      EXPECT_EQ(0, carom_ring_tryput(ring.r, "hello", 5));
      EXPECT_EQ(0, carom_ring_tryget(ring.r, buf, sizeof buf));
      // Too small a buffer leaves the item in place.
      EXPECT_EQ(CAROM_ETOOSHORT, carom_ring_tryget(ring.r, buf, 4));
      EXPECT_EQ(5, carom_ring_tryget(ring.r, buf, 5));
      carom_ring_stats_t st;
      carom_ring_stats(ring.r, &st);
      EXPECT_EQ(3 * slots + 2, st.puts);
      EXPECT_EQ(3 * slots + 2, st.gets);
      EXPECT_EQ(0u, st.lost_puts);
    }
  }
}

TEST(Ring, CloseRejectsPutsDrainsThenReportsClosed) {
  for (carom_ring_kind_t kind : kKinds) {
    Ring ring(kind, 4, 16);
    char buf[16];
    ASSERT_EQ(0, carom_ring_put(ring.r, "a", 1, nullptr));
    EXPECT_FALSE(carom_ring_closed(ring.r));
    carom_ring_close(ring.r);
    carom_ring_close(ring.r);
    EXPECT_TRUE(carom_ring_closed(ring.r));
    EXPECT_EQ(CAROM_ECLOSED, carom_ring_put(ring.r, "b", 1, nullptr));
    EXPECT_EQ(CAROM_ECLOSED, carom_ring_tryput(ring.r, "b", 1));
    EXPECT_EQ(1, carom_ring_get(ring.r, buf, sizeof buf, nullptr));
    EXPECT_EQ(CAROM_ECLOSED, carom_ring_get(ring.r, buf, sizeof buf, nullptr));
    EXPECT_EQ(CAROM_ECLOSED, carom_ring_tryget(ring.r, buf, sizeof buf));
  }
}

TEST(Ring, DeadlinesOnEmptyAndFull) {
  for (carom_ring_kind_t kind : kKinds) {
    Ring ring(kind, 1, 8);
    char buf[8];
    timespec ts;
    uint64_t t0 = carom_now_ns();
    EXPECT_EQ(-ETIMEDOUT, carom_ring_get(ring.r, buf, sizeof buf, carom_deadline(0.05, &ts)));
    double el = (double)(carom_now_ns() - t0) / 1e9;
    EXPECT_GE(el, 0.05);
    EXPECT_LT(el, 1.0 * slow_factor());
    EXPECT_EQ(-ETIMEDOUT, carom_ring_get(ring.r, buf, sizeof buf, carom_deadline(0, &ts)));
    ASSERT_EQ(0, carom_ring_put(ring.r, "x", 1, carom_deadline(0, &ts)));  // past: try once
    t0 = carom_now_ns();
    EXPECT_EQ(-ETIMEDOUT, carom_ring_put(ring.r, "y", 1, carom_deadline(0.05, &ts)));
    el = (double)(carom_now_ns() - t0) / 1e9;
    EXPECT_GE(el, 0.05);
    EXPECT_LT(el, 1.0 * slow_factor());
  }
}

TEST(Ring, BlockedGetterWakesOnPutAndOnCloseAcrossProcesses) {
  for (carom_ring_kind_t kind : kKinds) {
    Ring ring(kind, 2, 8);
    auto *flag = static_cast<std::atomic<int> *>(shared_alloc(sizeof(std::atomic<int>)));
    ChildGuard c(fork_child([&] {
      char buf[8];
      flag->store(1);
      if (carom_ring_get(ring.r, buf, sizeof buf, nullptr) != 3) return 1;
      if (memcmp(buf, "abc", 3)) return 2;
      flag->store(2);
      // Blocks again until the parent closes the ring.
      return carom_ring_get(ring.r, buf, sizeof buf, nullptr) == CAROM_ECLOSED ? 0 : 3;
    }));
    ASSERT_TRUE(wait_until([&] { return flag->load() == 1; }));
    ASSERT_EQ(0, carom_ring_put(ring.r, "abc", 3, nullptr));
    ASSERT_TRUE(wait_until([&] { return flag->load() == 2; }));
    carom_ring_close(ring.r);
    EXPECT_EQ(0, reap_code(c, 10));
    shared_free(flag, sizeof(std::atomic<int>));
  }
}

// Exact cross-process delivery through a small ring (so both sides block
// often): every item once, in order.
TEST(Ring, SpscExactDeliveryAcrossProcesses) {
  Ring ring(CAROM_RING_SPSC, 16, 64);
  const uint64_t n = 200000;
  ChildGuard prod(fork_child([&] {
    unsigned char item[64];
    for (uint64_t i = 0; i < n; i++) {
      size_t len = 8 + i % 56;
      memset(item, (int)(i & 0xff), len);
      memcpy(item, &i, 8);
      if (carom_ring_put(ring.r, item, len, nullptr) != 0) return 1;
    }
    return 0;
  }));
  unsigned char buf[64];
  for (uint64_t i = 0; i < n; i++) {
    ssize_t len = carom_ring_get(ring.r, buf, sizeof buf, nullptr);
    ASSERT_EQ((ssize_t)(8 + i % 56), len);
    uint64_t got;
    memcpy(&got, buf, 8);
    ASSERT_EQ(i, got);
    if (len > 8) {
      ASSERT_EQ((unsigned char)(i & 0xff), buf[len - 1]);
    }
  }
  EXPECT_EQ(0, reap_code(prod, 30));
  EXPECT_EQ(-EAGAIN, carom_ring_tryget(ring.r, buf, sizeof buf));
}

// 2 producer and 2 consumer threads on a small MPMC ring: every item exactly
// once, per-producer order kept by each consumer. (The Queue tests run the
// 4x4 versions with processes and threads.)
TEST(Ring, MpmcExactDeliveryThreads) {
  Ring ring(CAROM_RING_MPMC, 8, 16);
  const uint32_t per = 50000;
  std::vector<std::atomic<uint8_t>> seen(2 * per);
  std::atomic<int> bad{0};
  std::vector<std::thread> th;
  for (uint32_t p = 0; p < 2; p++)
    th.emplace_back([&, p] {
      for (uint32_t i = 0; i < per; i++) {
        uint32_t item[2] = {p, i};
        if (carom_ring_put(ring.r, item, sizeof item, nullptr) != 0) bad++;
      }
    });
  for (int c = 0; c < 2; c++)
    th.emplace_back([&] {
      int64_t last[2] = {-1, -1};
      uint32_t item[4];
      for (;;) {
        ssize_t n = carom_ring_get(ring.r, item, sizeof item, nullptr);
        if (n == CAROM_ECLOSED) return;
        if (n != 8 || item[0] > 1 || (int64_t)item[1] <= last[item[0]]) {
          bad++;
          return;
        }
        last[item[0]] = item[1];
        seen[item[0] * per + item[1]]++;
      }
    });
  th[0].join();
  th[1].join();
  carom_ring_close(ring.r);
  th[2].join();
  th[3].join();
  EXPECT_EQ(0, bad.load());
  for (uint32_t i = 0; i < 2 * per; i++) ASSERT_EQ(1, seen[i].load()) << "item " << i;
}

// A producer that claimed a slot and dies half-way through copying its item
// in (SIGSEGV on a guard page) leaves a hole. A consumer must skip it within
// about CAROM_RING_POLL_MS, never deliver the torn item, and count it lost.
TEST(Ring, MpmcProducerDeadMidCopyIsSkippedNotTorn) {
  Ring ring(CAROM_RING_MPMC, 4, 4096);
  pid_t c = fork_child([&] {
    default_segv();
    GuardBuf g(100);
    carom_ring_put(ring.r, g.p, 4096, nullptr);  // faults after claiming a slot
    return 0;
  });
  int st = reap(c, 10);
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV) << st;
  EXPECT_EQ(1u, carom_ring_count(ring.r));  // the claimed hole
  ASSERT_EQ(0, carom_ring_put(ring.r, "after", 5, nullptr));
  char buf[4096];
  uint64_t t0 = carom_now_ns();
  timespec ts;
  ASSERT_EQ(5, carom_ring_get(ring.r, buf, sizeof buf, carom_deadline(5 * slow_factor(), &ts)));
  double el = (double)(carom_now_ns() - t0) / 1e9;
  EXPECT_EQ(0, memcmp(buf, "after", 5));
  EXPECT_LT(el, 0.1 * slow_factor());
  carom_ring_stats_t s;
  carom_ring_stats(ring.r, &s);
  EXPECT_EQ(1u, s.lost_puts);
  EXPECT_EQ(0u, s.lost_gets);
  EXPECT_EQ(-EAGAIN, carom_ring_tryget(ring.r, buf, sizeof buf));
  // get_nowait also recovers a hole (after a short spin and a liveness check).
  c = fork_child([&] {
    default_segv();
    GuardBuf g(10);
    carom_ring_put(ring.r, g.p, 4096, nullptr);
    return 0;
  });
  EXPECT_EQ(1000 + SIGSEGV, reap_code(c, 10));
  ASSERT_EQ(0, carom_ring_put(ring.r, "two", 3, nullptr));
  EXPECT_EQ(3, carom_ring_tryget(ring.r, buf, sizeof buf));
  carom_ring_stats(ring.r, &s);
  EXPECT_EQ(2u, s.lost_puts);
}

// A consumer that claimed an item and dies half-way through copying it out
// holds a slot. With the ring full, a producer must recycle that slot within
// about CAROM_RING_POLL_MS; the other items arrive intact and in order.
TEST(Ring, MpmcConsumerDeadMidCopyFreesItsSlot) {
  Ring ring(CAROM_RING_MPMC, 2, 4096);
  std::vector<char> a(4096, 'A'), b(4096, 'B');
  ASSERT_EQ(0, carom_ring_put(ring.r, a.data(), a.size(), nullptr));
  ASSERT_EQ(0, carom_ring_put(ring.r, b.data(), b.size(), nullptr));
  pid_t c = fork_child([&] {
    default_segv();
    GuardBuf g(100);
    carom_ring_get(ring.r, g.p, 4096, nullptr);  // faults while copying A out
    return 0;
  });
  int st = reap(c, 10);
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV) << st;
  uint64_t t0 = carom_now_ns();
  timespec ts;
  ASSERT_EQ(0, carom_ring_put(ring.r, "C", 1, carom_deadline(5 * slow_factor(), &ts)));
  EXPECT_LT((double)(carom_now_ns() - t0) / 1e9, 0.1 * slow_factor());
  std::vector<char> buf(4096);
  ASSERT_EQ(4096, carom_ring_get(ring.r, buf.data(), buf.size(), nullptr));
  EXPECT_EQ(b, buf);
  ASSERT_EQ(1, carom_ring_get(ring.r, buf.data(), buf.size(), nullptr));
  EXPECT_EQ('C', buf[0]);
  carom_ring_stats_t s;
  carom_ring_stats(ring.r, &s);
  EXPECT_EQ(0u, s.lost_puts);
  EXPECT_EQ(1u, s.lost_gets);
}

// SPSC: a producer killed mid-copy commits nothing; a consumer killed
// mid-copy leaves its item for the next consumer.
TEST(Ring, SpscDeathMidCopyCommitsNothing) {
  Ring ring(CAROM_RING_SPSC, 4, 4096);
  pid_t c = fork_child([&] {
    default_segv();
    GuardBuf g(100);
    carom_ring_put(ring.r, g.p, 4096, nullptr);
    return 0;
  });
  int st = reap(c, 10);
  ASSERT_TRUE(WIFSIGNALED(st)) << st;
  char buf[4096];
  EXPECT_EQ(-EAGAIN, carom_ring_tryget(ring.r, buf, sizeof buf));
  std::vector<char> a(4096, 'A');
  ASSERT_EQ(0, carom_ring_put(ring.r, a.data(), a.size(), nullptr));
  c = fork_child([&] {
    default_segv();
    GuardBuf g(100);
    carom_ring_get(ring.r, g.p, 4096, nullptr);
    return 0;
  });
  st = reap(c, 10);
  ASSERT_TRUE(WIFSIGNALED(st)) << st;
  ASSERT_EQ(4096, carom_ring_get(ring.r, buf, sizeof buf, nullptr));
  EXPECT_EQ(0, memcmp(buf, a.data(), 4096));
}
