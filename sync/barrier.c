/* sync/barrier.c — Barrier: Python's threading.Barrier over a lock word, a
 * futex sequence word and generation-numbered rounds.
 *
 * State, guarded by the internal lock word `lock_` (read without it only as
 * hints by polling sleepers): count_ parties arrived in round gen_; broken_
 * until reset; outcome_ bit (g % 64) says whether round g ended broken;
 * releaser_ the pid running the action of a full round (count_ == parties_).
 * seq_ is bumped (and sleepers woken) whenever a round ends or the barrier
 * changes state; sleepers wait on it, capped at CAROM_OWNER_POLL_MS.
 *
 * Invariants: count_ < parties_ except while the action runs; a round ends
 * exactly once, by end_round_locked(), which bumps gen_, zeroes count_ and
 * records the outcome before any waiter of that round can look (the waiter
 * re-takes the lock to read it). A waiter learns its outcome from the
 * generation, so it never has to leave before the next round starts. The
 * outcome history is 64 rounds deep: a waiter would have to sleep through 64
 * complete rounds of other parties to read a stale bit, which needs more
 * participants than parties and a stalled process.
 *
 * Process death: a process that dies holding the internal lock is detected
 * by the next acquirer (owner death, -EOWNERDEAD) or by a polling sleeper;
 * either breaks the barrier and marks the lock consistent, since the fields
 * may be half-updated. A dead action runner (releaser_) is found by polling
 * sleepers and breaks the round. A party dead while waiting is indistinguish-
 * able from a slow one: the others break the round at their deadlines.
 */
#include "sync/internal.h"

#include <math.h>

#define BF(b, f) CAROM__WORD(&(b)->f)
#define LD(b, f) atomic_load_explicit(BF(b, f), memory_order_relaxed)
#define ST(b, f, v) atomic_store_explicit(BF(b, f), (v), memory_order_relaxed)
#define OUTCOME(b) ((_Atomic uint64_t *)&(b)->outcome_)
#define RELEASER(b) ((_Atomic int32_t *)&(b)->releaser_)

int carom_barrier_init(carom_barrier_t *b, unsigned parties, carom_barrier_action_fn action,
                       void *arg, double timeout_s) {
  if (parties == 0 || parties > INT32_MAX) return -EINVAL;
  atomic_init(BF(b, lock_), 0);
  atomic_init(BF(b, seq_), 0);
  b->parties_ = parties;
  atomic_init(BF(b, count_), 0);
  atomic_init(BF(b, gen_), 0);
  atomic_init(BF(b, broken_), 0);
  atomic_init(BF(b, waiters_), 0);
  atomic_init(RELEASER(b), 0);
  atomic_init(OUTCOME(b), 0);
  b->timeout_ns_ = 0;
  if (timeout_s >= 0 && !isinf(timeout_s)) {
    double ns = timeout_s * 1e9;
    b->timeout_ns_ = ns < 1 ? 1 : ns > 1e18 ? (uint64_t)1e18 : (uint64_t)ns;
  }
  b->action_ = (uint64_t)(uintptr_t)action;
  b->arg_ = (uint64_t)(uintptr_t)arg;
  return 0;
}

void carom_barrier_destroy(carom_barrier_t *b) { (void)b; }

/* Wake sleepers after a state change (lock held). */
static void bump_locked(carom_barrier_t *b) {
  /* seq_cst on both sides (here and sleep_on's waiters_++ before its
   * FUTEX_WAIT): either the sleeper's wait sees the new seq_ or we see its
   * count and wake it. */
  atomic_fetch_add_explicit(BF(b, seq_), 1, memory_order_seq_cst);
  if (atomic_load_explicit(BF(b, waiters_), memory_order_seq_cst) != 0)
    carom__futex_wake(BF(b, seq_), INT_MAX);
}

static void end_round_locked(carom_barrier_t *b, bool broken) {
  uint32_t g = LD(b, gen_);
  uint64_t bit = 1ull << (g % 64);
  uint64_t o = atomic_load_explicit(OUTCOME(b), memory_order_relaxed);
  atomic_store_explicit(OUTCOME(b), broken ? (o | bit) : (o & ~bit), memory_order_relaxed);
  ST(b, gen_, g + 1);
  ST(b, count_, 0);
  atomic_store_explicit(RELEASER(b), 0, memory_order_relaxed);
  if (broken) ST(b, broken_, 1);
  bump_locked(b);
}

/* The internal lock was taken over from a dead holder (-EOWNERDEAD): the
 * state may be half-updated, so break the barrier, then mark the lock
 * consistent. */
static void repair_locked(carom_barrier_t *b) {
  end_round_locked(b, true);
  carom__warn("barrier %p: a process died inside it; barrier broken", (void *)b);
  carom__lockword_consistent(BF(b, lock_));
}

/* Take the internal lock. The critical sections are a few stores, so this
 * blocks only briefly unless the holder died. */
static void lock_barrier(carom_barrier_t *b) {
  int r = carom__lockword_acquire(BF(b, lock_), NULL, false);
  if (r == 0) return;
  if (r != -EOWNERDEAD) carom__die("barrier %p: internal lock: %d", (void *)b, r);
  repair_locked(b);
}

