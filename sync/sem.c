/* sync/sem.c — Semaphore and BoundedSemaphore (musl's sem_* design).
 *
 * The value word holds the free units in its low 31 bits and SLEEPERS in the
 * top bit; `waiters_` counts processes/threads that are about to sleep or
 * sleep. Invariants:
 *   - a sleeper sets SLEEPERS only on a word with no units (CAS 0 ->
 *     SLEEPERS just before FUTEX_WAIT on the value SLEEPERS);
 *   - release keeps SLEEPERS and wakes n when more than n waiters are
 *     counted, so the next release wakes again; otherwise it clears the bit
 *     and wakes *all* sleepers (musl sem_post), because a sleeper that
 *     counted itself after the release read the count may be asleep on the
 *     bit being cleared;
 *   - the unit count never exceeds limit_ (BoundedSemaphore) or
 *     CAROM_SEM_VALUE_MAX.
 * A sleeper re-checks the word after every return from the futex. The waiter
 * count is advisory: too high costs a needless FUTEX_WAKE, and it can never be
 * too low for a sleeper that is still in the kernel, because each sleeper
 * increments it before setting SLEEPERS and decrements it only after waking.
 */
#include "sync/internal.h"

enum {
  SEM_COUNT = 0x7fffffffu,
  SEM_SLEEPERS = 0x80000000u,
  /* Spin iterations while nobody sleeps: a release usually comes within a
   * few hundred ns when the peer is running; sleeping costs tens of µs. */
  SEM_SPIN = 100,
};

#define VAL(s) CAROM__WORD(&(s)->value_)
#define WAITERS(s) CAROM__WORD(&(s)->waiters_)

int carom_sem_init(carom_sem_t *s, unsigned value) {
  if (value > CAROM_SEM_VALUE_MAX) return -EINVAL;
  atomic_init(VAL(s), value);
  atomic_init(WAITERS(s), 0);
  s->limit_ = CAROM_SEM_VALUE_MAX;
  s->pad_ = 0;
  return 0;
}

int carom_sem_init_bounded(carom_sem_t *s, unsigned value) {
  int r = carom_sem_init(s, value);
  if (r == 0) s->limit_ = value;
  return r;
}

void carom_sem_destroy(carom_sem_t *s) { (void)s; }

/* Take a unit if one is free; keep the SLEEPERS bit as it is. */
static inline bool sem_take(carom_sem_t *s) {
  uint32_t v = atomic_load_explicit(VAL(s), memory_order_relaxed);
  while (v & SEM_COUNT) {
    if (atomic_compare_exchange_weak_explicit(VAL(s), &v, v - 1, memory_order_acquire,
                                              memory_order_relaxed))
      return true;
  }
  return false;
}

int carom_sem_tryacquire(carom_sem_t *s) { return sem_take(s) ? 0 : -EAGAIN; }

int carom_sem_acquire(carom_sem_t *s, const struct timespec *deadline) {
  if (CAROM_LIKELY(sem_take(s))) return 0;
  if (deadline && carom__deadline_passed(deadline)) return -ETIMEDOUT;

  /* Brief spin, only while nobody sleeps (a sleeper means releases go to it). */
  for (int i = 0; i < SEM_SPIN; i++) {
    if (atomic_load_explicit(WAITERS(s), memory_order_relaxed) != 0) break;
    if (atomic_load_explicit(VAL(s), memory_order_relaxed) & SEM_COUNT) {
      if (sem_take(s)) return 0;
    }
    carom__cpu_relax();
  }

  for (;;) {
    if (sem_take(s)) return 0;
    atomic_fetch_add_explicit(WAITERS(s), 1, memory_order_seq_cst);
    uint32_t zero = 0;
    /* Announce the sleep; fails harmlessly when a unit arrived or the bit is
     * already set (then the wait below returns at once or sleeps). */
    atomic_compare_exchange_strong_explicit(VAL(s), &zero, SEM_SLEEPERS, memory_order_seq_cst,
                                            memory_order_relaxed);
    int r = carom__futex_wait(VAL(s), SEM_SLEEPERS, deadline);
    atomic_fetch_sub_explicit(WAITERS(s), 1, memory_order_relaxed);
    if (r == -ETIMEDOUT) return sem_take(s) ? 0 : -ETIMEDOUT;
  }
}

int carom_sem_release(carom_sem_t *s, unsigned n) {
  if (n == 0) return -EINVAL;
  uint32_t v = atomic_load_explicit(VAL(s), memory_order_relaxed);
  uint32_t next;
  bool keep;
  do {
    uint32_t count = v & SEM_COUNT;
    if (n > s->limit_ || count > s->limit_ - n)
      return s->limit_ == CAROM_SEM_VALUE_MAX ? -EOVERFLOW : CAROM_EOVERRELEASE;
    next = (v & SEM_SLEEPERS) | (count + n);
    /* With more sleepers than units released, keep the bit so the next
     * release wakes the rest. */
    keep = atomic_load_explicit(WAITERS(s), memory_order_seq_cst) > n;
    if (!keep) next &= ~SEM_SLEEPERS;
  } while (!atomic_compare_exchange_weak_explicit(VAL(s), &v, next, memory_order_seq_cst,
                                                  memory_order_relaxed));
  if (v & SEM_SLEEPERS) carom__futex_wake(VAL(s), keep ? (int)n : INT_MAX);
  return 0;
}

unsigned carom_sem_value(const carom_sem_t *s) {
  return atomic_load_explicit(VAL(s), memory_order_relaxed) & SEM_COUNT;
}
