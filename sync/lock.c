/* sync/lock.c — Lock and RLock: a futex word holding the owner's pid.
 *
 * States of the word (see CAROM__LK_* in sync/internal.h):
 *   0                      free, nobody sleeps
 *   pid                    held by process pid, nobody sleeps
 *   pid|WAITERS            held, someone may sleep: release must FUTEX_WAKE
 *   pid|INCONSISTENT|...   held by pid after taking it over from a dead owner
 *   NOTRECOVERABLE         released while inconsistent: unusable for good
 *
 * A waiter that finds the lock free after sleeping takes it as pid|WAITERS,
 * since it cannot know whether others still sleep (Drepper, "Futexes are
 * tricky", mutex #2); the cost is at most one needless wake.
 *
 * Owner death: a sleeper caps each sleep at CAROM_OWNER_POLL_MS; when a sleep
 * ends without a wake-up it asks whether the owner process still lives, and
 * if not, CASes the word from the dead owner to itself|INCONSISTENT. The CAS
 * makes exactly one waiter the recoverer. Waiters that die leave at most a
 * stale WAITERS bit (one extra wake), never a wedge.
 */
#include "sync/internal.h"

/* Spinning before sleeping. A handover while spinning costs ~100 ns; waking
 * a sleeper costs tens of µs on the reference machine (shared/FLOORS.md), so
 * a waiter spins for about one wake-up's worth of time (LOCK_SPIN_NS) before
 * it sleeps. It polls with plain loads and exponential back-off (up to
 * LOCK_BACKOFF_MAX pause instructions, ~3 µs here), so the owner keeps the
 * cache line in exclusive state and runs its acquire/release pairs at
 * uncontended speed instead of losing the line to the spinner every time; a
 * CAS is tried only when the word reads free. Spinning stops as soon as
 * somebody sleeps (WAITERS): from then on releases go to the sleepers. */
enum { LOCK_SPIN_NS = 50000, LOCK_BACKOFF_MAX = 128 };

static int take_over_if_dead(_Atomic uint32_t *w, uint32_t seen, pid_t me) {
  pid_t owner = (pid_t)(seen & CAROM__LK_PID_MASK);
  if (owner == 0 || owner == me || carom__pid_alive(owner)) return 1;
  uint32_t mine = (uint32_t)me | CAROM__LK_WAITERS | CAROM__LK_INCONSISTENT;
  if (atomic_compare_exchange_strong_explicit(w, &seen, mine, memory_order_acquire,
                                              memory_order_relaxed)) {
    carom__warn("lock %p: owner pid %d died holding it; taken over by pid %d", (void *)w,
                (int)owner, (int)me);
    return -EOWNERDEAD;
  }
  return 1; /* somebody else changed it: look again */
}

/* Spin while the owner runs and nobody sleeps (see LOCK_SPIN_NS). `mine`
 * is the value to install. True when the lock was taken. */
static bool spin_acquire(_Atomic uint32_t *w, uint32_t mine) {
  uint64_t end = 0;
  for (unsigned delay = 1;;) {
    uint32_t v = atomic_load_explicit(w, memory_order_relaxed);
    if (v == 0) {
      if (atomic_compare_exchange_weak_explicit(w, &v, mine, memory_order_acquire,
                                                memory_order_relaxed))
        return true;
      continue;
    }
    if (v & (CAROM__LK_WAITERS | CAROM__LK_NOTRECOVERABLE)) return false;
    for (unsigned k = 0; k < delay; k++) carom__cpu_relax();
    if (delay < LOCK_BACKOFF_MAX) {
      delay <<= 1;
    } else {
      uint64_t now = carom_now_ns();
      if (end == 0) end = now + LOCK_SPIN_NS;
      else if (now >= end) return false;
    }
  }
}

