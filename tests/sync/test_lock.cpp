// tests/sync/test_lock.cpp — Lock and RLock: exact counts across processes,
// timeouts, misuse errors, owner death with a real SIGKILL.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <random>

#include "carom/sync.h"
#include "sync_testutil.h"
#include "testutil.h"

using namespace carom_test;

namespace {

struct Shared {
  carom_lock_t lock;
  carom_rlock_t rlock;
  volatile uint64_t counter;
  volatile uint32_t ready;
  volatile uint32_t in_critical;
};

Shared *make_shared() {
  auto *s = static_cast<Shared *>(shared_alloc(sizeof(Shared)));
  carom_lock_init(&s->lock);
  carom_rlock_init(&s->rlock);
  return s;
}

}  // namespace

TEST(Lock, AcquireReleaseAndMisuse) {
  carom_lock_t l = CAROM_LOCK_INITIALIZER;
  EXPECT_FALSE(carom_lock_locked(&l));
  EXPECT_EQ(CAROM_ENOTLOCKED, carom_lock_release(&l));
  EXPECT_EQ(0, carom_lock_acquire(&l, nullptr));
  EXPECT_TRUE(carom_lock_locked(&l));
  EXPECT_EQ(-EAGAIN, carom_lock_tryacquire(&l));
  EXPECT_EQ(0, carom_lock_release(&l));
  EXPECT_EQ(0, carom_lock_tryacquire(&l));
  EXPECT_EQ(0, carom_lock_release(&l));
  EXPECT_EQ(-EINVAL, carom_lock_consistent(&l));
}

TEST(Lock, TimeoutHonouredWhileHeldByOtherProcess) {
  Shared *s = make_shared();
  ChildGuard c(fork_child([&] {
    if (carom_lock_acquire(&s->lock, nullptr) != 0) return 1;
    __atomic_store_n(&s->ready, 1, __ATOMIC_SEQ_CST);
    // Hold until the parent has timed out and says so.
    if (!wait_until([&] { return __atomic_load_n(&s->ready, __ATOMIC_SEQ_CST) == 2; }))
      return kChildTimedOut;
    return carom_lock_release(&s->lock) == 0 ? 0 : 2;
  }));
  ASSERT_TRUE(wait_until([&] { return __atomic_load_n(&s->ready, __ATOMIC_SEQ_CST) == 1; }));
  timespec ts;
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(-ETIMEDOUT, carom_lock_acquire(&s->lock, carom_deadline(0.1, &ts)));
  double waited = secs_since(t0);
  EXPECT_GE(waited, 0.1);
  EXPECT_LT(waited, 0.1 + 0.2 * slow_factor());
  EXPECT_EQ(-ETIMEDOUT, carom_lock_acquire(&s->lock, carom_deadline(0, &ts)));
  EXPECT_EQ(-EAGAIN, carom_lock_tryacquire(&s->lock));
  __atomic_store_n(&s->ready, 2, __ATOMIC_SEQ_CST);
  EXPECT_EQ(0, carom_lock_acquire(&s->lock, carom_deadline(10, &ts)));
  EXPECT_EQ(0, carom_lock_release(&s->lock));
  EXPECT_EQ(0, reap_code(c));
  shared_free(s, sizeof *s);
}

// 4 processes x 100k increments under the lock: the exact total, and never two
// processes inside the critical section at once.
TEST(Lock, ExactCountFourProcesses) {
  Shared *s = make_shared();
  const int kProcs = 4, kIters = 100000;
  pid_t kids[kProcs];
  for (int p = 0; p < kProcs; p++)
    kids[p] = fork_child([&] {
      for (int i = 0; i < kIters; i++) {
        if (carom_lock_acquire(&s->lock, nullptr) != 0) return 1;
        if (s->in_critical++ != 0) return 2;
        s->counter = s->counter + 1;
        s->in_critical--;
        if (carom_lock_release(&s->lock) != 0) return 3;
      }
      return 0;
    });
  for (int p = 0; p < kProcs; p++) EXPECT_EQ(0, reap_code(kids[p], 60));
  EXPECT_EQ((uint64_t)kProcs * kIters, s->counter);
  EXPECT_FALSE(carom_lock_locked(&s->lock));
  shared_free(s, sizeof *s);
}

