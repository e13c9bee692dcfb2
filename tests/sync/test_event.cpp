// tests/sync/test_event.cpp — Event: set/clear/wait, timeouts, set+clear not
// lost, cross-process ping-pong with exact counts, waiters and setters killed.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "carom/sync.h"
#include "sync_testutil.h"
#include "testutil.h"

using namespace carom_test;

TEST(Event, SetClearIsSetAndImmediateWait) {
  carom_event_t e;
  carom_event_init(&e);
  EXPECT_FALSE(carom_event_is_set(&e));
  timespec ts;
  EXPECT_EQ(-ETIMEDOUT, carom_event_wait(&e, carom_deadline(0, &ts)));
  carom_event_set(&e);
  carom_event_set(&e);  // idempotent
  EXPECT_TRUE(carom_event_is_set(&e));
  EXPECT_EQ(0, carom_event_wait(&e, nullptr));
  EXPECT_EQ(0, carom_event_wait(&e, carom_deadline(0, &ts)));
  carom_event_clear(&e);
  carom_event_clear(&e);
  EXPECT_FALSE(carom_event_is_set(&e));
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(-ETIMEDOUT, carom_event_wait(&e, carom_deadline(0.1, &ts)));
  double w = secs_since(t0);
  EXPECT_GE(w, 0.1);
  EXPECT_LT(w, 0.1 + 0.2 * slow_factor());
}

// A set() from another process wakes a sleeping waiter long before its
// deadline; a set() immediately followed by clear() still wakes it (0).
TEST(Event, SetThenClearStillWakesSleepers) {
  carom_event_t *e = static_cast<carom_event_t *>(shared_alloc(sizeof *e));
  carom_event_init(e);
  ChildGuard kids[3];
  for (auto &k : kids)
    k.reset(fork_child([&] {
      timespec d;
      uint64_t t0 = carom_now_ns();
      if (carom_event_wait(e, carom_deadline(20, &d)) != 0) return 1;
      return secs_since(t0) < 19 ? 0 : 2;
    }));
  for (auto &k : kids) ASSERT_TRUE(wait_until_sleeping(k.pid()));
  carom_event_set(e);
  carom_event_clear(e);
  for (auto &k : kids) EXPECT_EQ(0, reap_code(k));
  EXPECT_FALSE(carom_event_is_set(e));
  shared_free(e, sizeof *e);
}

// P21: 5 waiter processes, two SIGKILLed while waiting; set() returns at once
// and the 3 survivors wake.
TEST(Event, TwoOfFiveWaitersKilledSurvivorsWake) {
  carom_event_t *e = static_cast<carom_event_t *>(shared_alloc(sizeof *e));
  carom_event_init(e);
  ChildGuard kids[5];
  for (auto &k : kids)
    k.reset(fork_child([&] {
      timespec d;
      return carom_event_wait(e, carom_deadline(30, &d)) == 0 ? 0 : 1;
    }));
  for (auto &k : kids) ASSERT_TRUE(wait_until_sleeping(k.pid()));
  kill(kids[1].pid(), SIGKILL);
  kill(kids[3].pid(), SIGKILL);
  EXPECT_EQ(1000 + SIGKILL, reap_code(kids[1]));
  EXPECT_EQ(1000 + SIGKILL, reap_code(kids[3]));
  uint64_t t0 = carom_now_ns();
  carom_event_set(e);
  EXPECT_LT(secs_since(t0), 0.05 * slow_factor());  // one FUTEX_WAKE, never blocks
  uint64_t t1 = carom_now_ns();
  for (int i : {0, 2, 4}) EXPECT_EQ(0, reap_code(kids[i]));
  EXPECT_LT(secs_since(t1), 1.0 * slow_factor());
  shared_free(e, sizeof *e);
}

// A setter killed at random moments while setting and clearing in a loop:
// afterwards the event still works for everybody (no wedged state).
TEST(Event, SetterKilledAtRandomLeavesEventUsable) {
  carom_event_t *e = static_cast<carom_event_t *>(shared_alloc(sizeof *e));
  carom_event_init(e);
  for (int round = 0; round < 10; round++) {
    pid_t waiter = fork_child([&] {
      for (;;) {
        timespec d;
        int r = carom_event_wait(e, carom_deadline(30, &d));
        if (r != 0) return 1;
      }
    });
    pid_t setter = fork_child([&] {
      for (;;) {
        carom_event_set(e);
        carom_event_clear(e);
      }
      return 0;
    });
    usleep(2000 + 1000 * round);
    kill(setter, SIGKILL);
    kill(waiter, SIGKILL);
    EXPECT_EQ(1000 + SIGKILL, reap_code(setter));
    EXPECT_EQ(1000 + SIGKILL, reap_code(waiter));
    carom_event_clear(e);
    ChildGuard w2(fork_child([&] {
      timespec d;
      return carom_event_wait(e, carom_deadline(10, &d));
    }));
    ASSERT_TRUE(wait_until_sleeping(w2.pid()));
    carom_event_set(e);
    EXPECT_EQ(0, reap_code(w2)) << "round " << round;
  }
  shared_free(e, sizeof *e);
}

// Ping-pong between two processes through two events, 20k rounds, each round
// checked by a shared counter: no lost or doubled wake-up.
TEST(Event, PingPongTwoProcessesExactRounds) {
  struct S {
    carom_event_t ping, pong;
    uint64_t count;
  };
  S *s = static_cast<S *>(shared_alloc(sizeof(S)));
  carom_event_init(&s->ping);
  carom_event_init(&s->pong);
  constexpr int kRounds = 20000;
  ChildGuard c(fork_child([&] {
    for (int i = 0; i < kRounds; i++) {
      if (carom_event_wait(&s->ping, nullptr)) return 1;
      carom_event_clear(&s->ping);
      if (s->count != 2ull * i + 1) return 2;
      s->count++;
      carom_event_set(&s->pong);
    }
    return 0;
  }));
  for (int i = 0; i < kRounds; i++) {
    ASSERT_EQ(2ull * i, s->count);
    s->count++;
    carom_event_set(&s->ping);
    ASSERT_EQ(0, carom_event_wait(&s->pong, Deadline(10).p)) << "round " << i;
    carom_event_clear(&s->pong);
  }
  EXPECT_EQ(0, reap_code(c));
  EXPECT_EQ(2ull * kRounds, s->count);
  shared_free(s, sizeof *s);
}

TEST(Event, ThreadsWaitAndSet) {
  static carom_event_t e;
  carom_event_init(&e);
  static int woke = 0;
  pthread_t th[4];
  for (auto &t : th)
    pthread_create(&t, nullptr, [](void *) -> void * {
      if (carom_event_wait(&e, nullptr) == 0) __atomic_fetch_add(&woke, 1, __ATOMIC_RELAXED);
      return nullptr;
    }, nullptr);
  carom_event_set(&e);
  for (auto &t : th) pthread_join(t, nullptr);
  EXPECT_EQ(4, woke);
}