int carom__lockword_acquire(_Atomic uint32_t *w, const struct timespec *deadline, bool try_once) {
  const pid_t me = carom__self_pid();
  uint32_t v = 0;
  if (CAROM_LIKELY(atomic_compare_exchange_strong_explicit(w, &v, (uint32_t)me,
                                                           memory_order_acquire,
                                                           memory_order_relaxed)))
    return 0;

  if (try_once) {
    if (v & CAROM__LK_NOTRECOVERABLE) return -ENOTRECOVERABLE;
    /* Free but flagged WAITERS: take it and keep the flag. */
    while ((v & CAROM__LK_PID_MASK) == 0) {
      if (atomic_compare_exchange_weak_explicit(w, &v, (uint32_t)me | CAROM__LK_WAITERS,
                                                memory_order_acquire, memory_order_relaxed))
        return 0;
      if (v & CAROM__LK_NOTRECOVERABLE) return -ENOTRECOVERABLE;
    }
    int r = take_over_if_dead(w, v, me);
    return r < 0 ? r : -EAGAIN;
  }

  /* A deadline already passed means "try once": no spin, no sleep. */
  if (deadline && carom__deadline_passed(deadline)) {
    int r = carom__lockword_acquire(w, NULL, true);
    return r == -EAGAIN ? -ETIMEDOUT : r;
  }
  if (spin_acquire(w, (uint32_t)me)) return 0;

  for (;;) {
    v = atomic_load_explicit(w, memory_order_relaxed);
    if (v & CAROM__LK_NOTRECOVERABLE) return -ENOTRECOVERABLE;
    if ((v & CAROM__LK_PID_MASK) == 0) {
      if (atomic_compare_exchange_weak_explicit(w, &v, (uint32_t)me | CAROM__LK_WAITERS,
                                                memory_order_acquire, memory_order_relaxed))
        return 0;
      continue;
    }
    if (!(v & CAROM__LK_WAITERS)) {
      if (!atomic_compare_exchange_weak_explicit(w, &v, v | CAROM__LK_WAITERS,
                                                 memory_order_relaxed, memory_order_relaxed))
        continue;
      v |= CAROM__LK_WAITERS;
    }
    struct timespec cap;
    int r = carom__futex_wait(w, v, carom__deadline_cap(deadline,
                                                        CAROM_OWNER_POLL_MS * 1000000ull, &cap));
    if (r == -ETIMEDOUT) {
      /* A poll interval (or the deadline) ran out with no release seen: the
       * owner may be dead. Checked before the deadline so a timed acquire
       * still recovers a lock whose owner died long ago. */
      uint32_t now = atomic_load_explicit(w, memory_order_relaxed);
      if (now == v) {
        int t = take_over_if_dead(w, v, me);
        if (t < 0) return t;
      }
      if (carom__deadline_passed(deadline)) return -ETIMEDOUT;
    }
  }
}

int carom__lockword_release(_Atomic uint32_t *w) {
  /* Fast path: held by this process, no flags. One RMW, no extra load that
   * would fetch the line shared first under contention. */
  uint32_t v = (uint32_t)carom__self_pid();
  if (CAROM_LIKELY(atomic_compare_exchange_strong_explicit(w, &v, 0, memory_order_release,
                                                           memory_order_relaxed)))
    return 0;
  uint32_t next;
  do {
    if ((v & CAROM__LK_PID_MASK) == 0) return CAROM_ENOTLOCKED;
    /* Releasing without repairing after an owner death poisons the lock. */
    next = (v & CAROM__LK_INCONSISTENT) ? CAROM__LK_NOTRECOVERABLE : 0;
  } while (!atomic_compare_exchange_weak_explicit(w, &v, next, memory_order_release,
                                                  memory_order_relaxed));
  if (next == CAROM__LK_NOTRECOVERABLE) {
    carom__warn("lock %p released while inconsistent: now not recoverable", (void *)w);
    carom__futex_wake(w, INT_MAX);
  } else if (v & CAROM__LK_WAITERS) {
    carom__futex_wake(w, 1);
  }
  return 0;
}

int carom__lockword_consistent(_Atomic uint32_t *w) {
  uint32_t v = atomic_load_explicit(w, memory_order_relaxed);
  do {
    if (!(v & CAROM__LK_INCONSISTENT)) return -EINVAL;
  } while (!atomic_compare_exchange_weak_explicit(w, &v, v & ~CAROM__LK_INCONSISTENT,
                                                  memory_order_relaxed, memory_order_relaxed));
  return 0;
}

/* ---- Lock ---- */

int carom_lock_init(carom_lock_t *l) {
  atomic_init(CAROM__WORD(&l->word_), 0);
  return 0;
}

