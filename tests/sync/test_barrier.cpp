// tests/sync/test_barrier.cpp — Barrier: rounds across processes with
// indexes checked, the action, timeouts, abort/reset, parties and internal
// lock holders killed.
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
constexpr int kMaxRounds = 500, kMaxParties = 8;
struct S {
  carom_barrier_t b;
  uint32_t action_runs;
  uint32_t arrived[kMaxRounds];  // parties that entered each round (checked by the action)
  int32_t index[kMaxRounds][kMaxParties];
  uint32_t ready;
  int32_t result[kMaxParties];
};
S *make_s() { return static_cast<S *>(shared_alloc(sizeof(S))); }

void count_action(void *arg) {
  S *s = static_cast<S *>(arg);
  s->action_runs++;  // runs alone: every other party is inside wait()
}
}  // namespace

TEST(Barrier, InitAndSinglePartyRounds) {
  carom_barrier_t b;
  EXPECT_EQ(-EINVAL, carom_barrier_init(&b, 0, nullptr, nullptr, CAROM_NO_TIMEOUT));
  ASSERT_EQ(0, carom_barrier_init(&b, 1, nullptr, nullptr, CAROM_NO_TIMEOUT));
  EXPECT_EQ(1u, carom_barrier_parties(&b));
  for (int i = 0; i < 3; i++) EXPECT_EQ(0, carom_barrier_wait(&b, nullptr));
  EXPECT_FALSE(carom_barrier_broken(&b));
  EXPECT_EQ(0u, carom_barrier_n_waiting(&b));
}

// 4 processes x 300 rounds with an action: each round's indexes are a
// permutation of 0..3, and the action ran exactly once per round, after every
// party of that round had arrived and before any left.
TEST(Barrier, RoundsAcrossProcessesIndexesArePermutations) {
  constexpr int kParties = 4, kRounds = 300;
  S *s = make_s();
  ASSERT_EQ(0, carom_barrier_init(&s->b, kParties, count_action, s, CAROM_NO_TIMEOUT));
  pid_t kids[kParties];
  for (int p = 0; p < kParties; p++)
    kids[p] = fork_child([&, p] {
      for (int r = 0; r < kRounds; r++) {
        int i = carom_barrier_wait(&s->b, nullptr);
        if (i < 0 || i >= kParties) return 1;
        s->index[r][p] = i;
        // Everybody passed round r only after the action of round r ran.
        if (__atomic_load_n(&s->action_runs, __ATOMIC_RELAXED) < (uint32_t)r + 1) return 2;
      }
      return 0;
    });
  for (pid_t k : kids) EXPECT_EQ(0, reap_code(k, 120));
  EXPECT_EQ((uint32_t)kRounds, s->action_runs);
  for (int r = 0; r < kRounds; r++) {
    bool seen[kParties] = {};
    for (int p = 0; p < kParties; p++) {
      int i = s->index[r][p];
      ASSERT_TRUE(i >= 0 && i < kParties);
      EXPECT_FALSE(seen[i]) << "round " << r << " index " << i << " twice";
      seen[i] = true;
    }
  }
  EXPECT_FALSE(carom_barrier_broken(&s->b));
  shared_free(s, sizeof *s);
}