// Owner SIGKILLed at a random moment while holding the lock → a waiter in
// another process gets -EOWNERDEAD within the poll bound; a release without
// consistent() poisons the lock; consistent() restores it.
TEST(Lock, OwnerKilledWhileHoldingGivesOwnerDead) {
  Shared *s = make_shared();
  std::mt19937 rng(12345);
  ChildGuard owner(fork_child([&] {
    for (;;) {
      carom_lock_acquire(&s->lock, nullptr);
      __atomic_store_n(&s->ready, 1, __ATOMIC_SEQ_CST);
      s->counter = s->counter + 1;  // spin holding the lock until killed
    }
    return 0;
  }));
  ASSERT_TRUE(wait_until([&] { return __atomic_load_n(&s->ready, __ATOMIC_SEQ_CST) == 1; }));
  usleep(std::uniform_int_distribution<int>(0, 20000)(rng));  // a random kill moment
  ASSERT_EQ(0, kill(owner.pid(), SIGKILL));
  uint64_t killed_at = carom_now_ns();
  // The parent does not reap first: a zombie owner must count as dead.
  timespec ts;
  int r = carom_lock_acquire(&s->lock, carom_deadline(5, &ts));
  double late = secs_since(killed_at);
  EXPECT_EQ(-EOWNERDEAD, r);
  EXPECT_LT(late, 0.1 * slow_factor());
  EXPECT_EQ(1000 + SIGKILL, reap_code(owner));
  EXPECT_EQ(0, carom_lock_consistent(&s->lock));
  EXPECT_EQ(0, carom_lock_release(&s->lock));
  EXPECT_EQ(0, carom_lock_acquire(&s->lock, nullptr));
  EXPECT_EQ(0, carom_lock_release(&s->lock));
  shared_free(s, sizeof *s);
}

TEST(Lock, ReleaseWithoutConsistentMakesNotRecoverable) {
  Shared *s = make_shared();
  pid_t owner = fork_child([&] {
    carom_lock_acquire(&s->lock, nullptr);
    return 0;  // exits holding it
  });
  EXPECT_EQ(0, reap_code(owner));
  EXPECT_EQ(-EOWNERDEAD, carom_lock_tryacquire(&s->lock));
  EXPECT_EQ(0, carom_lock_release(&s->lock));
  EXPECT_EQ(-ENOTRECOVERABLE, carom_lock_tryacquire(&s->lock));
  EXPECT_EQ(-ENOTRECOVERABLE, carom_lock_acquire(&s->lock, nullptr));
  shared_free(s, sizeof *s);
}

TEST(Lock, RecovererDyingBeforeConsistentGivesOwnerDeadAgain) {
  Shared *s = make_shared();
  pid_t a = fork_child([&] { return carom_lock_acquire(&s->lock, nullptr); });
  EXPECT_EQ(0, reap_code(a));
  pid_t b = fork_child([&] {
    return carom_lock_acquire(&s->lock, nullptr) == -EOWNERDEAD ? 0 : 1;  // dies holding, inconsistent
  });
  EXPECT_EQ(0, reap_code(b));
  timespec ts;
  EXPECT_EQ(-EOWNERDEAD, carom_lock_acquire(&s->lock, carom_deadline(5, &ts)));
  EXPECT_EQ(0, carom_lock_consistent(&s->lock));
  EXPECT_EQ(0, carom_lock_release(&s->lock));
  shared_free(s, sizeof *s);
}

TEST(Lock, ThreadsOfOneProcessExactCount) {
  static carom_lock_t l = CAROM_LOCK_INITIALIZER;
  static uint64_t n = 0;
  const int kThreads = 4, kIters = 100000;
  pthread_t th[kThreads];
  for (auto &t : th)
    pthread_create(&t, nullptr, [](void *) -> void * {
      for (int i = 0; i < 100000; i++) {
        carom_lock_acquire(&l, nullptr);
        n++;
        carom_lock_release(&l);
      }
      return nullptr;
    }, nullptr);
  for (auto &t : th) pthread_join(t, nullptr);
  EXPECT_EQ((uint64_t)kThreads * kIters, n);
}

