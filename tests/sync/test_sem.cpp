// tests/sync/test_sem.cpp — Semaphore, BoundedSemaphore and the tracked
// semaphore: exact counts across processes, timeouts, over-release, waiters
// and holders killed.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "carom/sync.h"
#include "sync_testutil.h"
#include "testutil.h"

using namespace carom_test;

namespace {

template <class T>
T *make() {
  return static_cast<T *>(shared_alloc(sizeof(T)));
}
template <class T>
void unmake(T *p) {
  shared_free(p, sizeof(T));
}

}  // namespace

TEST(Semaphore, CountsTryAcquireAndValue) {
  carom_sem_t s;
  ASSERT_EQ(0, carom_sem_init(&s, 2));
  EXPECT_EQ(2u, carom_sem_value(&s));
  EXPECT_EQ(0, carom_sem_acquire(&s, nullptr));
  EXPECT_EQ(0, carom_sem_tryacquire(&s));
  EXPECT_EQ(-EAGAIN, carom_sem_tryacquire(&s));
  EXPECT_EQ(0u, carom_sem_value(&s));
  timespec ts;
  EXPECT_EQ(-ETIMEDOUT, carom_sem_acquire(&s, carom_deadline(0, &ts)));
  EXPECT_EQ(-EINVAL, carom_sem_release(&s, 0));
  EXPECT_EQ(0, carom_sem_release(&s, 3));  // plain semaphore: no upper bound
  EXPECT_EQ(3u, carom_sem_value(&s));
  EXPECT_EQ(-EINVAL, carom_sem_init(&s, CAROM_SEM_VALUE_MAX + 1u));
  ASSERT_EQ(0, carom_sem_init(&s, CAROM_SEM_VALUE_MAX));
  EXPECT_EQ(-EOVERFLOW, carom_sem_release(&s, 1));
  EXPECT_EQ(CAROM_SEM_VALUE_MAX, carom_sem_value(&s));
}

TEST(BoundedSemaphore, ReleasePastInitialValueFails) {
  carom_sem_t s;
  ASSERT_EQ(0, carom_sem_init_bounded(&s, 2));
  EXPECT_EQ(CAROM_EOVERRELEASE, carom_sem_release(&s, 1));
  EXPECT_EQ(2u, carom_sem_value(&s));
  EXPECT_EQ(0, carom_sem_acquire(&s, nullptr));
  EXPECT_EQ(CAROM_EOVERRELEASE, carom_sem_release(&s, 2));  // all or nothing
  EXPECT_EQ(1u, carom_sem_value(&s));
  EXPECT_EQ(0, carom_sem_release(&s, 1));
  EXPECT_EQ(2u, carom_sem_value(&s));
  EXPECT_EQ(CAROM_EOVERRELEASE, carom_sem_release(&s, 1));
  ASSERT_EQ(0, carom_sem_init_bounded(&s, 0));  // Python: BoundedSemaphore(0)
  EXPECT_EQ(CAROM_EOVERRELEASE, carom_sem_release(&s, 1));
}

// The waiter's side: a timed acquire returns -ETIMEDOUT no earlier than the
// deadline and not much later. The releaser's side: a release before the
// deadline wakes a sleeper in another process, which then gets 0.
TEST(Semaphore, TimeoutsFromBothSides) {
  struct S {
    carom_sem_t sem;
    uint32_t phase;
  };
  S *s = make<S>();
  carom_sem_init(&s->sem, 0);
  timespec ts;
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(-ETIMEDOUT, carom_sem_acquire(&s->sem, carom_deadline(0.1, &ts)));
  double w = secs_since(t0);
  EXPECT_GE(w, 0.1);
  EXPECT_LT(w, 0.1 + 0.2 * slow_factor());

  ChildGuard c(fork_child([&] {
    timespec d;
    uint64_t t = carom_now_ns();
    int r = carom_sem_acquire(&s->sem, carom_deadline(20, &d));
    if (r != 0) return 1;
    return secs_since(t) < 19 ? 0 : 2;
  }));
  ASSERT_TRUE(wait_until_sleeping(c.pid()));
  EXPECT_EQ(0, carom_sem_release(&s->sem, 1));
  EXPECT_EQ(0, reap_code(c));
  EXPECT_EQ(0u, carom_sem_value(&s->sem));
  unmake(s);
}