// Timeouts from both sides: the party whose deadline passes gets -ETIMEDOUT on
// time and breaks the barrier; a party that waits without deadline is
// released with CAROM_EBROKEN; later waits fail at once until reset().
TEST(Barrier, TimeoutBreaksBarrierForOthers) {
  S *s = make_s();
  carom_barrier_init(&s->b, 3, nullptr, nullptr, CAROM_NO_TIMEOUT);
  ChildGuard other(
      fork_child([&] { return carom_barrier_wait(&s->b, nullptr) == CAROM_EBROKEN ? 0 : 1; }));
  ASSERT_TRUE(wait_until_sleeping(other.pid()));
  EXPECT_EQ(1u, carom_barrier_n_waiting(&s->b));
  timespec ts;
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(-ETIMEDOUT, carom_barrier_wait(&s->b, carom_deadline(0.1, &ts)));
  double w = secs_since(t0);
  EXPECT_GE(w, 0.1);
  EXPECT_LT(w, 0.1 + 0.2 * slow_factor());
  EXPECT_EQ(0, reap_code(other));
  EXPECT_TRUE(carom_barrier_broken(&s->b));
  EXPECT_EQ(0u, carom_barrier_n_waiting(&s->b));
  EXPECT_EQ(CAROM_EBROKEN, carom_barrier_wait(&s->b, nullptr));
  carom_barrier_reset(&s->b);
  EXPECT_FALSE(carom_barrier_broken(&s->b));
  // Usable again: a full round of 3.
  pid_t a = fork_child([&] { return carom_barrier_wait(&s->b, nullptr) >= 0 ? 0 : 1; });
  pid_t b = fork_child([&] { return carom_barrier_wait(&s->b, nullptr) >= 0 ? 0 : 1; });
  EXPECT_GE(carom_barrier_wait(&s->b, carom_deadline(20, &ts)), 0);
  EXPECT_EQ(0, reap_code(a));
  EXPECT_EQ(0, reap_code(b));
  shared_free(s, sizeof *s);
}

// The default timeout given at init applies to wait(NULL).
TEST(Barrier, DefaultTimeoutFromInit) {
  carom_barrier_t b;
  carom_barrier_init(&b, 2, nullptr, nullptr, 0.05);
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(-ETIMEDOUT, carom_barrier_wait(&b, nullptr));
  double w = secs_since(t0);
  EXPECT_GE(w, 0.05);
  EXPECT_LT(w, 0.05 + 0.2 * slow_factor());
  EXPECT_TRUE(carom_barrier_broken(&b));
}

// abort() releases every waiter with CAROM_EBROKEN; reset() while parties wait
// releases them with CAROM_EBROKEN too and leaves the barrier usable.
TEST(Barrier, AbortAndResetReleaseWaitersBroken) {
  S *s = make_s();
  carom_barrier_init(&s->b, 4, nullptr, nullptr, CAROM_NO_TIMEOUT);
  for (int phase = 0; phase < 2; phase++) {
    ChildGuard kids[3];
    for (auto &k : kids)
      k.reset(fork_child([&] { return carom_barrier_wait(&s->b, nullptr) == CAROM_EBROKEN ? 0 : 1; }));
    for (auto &k : kids) ASSERT_TRUE(wait_until_sleeping(k.pid()));
    EXPECT_EQ(3u, carom_barrier_n_waiting(&s->b));
    if (phase == 0) {
      carom_barrier_abort(&s->b);
      for (auto &k : kids) EXPECT_EQ(0, reap_code(k));
      EXPECT_TRUE(carom_barrier_broken(&s->b));
      EXPECT_EQ(CAROM_EBROKEN, carom_barrier_wait(&s->b, nullptr));
      carom_barrier_reset(&s->b);
    } else {
      carom_barrier_reset(&s->b);
      for (auto &k : kids) EXPECT_EQ(0, reap_code(k));
    }
    EXPECT_FALSE(carom_barrier_broken(&s->b));
    EXPECT_EQ(0u, carom_barrier_n_waiting(&s->b));
  }
  // After reset: full rounds work, indexes 0..3.
  pid_t kids[3];
  for (int p = 0; p < 3; p++)
    kids[p] = fork_child([&, p] {
      s->result[p] = carom_barrier_wait(&s->b, nullptr);
      return 0;
    });
  timespec ts;
  int mine = carom_barrier_wait(&s->b, carom_deadline(20, &ts));
  for (pid_t k : kids) EXPECT_EQ(0, reap_code(k));
  bool seen[4] = {};
  for (int i : {mine, s->result[0], s->result[1], s->result[2]}) {
    ASSERT_TRUE(i >= 0 && i < 4) << i;
    EXPECT_FALSE(seen[i]);
    seen[i] = true;
  }
  shared_free(s, sizeof *s);
}

