/* sync/event.c — Event: one futex word, generation << 2 | SLEEPERS | SET.
 *
 * Invariants: SET and SLEEPERS are never both set (set() clears SLEEPERS as
 * it wakes everybody; a waiter only adds SLEEPERS to a clear word). The
 * generation changes only in set() on a clear -> set transition, so a waiter
 * that saw generation g and now sees another one knows the event was set
 * meanwhile, even if it is clear again.
 * Waiters sleep on the exact word they saw (with SLEEPERS), so any set() or
 * clear() between their check and their sleep makes FUTEX_WAIT return EAGAIN
 * and they re-check. Sleeps are capped at CAROM_OWNER_POLL_MS so a setter that
 * died between its CAS and its FUTEX_WAKE delays nobody longer than that.
 */
#include "sync/internal.h"

enum {
  EV_SET = 1u,
  EV_SLEEPERS = 2u,
  EV_GEN_ONE = 4u, /* one generation step */
  EV_SPIN = 100,
};

#define EW(e) CAROM__WORD(&(e)->word_)

int carom_event_init(carom_event_t *e) {
  atomic_init(EW(e), 0);
  return 0;
}

void carom_event_destroy(carom_event_t *e) { (void)e; }

void carom_event_set(carom_event_t *e) {
  uint32_t v = atomic_load_explicit(EW(e), memory_order_relaxed);
  uint32_t next;
  do {
    if (v & EV_SET) {
      /* Already set: still a release, so writes before this set() are
       * visible to whoever sees the flag. */
      atomic_thread_fence(memory_order_release);
      return;
    }
    next = ((v & ~(EV_SET | EV_SLEEPERS)) + EV_GEN_ONE) | EV_SET;
  } while (!atomic_compare_exchange_weak_explicit(EW(e), &v, next, memory_order_release,
                                                  memory_order_relaxed));
  if (v & EV_SLEEPERS) carom__futex_wake(EW(e), INT_MAX);
}

void carom_event_clear(carom_event_t *e) {
  uint32_t v = atomic_load_explicit(EW(e), memory_order_relaxed);
  while ((v & EV_SET) &&
         !atomic_compare_exchange_weak_explicit(EW(e), &v, v & ~EV_SET, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
}

bool carom_event_is_set(const carom_event_t *e) {
  return atomic_load_explicit(EW(e), memory_order_acquire) & EV_SET;
}

int carom_event_wait(carom_event_t *e, const struct timespec *deadline) {
  uint32_t v = atomic_load_explicit(EW(e), memory_order_acquire);
  if (v & EV_SET) return 0;
  if (carom__deadline_passed(deadline)) return -ETIMEDOUT;
  const uint32_t gen = v & ~(EV_SET | EV_SLEEPERS);
  /* Brief spin before announcing a sleeper: a set() within ~2 µs then needs
   * no FUTEX_WAKE and the waiter no sleep. */
  for (int i = 0; i < EV_SPIN; i++) {
    uint32_t now = atomic_load_explicit(EW(e), memory_order_acquire);
    if ((now & EV_SET) || (now & ~(EV_SET | EV_SLEEPERS)) != gen) return 0;
    carom__cpu_relax();
  }
  v = atomic_load_explicit(EW(e), memory_order_relaxed);
  for (;;) {
    if (!(v & EV_SLEEPERS)) {
      if (!atomic_compare_exchange_weak_explicit(EW(e), &v, v | EV_SLEEPERS,
                                                 memory_order_acquire, memory_order_acquire)) {
        if ((v & EV_SET) || (v & ~(EV_SET | EV_SLEEPERS)) != gen) return 0;
        continue;
      }
      v |= EV_SLEEPERS;
    }
    struct timespec cap;
    int r = carom__futex_wait(
        EW(e), v, carom__deadline_cap(deadline, CAROM_OWNER_POLL_MS * 1000000ull, &cap));
    v = atomic_load_explicit(EW(e), memory_order_acquire);
    if ((v & EV_SET) || (v & ~(EV_SET | EV_SLEEPERS)) != gen) return 0;
    if (r == -ETIMEDOUT && carom__deadline_passed(deadline)) return -ETIMEDOUT;
  }
}