// A bounded buffer built from three semaphores (a binary one as the mutex,
// "items" and the bounded "slots"): 2 producers and 2 consumers, 100k items
// each. Every item is consumed exactly once and the buffer never over- or
// under-flows.
TEST(Semaphore, ExactCountProducerConsumerFourProcesses) {
  constexpr int kCap = 16, kPer = 100000;
  struct S {
    carom_sem_t mutex, items, slots;
    uint64_t buf[kCap];
    uint32_t head, tail, fill;
    uint64_t consumed_sum[2];
    uint32_t consumed_n[2];
    uint32_t in_critical;
  };
  S *s = make<S>();
  carom_sem_init(&s->mutex, 1);
  carom_sem_init(&s->items, 0);
  carom_sem_init_bounded(&s->slots, kCap);
  pid_t kids[4];
  for (int p = 0; p < 2; p++) {
    kids[p] = fork_child([&, p] {
      for (int i = 0; i < kPer; i++) {
        if (carom_sem_acquire(&s->slots, nullptr)) return 1;
        if (carom_sem_acquire(&s->mutex, nullptr)) return 2;
        if (s->in_critical++ != 0) return 3;
        if (s->fill >= (uint32_t)kCap) return 4;
        s->buf[s->tail] = (uint64_t)p * kPer + i + 1;
        s->tail = (s->tail + 1) % kCap;
        s->fill++;
        s->in_critical--;
        if (carom_sem_release(&s->mutex, 1)) return 5;
        if (carom_sem_release(&s->items, 1)) return 6;
      }
      return 0;
    });
  }
  for (int q = 0; q < 2; q++) {
    kids[2 + q] = fork_child([&, q] {
      uint64_t sum = 0;
      for (int i = 0; i < kPer; i++) {
        if (carom_sem_acquire(&s->items, nullptr)) return 1;
        if (carom_sem_acquire(&s->mutex, nullptr)) return 2;
        if (s->in_critical++ != 0) return 3;
        if (s->fill == 0) return 4;
        sum += s->buf[s->head];
        s->head = (s->head + 1) % kCap;
        s->fill--;
        s->in_critical--;
        if (carom_sem_release(&s->mutex, 1)) return 5;
        if (carom_sem_release(&s->slots, 1)) return 6;  // bounded: must never over-release
      }
      s->consumed_sum[q] = sum;
      s->consumed_n[q] = kPer;
      return 0;
    });
  }
  for (pid_t k : kids) EXPECT_EQ(0, reap_code(k, 120));
  const uint64_t n = 2ull * kPer;
  EXPECT_EQ(n * (n + 1) / 2, s->consumed_sum[0] + s->consumed_sum[1]);
  EXPECT_EQ(n, (uint64_t)s->consumed_n[0] + s->consumed_n[1]);
  EXPECT_EQ(0u, s->fill);
  EXPECT_EQ(0u, carom_sem_value(&s->items));
  EXPECT_EQ((unsigned)kCap, carom_sem_value(&s->slots));
  EXPECT_EQ(1u, carom_sem_value(&s->mutex));
  unmake(s);
}

// 4 processes use a semaphore of 1 as a mutex, 100k times each: exact total.
TEST(Semaphore, AsMutexExactCountFourProcesses) {
  struct S {
    carom_sem_t sem;
    uint64_t counter;
    uint32_t in_critical;
  };
  S *s = make<S>();
  carom_sem_init(&s->sem, 1);
  constexpr int kProcs = 4, kIters = 100000;
  pid_t kids[kProcs];
  for (auto &k : kids)
    k = fork_child([&] {
      for (int i = 0; i < kIters; i++) {
        if (carom_sem_acquire(&s->sem, nullptr)) return 1;
        if (s->in_critical++ != 0) return 2;
        s->counter = s->counter + 1;
        s->in_critical--;
        if (carom_sem_release(&s->sem, 1)) return 3;
      }
      return 0;
    });
  for (pid_t k : kids) EXPECT_EQ(0, reap_code(k, 120));
  EXPECT_EQ((uint64_t)kProcs * kIters, s->counter);
  EXPECT_EQ(1u, carom_sem_value(&s->sem));
  unmake(s);
}

