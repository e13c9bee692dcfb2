/* sync/condition.c — Condition: a futex on a sequence counter plus an
 * advisory waiter count (USER-PAIN P21), bound to a Lock or an RLock by a
 * self-relative offset.
 *
 * Protocol (all under the bound lock except the sleep itself):
 *   waiter:   s = seq; waiters++; release lock; sleep while seq == s;
 *             waiters--; re-acquire lock.
 *   notifier: if waiters > 0 { seq++; FUTEX_WAKE(min(n, waiters)) }.
 * Why no wake-up is lost: a waiter reads seq and counts itself while holding
 * the lock, and the notifier holds the lock too, so a notify either comes
 * before the waiter's registration (and is not owed to it) or after it; in
 * the latter case the waiter is counted, and it is either asleep on the old
 * value when FUTEX_WAKE runs or finds seq moved when it tries to sleep (the
 * kernel compares the word atomically with queuing the sleeper). The wake
 * runs with the lock held, so waiters registering later cannot steal it.
 * Waiters between registration and sleep also return when seq moves, which is
 * why spurious wake-ups are allowed.
 *
 * Invariants: nothing per waiter is stored; `waiters_` is at least the number
 * of live registered waiters (each increments before releasing the lock and
 * decrements after waking); a dead waiter only leaves it too high. Sleeps are
 * capped at CAROM_OWNER_POLL_MS so a notifier that died between seq++ and
 * FUTEX_WAKE leaves sleepers waiting at most that long.
 */
#include "sync/internal.h"

#include <stddef.h>

enum { COND_LOCK = 1, COND_RLOCK = 2, COND_SPIN = 100 };

#define SEQ(c) CAROM__WORD(&(c)->seq_)
#define CWAITERS(c) CAROM__WORD(&(c)->waiters_)

static inline void *bound(const carom_cond_t *c) { return (char *)c + c->lock_off_; }
static inline _Atomic uint32_t *bound_word(const carom_cond_t *c) {
  /* word_ is the first field of both carom_lock_t and carom_rlock_t. */
  return CAROM__WORD(bound(c));
}

static void cond_setup(carom_cond_t *c, uint32_t kind, const void *lock) {
  atomic_init(SEQ(c), 0);
  atomic_init(CWAITERS(c), 0);
  c->kind_ = kind;
  c->pad_ = 0;
  c->lock_off_ = (int64_t)((const char *)lock - (const char *)c);
}

int carom_cond_init(carom_cond_t *c, carom_lock_t *lock) {
  if (!lock) {
    carom_rlock_init(&c->own_);
    cond_setup(c, COND_RLOCK, &c->own_);
  } else {
    cond_setup(c, COND_LOCK, lock);
  }
  return 0;
}

int carom_cond_init_rlock(carom_cond_t *c, carom_rlock_t *lock) {
  if (!lock) return carom_cond_init(c, NULL);
  cond_setup(c, COND_RLOCK, lock);
  return 0;
}

void carom_cond_destroy(carom_cond_t *c) { (void)c; }

int carom_cond_acquire(carom_cond_t *c, const struct timespec *deadline) {
  return c->kind_ == COND_LOCK ? carom_lock_acquire(bound(c), deadline)
                               : carom_rlock_acquire(bound(c), deadline);
}

int carom_cond_release(carom_cond_t *c) {
  return c->kind_ == COND_LOCK ? carom_lock_release(bound(c)) : carom_rlock_release(bound(c));
}

int carom_cond_consistent(carom_cond_t *c) {
  return c->kind_ == COND_LOCK ? carom_lock_consistent(bound(c))
                               : carom_rlock_consistent(bound(c));
}

/* Held by the caller: its process for a Lock (Lock has no thread owner),
 * its thread for an RLock. */
static bool held(const carom_cond_t *c) {
  if (c->kind_ == COND_RLOCK) return carom_rlock_is_owned(bound(c));
  uint32_t v = atomic_load_explicit(bound_word(c), memory_order_relaxed);
  return (pid_t)(v & CAROM__LK_PID_MASK) == carom__self_pid();
}

int carom_cond_wait(carom_cond_t *c, const struct timespec *deadline) {
  if (!held(c)) return CAROM_ENOTOWNER;
  const uint32_t s = atomic_load_explicit(SEQ(c), memory_order_relaxed);
  atomic_fetch_add_explicit(CWAITERS(c), 1, memory_order_relaxed);
  uint32_t depth = 0;
  /* The lock's release orders the registration before any later notifier's
   * reads (it acquires the same lock). */
  if (c->kind_ == COND_RLOCK)
    carom__rlock_release_all(bound(c), &depth);
  else
    carom__lockword_release(bound_word(c));

  int res = 0;
  /* Brief spin before sleeping (as the semaphore's): a notify that comes
   * within ~2 µs costs neither side a sleep nor a wake-up. */
  for (int i = 0; i < COND_SPIN; i++) {
    if (atomic_load_explicit(SEQ(c), memory_order_relaxed) != s) goto notified;
    carom__cpu_relax();
  }
  for (;;) {
    struct timespec cap;
    int r = carom__futex_wait(
        SEQ(c), s, carom__deadline_cap(deadline, CAROM_OWNER_POLL_MS * 1000000ull, &cap));
    if (atomic_load_explicit(SEQ(c), memory_order_relaxed) != s) break; /* notified */
    if (r == -ETIMEDOUT && carom__deadline_passed(deadline)) {
      res = -ETIMEDOUT;
      break;
    }
    /* A kernel-spurious wake, EINTR or a poll tick with seq unchanged: sleep on. */
  }
notified:
  atomic_fetch_sub_explicit(CWAITERS(c), 1, memory_order_relaxed);

  /* Re-acquire without bound, as Python and pthread_cond_timedwait do: the
   * caller's code expects to hold the lock when wait() returns. */
  int rr = c->kind_ == COND_RLOCK ? carom__rlock_restore(bound(c), depth, NULL)
                                  : carom__lockword_acquire(bound_word(c), NULL, false);
  return rr != 0 ? rr : res;
}

int carom_cond_wait_for(carom_cond_t *c, carom_cond_pred_fn pred, void *arg,
                        const struct timespec *deadline) {
  if (!held(c)) return CAROM_ENOTOWNER;
  for (;;) {
    if (pred(arg)) return 0;
    if (carom__deadline_passed(deadline)) return -ETIMEDOUT;
    int r = carom_cond_wait(c, deadline);
    if (r == -ETIMEDOUT) return pred(arg) ? 0 : -ETIMEDOUT;
    if (r != 0) return r;
  }
}

int carom_cond_notify(carom_cond_t *c, int n) {
  if (!held(c)) return CAROM_ENOTOWNER;
  if (n <= 0) return 0;
  uint32_t w = atomic_load_explicit(CWAITERS(c), memory_order_relaxed);
  if (w == 0) return 0;
  atomic_fetch_add_explicit(SEQ(c), 1, memory_order_relaxed);
  carom__futex_wake(SEQ(c), (uint32_t)n < w ? n : (w > INT_MAX ? INT_MAX : (int)w));
  return 0;
}

int carom_cond_notify_all(carom_cond_t *c) { return carom_cond_notify(c, INT_MAX); }