// A party SIGKILLed while waiting keeps its place: the others break when
// their timeouts expire (the first to expire gets -ETIMEDOUT, the rest
// CAROM_EBROKEN), and the barrier works again after reset().
TEST(Barrier, PartyKilledOthersBreakAfterTimeout) {
  S *s = make_s();
  carom_barrier_init(&s->b, 4, nullptr, nullptr, CAROM_NO_TIMEOUT);
  ChildGuard victim(fork_child([&] { return carom_barrier_wait(&s->b, nullptr) >= 0 ? 0 : 1; }));
  ASSERT_TRUE(wait_until_sleeping(victim.pid()));
  ChildGuard patient(fork_child([&] {
    timespec d;
    return carom_barrier_wait(&s->b, carom_deadline(20, &d)) == CAROM_EBROKEN ? 0 : 1;
  }));
  ASSERT_TRUE(wait_until_sleeping(patient.pid()));
  kill(victim.pid(), SIGKILL);
  EXPECT_EQ(1000 + SIGKILL, reap_code(victim));
  timespec ts;
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(-ETIMEDOUT, carom_barrier_wait(&s->b, carom_deadline(0.2, &ts)));
  EXPECT_LT(secs_since(t0), 0.2 + 0.2 * slow_factor());
  EXPECT_EQ(0, reap_code(patient));
  EXPECT_TRUE(carom_barrier_broken(&s->b));
  carom_barrier_reset(&s->b);
  EXPECT_EQ(0u, carom_barrier_n_waiting(&s->b));
  shared_free(s, sizeof *s);
}

static void hang_action(void *arg) {
  S *s = static_cast<S *>(arg);
  __atomic_store_n(&s->ready, 1, __ATOMIC_SEQ_CST);
  pause();
}

// The last party is killed while running the action: the waiters, which have
// no deadline, notice the dead action runner by polling and break.
TEST(Barrier, ActionRunnerKilledBreaksBarrier) {
  S *s = make_s();
  carom_barrier_init(&s->b, 3, hang_action, s, CAROM_NO_TIMEOUT);
  ChildGuard w[2];
  for (auto &k : w)
    k.reset(fork_child([&] { return carom_barrier_wait(&s->b, nullptr) == CAROM_EBROKEN ? 0 : 1; }));
  for (auto &k : w) ASSERT_TRUE(wait_until_sleeping(k.pid()));
  ChildGuard runner(fork_child([&] { return carom_barrier_wait(&s->b, nullptr); }));
  ASSERT_TRUE(wait_until([&] { return __atomic_load_n(&s->ready, __ATOMIC_SEQ_CST) == 1; }));
  kill(runner.pid(), SIGKILL);
  uint64_t t0 = carom_now_ns();
  for (auto &k : w) EXPECT_EQ(0, reap_code(k));
  EXPECT_LT(secs_since(t0), 1.0 * slow_factor());
  EXPECT_EQ(1000 + SIGKILL, reap_code(runner));
  EXPECT_TRUE(carom_barrier_broken(&s->b));
  shared_free(s, sizeof *s);
}