static void unlock_barrier(carom_barrier_t *b) { carom__lockword_release(BF(b, lock_)); }

/* Polling sleeper: break the barrier when the action runner or the holder of
 * the internal lock has died. Returns without the lock. */
static void check_dead(carom_barrier_t *b) {
  int32_t rel = atomic_load_explicit(RELEASER(b), memory_order_relaxed);
  if (rel != 0 && !carom__pid_alive(rel)) {
    lock_barrier(b);
    if (atomic_load_explicit(RELEASER(b), memory_order_relaxed) == rel) {
      carom__warn("barrier %p: action runner pid %d died; barrier broken", (void *)b, (int)rel);
      end_round_locked(b, true);
    }
    unlock_barrier(b);
    return;
  }
  /* tryacquire takes the lock over (and we break the barrier) if its holder
   * died; otherwise it is free or held by a live process. */
  int r = carom__lockword_acquire(BF(b, lock_), NULL, true);
  if (r == -EOWNERDEAD) repair_locked(b);
  if (r == 0 || r == -EOWNERDEAD) unlock_barrier(b);
}

/* Sleep until seq_ moves from s, the deadline, or a poll tick. Returns
 * -ETIMEDOUT only when the deadline has passed. Without the lock. */
static int sleep_on(carom_barrier_t *b, uint32_t s, const struct timespec *deadline) {
  atomic_fetch_add_explicit(BF(b, waiters_), 1, memory_order_seq_cst);
  struct timespec cap;
  int r = carom__futex_wait(BF(b, seq_), s,
                            carom__deadline_cap(deadline, CAROM_OWNER_POLL_MS * 1000000ull, &cap));
  atomic_fetch_sub_explicit(BF(b, waiters_), 1, memory_order_relaxed);
  if (r == -ETIMEDOUT) {
    if (carom__deadline_passed(deadline)) return -ETIMEDOUT;
    if (LD(b, seq_) == s) check_dead(b);
  }
  return 0;
}

int carom_barrier_wait(carom_barrier_t *b, const struct timespec *deadline) {
  struct timespec dflt;
  if (!deadline && b->timeout_ns_) {
    carom__ns_ts(carom_now_ns() + b->timeout_ns_, &dflt);
    deadline = &dflt;
  }
  lock_barrier(b);
  /* A full round whose action is running: wait for the next round. */
  while (LD(b, count_) >= b->parties_ && !LD(b, broken_)) {
    uint32_t s = LD(b, seq_);
    unlock_barrier(b);
    int r = sleep_on(b, s, deadline);
    lock_barrier(b);
    if (r == -ETIMEDOUT && LD(b, count_) >= b->parties_ && !LD(b, broken_)) {
      unlock_barrier(b);
      return -ETIMEDOUT; /* not part of any round: breaks nothing */
    }
  }
  if (LD(b, broken_)) {
    unlock_barrier(b);
    return CAROM_EBROKEN;
  }
  const uint32_t g = LD(b, gen_);
  const uint32_t index = LD(b, count_);
  ST(b, count_, index + 1);

  if (index + 1 == b->parties_) {
    carom_barrier_action_fn action = (carom_barrier_action_fn)(uintptr_t)b->action_;
    if (action) {
      atomic_store_explicit(RELEASER(b), carom__self_pid(), memory_order_relaxed);
      unlock_barrier(b);
      action((void *)(uintptr_t)b->arg_);
      lock_barrier(b);
      if (LD(b, gen_) != g) { /* broken (timeout, abort, reset) while it ran */
        unlock_barrier(b);
        return CAROM_EBROKEN;
      }
    }
    end_round_locked(b, false);
    unlock_barrier(b);
    return (int)index;
  }

  for (;;) {
    uint32_t s = LD(b, seq_);
    unlock_barrier(b);
    int r = sleep_on(b, s, deadline);
    lock_barrier(b);
    if (LD(b, gen_) != g) {
      bool broken = (atomic_load_explicit(OUTCOME(b), memory_order_relaxed) >> (g % 64)) & 1;
      unlock_barrier(b);
      return broken ? CAROM_EBROKEN : (int)index;
    }
    if (r == -ETIMEDOUT) {
      end_round_locked(b, true);
      unlock_barrier(b);
      return -ETIMEDOUT;
    }
  }
}

void carom_barrier_abort(carom_barrier_t *b) {
  lock_barrier(b);
  end_round_locked(b, true);
  unlock_barrier(b);
}

void carom_barrier_reset(carom_barrier_t *b) {
  lock_barrier(b);
  if (LD(b, count_) > 0) end_round_locked(b, true);
  ST(b, broken_, 0);
  bump_locked(b);
  unlock_barrier(b);
}

unsigned carom_barrier_n_waiting(const carom_barrier_t *b) {
  if (LD(b, broken_)) return 0;
  uint32_t n = LD(b, count_);
  return n >= b->parties_ ? 0 : n;
}

unsigned carom_barrier_parties(const carom_barrier_t *b) { return b->parties_; }

bool carom_barrier_broken(const carom_barrier_t *b) { return LD(b, broken_) != 0; }