TEST(RLock, RecursionAndOwnership) {
  carom_rlock_t l;
  carom_rlock_init(&l);
  EXPECT_EQ(CAROM_ENOTOWNER, carom_rlock_release(&l));
  EXPECT_EQ(0u, carom_rlock_count(&l));
  EXPECT_EQ(0, carom_rlock_acquire(&l, nullptr));
  EXPECT_EQ(0, carom_rlock_acquire(&l, nullptr));
  EXPECT_EQ(0, carom_rlock_tryacquire(&l));
  EXPECT_EQ(3u, carom_rlock_count(&l));
  EXPECT_TRUE(carom_rlock_is_owned(&l));
  // Another thread is not the owner: cannot release, cannot acquire now.
  struct R { carom_rlock_t *l; int rel, acq; } r = {&l, 0, 0};
  pthread_t t;
  pthread_create(&t, nullptr, [](void *p) -> void * {
    auto *rr = static_cast<R *>(p);
    rr->rel = carom_rlock_release(rr->l);
    rr->acq = carom_rlock_tryacquire(rr->l);
    return nullptr;
  }, &r);
  pthread_join(t, nullptr);
  EXPECT_EQ(CAROM_ENOTOWNER, r.rel);
  EXPECT_EQ(-EAGAIN, r.acq);
  EXPECT_EQ(0, carom_rlock_release(&l));
  EXPECT_EQ(0, carom_rlock_release(&l));
  EXPECT_EQ(0, carom_rlock_release(&l));
  EXPECT_EQ(CAROM_ENOTOWNER, carom_rlock_release(&l));
  EXPECT_FALSE(carom_rlock_is_owned(&l));
}

TEST(RLock, ForkedChildDoesNotInheritOwnership) {
  Shared *s = make_shared();
  ASSERT_EQ(0, carom_rlock_acquire(&s->rlock, nullptr));
  pid_t c = fork_child([&] {
    if (carom_rlock_is_owned(&s->rlock)) return 1;
    if (carom_rlock_release(&s->rlock) != CAROM_ENOTOWNER) return 2;
    if (carom_rlock_tryacquire(&s->rlock) != -EAGAIN) return 3;
    return 0;
  });
  EXPECT_EQ(0, reap_code(c));
  EXPECT_EQ(0, carom_rlock_release(&s->rlock));
  shared_free(s, sizeof *s);
}

TEST(RLock, ExactCountFourProcessesNested) {
  Shared *s = make_shared();
  const int kProcs = 4, kIters = 100000;
  pid_t kids[kProcs];
  for (int p = 0; p < kProcs; p++)
    kids[p] = fork_child([&] {
      for (int i = 0; i < kIters; i++) {
        if (carom_rlock_acquire(&s->rlock, nullptr) != 0) return 1;
        if (carom_rlock_acquire(&s->rlock, nullptr) != 0) return 2;
        s->counter = s->counter + 1;
        if (carom_rlock_release(&s->rlock) != 0) return 3;
        if (carom_rlock_release(&s->rlock) != 0) return 4;
      }
      return 0;
    });
  for (int p = 0; p < kProcs; p++) EXPECT_EQ(0, reap_code(kids[p], 60));
  EXPECT_EQ((uint64_t)kProcs * kIters, s->counter);
  shared_free(s, sizeof *s);
}

TEST(RLock, OwnerKilledGivesOwnerDeadAndCountRestarts) {
  Shared *s = make_shared();
  ChildGuard owner(fork_child([&] {
    carom_rlock_acquire(&s->rlock, nullptr);
    carom_rlock_acquire(&s->rlock, nullptr);
    __atomic_store_n(&s->ready, 1, __ATOMIC_SEQ_CST);
    pause();
    return 0;
  }));
  ASSERT_TRUE(wait_until([&] { return __atomic_load_n(&s->ready, __ATOMIC_SEQ_CST) == 1; }));
  kill(owner.pid(), SIGKILL);
  timespec ts;
  EXPECT_EQ(-EOWNERDEAD, carom_rlock_acquire(&s->rlock, carom_deadline(5, &ts)));
  EXPECT_EQ(1u, carom_rlock_count(&s->rlock));
  EXPECT_EQ(0, carom_rlock_consistent(&s->rlock));
  EXPECT_EQ(0, carom_rlock_release(&s->rlock));
  EXPECT_EQ(1000 + SIGKILL, reap_code(owner));
  shared_free(s, sizeof *s);
}