// A process that dies holding the barrier's internal lock (simulated by a
// child that takes the lock word through the Lock API and exits): sleeping
// waiters notice through owner-death recovery and break; later calls see a
// broken barrier, and reset() makes it usable.
TEST(Barrier, ProcessDyingInsideBarrierLockBreaksIt) {
  S *s = make_s();
  carom_barrier_init(&s->b, 3, nullptr, nullptr, CAROM_NO_TIMEOUT);
  ChildGuard w(
      fork_child([&] { return carom_barrier_wait(&s->b, nullptr) == CAROM_EBROKEN ? 0 : 1; }));
  ASSERT_TRUE(wait_until_sleeping(w.pid()));
  static_assert(offsetof(carom_barrier_t, lock_) == 0, "lock word first");
  pid_t holder = fork_child([&] {
    return carom_lock_acquire(reinterpret_cast<carom_lock_t *>(&s->b), nullptr);
  });
  EXPECT_EQ(0, reap_code(holder));
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(0, reap_code(w));
  EXPECT_LT(secs_since(t0), 1.0 * slow_factor());
  EXPECT_TRUE(carom_barrier_broken(&s->b));
  EXPECT_EQ(CAROM_EBROKEN, carom_barrier_wait(&s->b, nullptr));
  carom_barrier_reset(&s->b);
  EXPECT_FALSE(carom_barrier_broken(&s->b));
  shared_free(s, sizeof *s);
}

// Threads of one process: 3 threads x 300 rounds on a 3-party barrier; over
// all rounds each index was returned exactly 300 times.
TEST(Barrier, ThreadsOfOneProcessRounds) {
  static carom_barrier_t b;
  static uint32_t counts[3];
  carom_barrier_init(&b, 3, nullptr, nullptr, CAROM_NO_TIMEOUT);
  pthread_t th[3];
  for (auto &t : th)
    pthread_create(&t, nullptr, [](void *) -> void * {
      for (int i = 0; i < 300; i++) {
        int r = carom_barrier_wait(&b, nullptr);
        if (r < 0 || r > 2) abort();
        __atomic_fetch_add(&counts[r], 1, __ATOMIC_RELAXED);
      }
      return nullptr;
    }, nullptr);
  for (auto &t : th) pthread_join(t, nullptr);
  for (uint32_t c : counts) EXPECT_EQ(300u, c);
  EXPECT_FALSE(carom_barrier_broken(&b));
}

static void gated_action(void *arg) {
  S *s = static_cast<S *>(arg);
  if (s->action_runs == 0) {  // hold the first round's action until released
    __atomic_store_n(&s->ready, 1, __ATOMIC_SEQ_CST);
    if (!wait_until([&] { return __atomic_load_n(&s->ready, __ATOMIC_SEQ_CST) == 2; }))
      _exit(kChildTimedOut);  // runs in the runner child
  }
  s->action_runs++;
}

// A caller arriving while the action of a full round runs is not part of
// that round (it neither gets an index in it nor breaks it): it waits and
// joins the next round.
TEST(Barrier, ArrivalDuringActionJoinsNextRound) {
  S *s = make_s();
  carom_barrier_init(&s->b, 2, gated_action, s, CAROM_NO_TIMEOUT);
  ChildGuard first(fork_child([&] { return carom_barrier_wait(&s->b, nullptr); }));
  ASSERT_TRUE(wait_until_sleeping(first.pid()));
  ChildGuard runner(fork_child([&] { return carom_barrier_wait(&s->b, nullptr); }));
  ASSERT_TRUE(wait_until([&] { return __atomic_load_n(&s->ready, __ATOMIC_SEQ_CST) == 1; }));
  ChildGuard late(fork_child([&] { return 10 + carom_barrier_wait(&s->b, nullptr); }));
  ASSERT_TRUE(wait_until_sleeping(late.pid()));
  EXPECT_EQ(0u, carom_barrier_n_waiting(&s->b));  // the full round is not "waiting"
  __atomic_store_n(&s->ready, 2, __ATOMIC_SEQ_CST);
  EXPECT_EQ(0, reap_code(first));
  EXPECT_EQ(1, reap_code(runner));
  // Next round: `late` and we make it up (either may re-enter first), and the
  // action runs once more.
  timespec ts;
  int mine = carom_barrier_wait(&s->b, carom_deadline(20, &ts));
  int theirs = reap_code(late) - 10;
  EXPECT_TRUE((mine == 0 && theirs == 1) || (mine == 1 && theirs == 0)) << mine << " " << theirs;
  EXPECT_EQ(2u, s->action_runs);
  shared_free(s, sizeof *s);
}