TEST(Semaphore, ThreadsOfOneProcessReleaseManyWakesMany) {
  static carom_sem_t sem;
  static uint32_t got;
  carom_sem_init(&sem, 0);
  got = 0;
  constexpr int kThreads = 4, kEach = 20000;
  pthread_t th[kThreads];
  for (auto &t : th)
    pthread_create(&t, nullptr, [](void *) -> void * {
      for (int i = 0; i < kEach; i++) {
        if (carom_sem_acquire(&sem, nullptr) != 0) abort();
        __atomic_fetch_add(&got, 1, __ATOMIC_RELAXED);
      }
      return nullptr;
    }, nullptr);
  // Release in batches of 1..7 units until every thread got all of its units.
  unsigned left = kThreads * kEach;
  for (unsigned n = 1; left > 0; n = n % 7 + 1) {
    unsigned k = n < left ? n : left;
    ASSERT_EQ(0, carom_sem_release(&sem, k));
    left -= k;
  }
  for (auto &t : th) pthread_join(t, nullptr);
  EXPECT_EQ((uint32_t)kThreads * kEach, got);
  EXPECT_EQ(0u, carom_sem_value(&sem));
}

// A waiter killed while asleep leaves only an advisory count behind: releases
// and acquires by the others still work, nobody blocks.
TEST(Semaphore, WaiterKilledWhileSleepingWedgesNobody) {
  carom_sem_t *s = make<carom_sem_t>();
  carom_sem_init(s, 0);
  ChildGuard dead(fork_child([&] { return carom_sem_acquire(s, nullptr) == 0 ? 7 : 8; }));
  ASSERT_TRUE(wait_until_sleeping(dead.pid()));
  kill(dead.pid(), SIGKILL);
  EXPECT_EQ(1000 + SIGKILL, reap_code(dead));
  ChildGuard live(fork_child([&] {
    timespec d;
    return carom_sem_acquire(s, carom_deadline(10, &d));
  }));
  ASSERT_TRUE(wait_until_sleeping(live.pid()));
  EXPECT_EQ(0, carom_sem_release(s, 1));
  EXPECT_EQ(0, reap_code(live));
  EXPECT_EQ(0, carom_sem_release(s, 1));
  EXPECT_EQ(0, carom_sem_tryacquire(s));
  unmake(s);
}

// ---- tracked semaphore (USER-PAIN P18) ----

TEST(TrackedSemaphore, HoldReleaseAndOverRelease) {
  carom_tsem_t s;
  EXPECT_EQ(-EINVAL, carom_tsem_init(&s, 0));
  ASSERT_EQ(0, carom_tsem_init(&s, 3));
  EXPECT_EQ(CAROM_EOVERRELEASE, carom_tsem_release(&s));
  EXPECT_EQ(0, carom_tsem_acquire(&s, nullptr));
  EXPECT_EQ(0, carom_tsem_tryacquire(&s));
  EXPECT_EQ(2u, carom_tsem_held(&s));
  EXPECT_EQ(1u, carom_tsem_value(&s));
  EXPECT_EQ(0, carom_tsem_acquire(&s, nullptr));
  timespec ts;
  EXPECT_EQ(-EAGAIN, carom_tsem_tryacquire(&s));
  EXPECT_EQ(-ETIMEDOUT, carom_tsem_acquire(&s, carom_deadline(0.05, &ts)));
  EXPECT_EQ(0, carom_tsem_reclaim(&s));  // the holder (us) lives
  for (int i = 0; i < 3; i++) EXPECT_EQ(0, carom_tsem_release(&s));
  EXPECT_EQ(CAROM_EOVERRELEASE, carom_tsem_release(&s));
  EXPECT_EQ(3u, carom_tsem_value(&s));
  EXPECT_EQ(0u, carom_tsem_held(&s));
}