void carom_lock_destroy(carom_lock_t *l) { (void)l; }

int carom_lock_acquire(carom_lock_t *l, const struct timespec *deadline) {
  return carom__lockword_acquire(CAROM__WORD(&l->word_), deadline, false);
}

int carom_lock_tryacquire(carom_lock_t *l) {
  return carom__lockword_acquire(CAROM__WORD(&l->word_), NULL, true);
}

int carom_lock_release(carom_lock_t *l) { return carom__lockword_release(CAROM__WORD(&l->word_)); }

int carom_lock_consistent(carom_lock_t *l) {
  return carom__lockword_consistent(CAROM__WORD(&l->word_));
}

bool carom_lock_locked(const carom_lock_t *l) {
  return (atomic_load_explicit(CAROM__WORD(&l->word_), memory_order_relaxed) &
          CAROM__LK_PID_MASK) != 0;
}

/* ---- RLock ---- */

#define OWNER(l) ((_Atomic int32_t *)&(l)->owner_)

static bool rlock_mine(const carom_rlock_t *l) {
  /* Only the owner thread can see its own tid here while holding it; any other
   * reader sees a different tid or a different pid, so relaxed loads suffice. */
  uint32_t v = atomic_load_explicit(CAROM__WORD(&l->word_), memory_order_relaxed);
  return (pid_t)(v & CAROM__LK_PID_MASK) == carom__self_pid() &&
         atomic_load_explicit(OWNER(l), memory_order_relaxed) == carom__self_tid();
}

int carom_rlock_init(carom_rlock_t *l) {
  atomic_init(CAROM__WORD(&l->word_), 0);
  atomic_init(OWNER(l), 0);
  l->count_ = 0;
  l->pad_ = 0;
  return 0;
}

void carom_rlock_destroy(carom_rlock_t *l) { (void)l; }

static int rlock_acquire(carom_rlock_t *l, const struct timespec *deadline, bool try_once) {
  if (rlock_mine(l)) {
    if (l->count_ == UINT32_MAX) return -EOVERFLOW;
    l->count_++;
    return 0;
  }
  int r = carom__lockword_acquire(CAROM__WORD(&l->word_), deadline, try_once);
  if (r == 0 || r == -EOWNERDEAD) {
    atomic_store_explicit(OWNER(l), carom__self_tid(), memory_order_relaxed);
    l->count_ = 1;
  }
  return r;
}

int carom_rlock_acquire(carom_rlock_t *l, const struct timespec *deadline) {
  return rlock_acquire(l, deadline, false);
}

int carom_rlock_tryacquire(carom_rlock_t *l) { return rlock_acquire(l, NULL, true); }

int carom_rlock_release(carom_rlock_t *l) {
  if (!rlock_mine(l)) return CAROM_ENOTOWNER;
  if (--l->count_ > 0) return 0;
  atomic_store_explicit(OWNER(l), 0, memory_order_relaxed);
  return carom__lockword_release(CAROM__WORD(&l->word_));
}

int carom_rlock_consistent(carom_rlock_t *l) {
  if (!rlock_mine(l)) return CAROM_ENOTOWNER;
  return carom__lockword_consistent(CAROM__WORD(&l->word_));
}

bool carom_rlock_is_owned(const carom_rlock_t *l) { return rlock_mine(l); }

unsigned carom_rlock_count(const carom_rlock_t *l) { return rlock_mine(l) ? l->count_ : 0; }

int carom__rlock_release_all(carom_rlock_t *l, uint32_t *depth) {
  if (!rlock_mine(l)) return CAROM_ENOTOWNER;
  *depth = l->count_;
  l->count_ = 0;
  atomic_store_explicit(OWNER(l), 0, memory_order_relaxed);
  return carom__lockword_release(CAROM__WORD(&l->word_));
}

int carom__rlock_restore(carom_rlock_t *l, uint32_t depth, const struct timespec *deadline) {
  int r = carom__lockword_acquire(CAROM__WORD(&l->word_), deadline, false);
  if (r == 0 || r == -EOWNERDEAD) {
    atomic_store_explicit(OWNER(l), carom__self_tid(), memory_order_relaxed);
    l->count_ = depth;
  }
  return r;
}