// P18's test: a 3-unit tracked semaphore, a holder of 2 units SIGKILLed ->
// a waiter needing those units gets them within 1 s; another process cannot
// release units it does not hold.
TEST(TrackedSemaphore, UnitsOfKilledHolderComeBack) {
  struct S {
    carom_tsem_t sem;
    uint32_t ready;
  };
  S *s = make<S>();
  carom_tsem_init(&s->sem, 3);
  ASSERT_EQ(0, carom_tsem_acquire(&s->sem, nullptr));  // we hold 1
  ChildGuard holder(fork_child([&] {
    if (carom_tsem_acquire(&s->sem, nullptr) || carom_tsem_acquire(&s->sem, nullptr)) return 1;
    __atomic_store_n(&s->ready, 1, __ATOMIC_SEQ_CST);
    pause();
    return 0;
  }));
  ASSERT_TRUE(wait_until([&] { return __atomic_load_n(&s->ready, __ATOMIC_SEQ_CST) == 1; }));
  EXPECT_EQ(0u, carom_tsem_value(&s->sem));
  pid_t thief = fork_child([&] { return carom_tsem_release(&s->sem) == CAROM_EOVERRELEASE ? 0 : 1; });
  EXPECT_EQ(0, reap_code(thief));
  // A waiter in another process sleeps for a unit; then the holder dies.
  ChildGuard waiter(fork_child([&] {
    timespec d;
    if (carom_tsem_acquire(&s->sem, carom_deadline(10, &d))) return 1;
    if (carom_tsem_acquire(&s->sem, carom_deadline(10, &d))) return 2;
    return carom_tsem_held(&s->sem) == 2 ? 0 : 3;
  }));
  ASSERT_TRUE(wait_until_sleeping(waiter.pid()));
  kill(holder.pid(), SIGKILL);
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(0, reap_code(waiter));
  EXPECT_LT(secs_since(t0), 1.0 * slow_factor());
  EXPECT_EQ(1000 + SIGKILL, reap_code(holder));
  // The waiter exited holding 2: we reclaim them by asking.
  EXPECT_EQ(2, carom_tsem_reclaim(&s->sem));
  EXPECT_EQ(2u, carom_tsem_value(&s->sem));
  EXPECT_EQ(0, carom_tsem_release(&s->sem));
  EXPECT_EQ(3u, carom_tsem_value(&s->sem));
  unmake(s);
}

// Holders killed at random moments inside acquire/release (possibly inside
// the internal lock): the units are never lost or duplicated.
TEST(TrackedSemaphore, HoldersKilledAtRandomNeverLoseUnits) {
  carom_tsem_t *s = make<carom_tsem_t>();
  carom_tsem_init(s, 2);
  for (int round = 0; round < 20; round++) {
    pid_t kids[3];
    for (auto &k : kids)
      k = fork_child([&] {
        for (;;) {
          if (carom_tsem_acquire(s, nullptr) != 0) return 1;
          if (carom_tsem_release(s) != 0) return 2;
        }
      });
    usleep(1000 + 500 * round);
    for (pid_t k : kids) kill(k, SIGKILL);
    for (pid_t k : kids) EXPECT_EQ(1000 + SIGKILL, reap_code(k));
    timespec d;
    // Both units must be obtainable again (reclaimed by the waits' polling).
    ASSERT_EQ(0, carom_tsem_acquire(s, carom_deadline(5, &d))) << "round " << round;
    ASSERT_EQ(0, carom_tsem_acquire(s, carom_deadline(5, &d))) << "round " << round;
    EXPECT_EQ(-EAGAIN, carom_tsem_tryacquire(s));
    EXPECT_EQ(0, carom_tsem_release(s));
    EXPECT_EQ(0, carom_tsem_release(s));
    EXPECT_EQ(2u, carom_tsem_value(s));
  }
  unmake(s);
}
