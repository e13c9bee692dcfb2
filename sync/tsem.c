/* sync/tsem.c — tracked semaphore: a counting semaphore that records its
 * holders' pids in a fixed table so units held by a dead process come back
 * (USER-PAIN P18).
 *
 * All state sits under an internal lock word (`lock_`, with the Lock's
 * owner-death takeover). The table is the truth: value_ always equals
 * initial_ minus the units recorded in the slots. Each slot is (pid, units);
 * a slot with units == 0 is free (pid 0). Waiters sleep on `seq_`, which every
 * release and reclaim bumps; sleeps are capped at CAROM_OWNER_POLL_MS, and a
 * sleep that ends without a wake-up scans the table for dead holders.
 *
 * A process killed inside a critical section leaves the lock held and maybe
 * value_ out of step with the table; the next user gets -EOWNERDEAD from the
 * lock word, recomputes value_ from the table, frees the slots of dead
 * holders, and marks the lock consistent. A pid is judged by
 * carom__pid_alive(): a zombie holder counts as dead.
 */
#include "sync/internal.h"

#define TW(s, f) CAROM__WORD(&(s)->f)
#define TLD(s, f) atomic_load_explicit(TW(s, f), memory_order_relaxed)
#define TST(s, f, v) atomic_store_explicit(TW(s, f), (v), memory_order_relaxed)

int carom_tsem_init(carom_tsem_t *s, unsigned value) {
  if (value == 0 || value > CAROM_SEM_VALUE_MAX) return -EINVAL;
  atomic_init(TW(s, lock_), 0);
  atomic_init(TW(s, seq_), 0);
  atomic_init(TW(s, value_), value);
  s->initial_ = value;
  atomic_init(TW(s, waiters_), 0);
  s->pad_ = 0;
  for (int i = 0; i < CAROM_TSEM_SLOTS; i++) {
    s->slot_[i].pid = 0;
    s->slot_[i].units = 0;
  }
  return 0;
}

void carom_tsem_destroy(carom_tsem_t *s) { (void)s; }

/* Free the slots of dead holders and return their units (lock held).
 * Returns the number of units given back. */
static uint32_t reclaim_locked(carom_tsem_t *s) {
  uint32_t got = 0;
  for (int i = 0; i < CAROM_TSEM_SLOTS; i++) {
    pid_t p = s->slot_[i].pid;
    if (p != 0 && !carom__pid_alive(p)) {
      carom__warn("tracked semaphore %p: holder pid %d died holding %u unit(s); reclaimed",
                  (void *)s, (int)p, (unsigned)s->slot_[i].units);
      got += s->slot_[i].units;
      s->slot_[i].units = 0;
      s->slot_[i].pid = 0;
    }
  }
  if (got) {
    TST(s, value_, TLD(s, value_) + got);
    /* seq_cst pairs with the waiter's waiters_++ before its FUTEX_WAIT. */
    atomic_fetch_add_explicit(TW(s, seq_), 1, memory_order_seq_cst);
    if (atomic_load_explicit(TW(s, waiters_), memory_order_seq_cst))
      carom__futex_wake(TW(s, seq_), got > INT_MAX ? INT_MAX : (int)got);
  }
  return got;
}

static void tlock(carom_tsem_t *s) {
  int r = carom__lockword_acquire(TW(s, lock_), NULL, false);
  if (r == 0) return;
  if (r != -EOWNERDEAD) carom__die("tracked semaphore %p: internal lock: %d", (void *)s, r);
  /* Rebuild value_ from the table, which a dead process may have left
   * half-updated against value_ (never against itself: each slot update is
   * one field at a time, and units == 0 means free). */
  uint64_t held = 0;
  for (int i = 0; i < CAROM_TSEM_SLOTS; i++) {
    if (s->slot_[i].units == 0) s->slot_[i].pid = 0;
    held += s->slot_[i].units;
  }
  TST(s, value_, held >= s->initial_ ? 0 : (uint32_t)(s->initial_ - held));
  reclaim_locked(s);
  carom__lockword_consistent(TW(s, lock_));
}

static void tunlock(carom_tsem_t *s) { carom__lockword_release(TW(s, lock_)); }

/* Take a unit for this process if one is free and a slot is available
 * (lock held). */
static bool take_locked(carom_tsem_t *s, pid_t me) {
  if (TLD(s, value_) == 0) return false;
  int mine = -1, free_slot = -1;
  for (int i = 0; i < CAROM_TSEM_SLOTS; i++) {
    if (s->slot_[i].pid == me) {
      mine = i;
      break;
    }
    if (free_slot < 0 && s->slot_[i].pid == 0) free_slot = i;
  }
  if (mine < 0) {
    if (free_slot < 0) return false;
    mine = free_slot;
    /* pid first, then units: a death in between leaves a slot with 0 units,
     * which the recovery treats as free. */
    s->slot_[mine].pid = me;
  }
  s->slot_[mine].units++;
  TST(s, value_, TLD(s, value_) - 1);
  return true;
}

static int tsem_acquire(carom_tsem_t *s, const struct timespec *deadline, bool try_once) {
  const pid_t me = carom__self_pid();
  bool reclaimed = false;
  for (;;) {
    tlock(s);
    bool ok = take_locked(s, me);
    if (!ok && try_once && !reclaimed) {
      /* Polling users recover dead holders' units too. */
      reclaimed = true;
      ok = reclaim_locked(s) && take_locked(s, me);
    }
    uint32_t seq = TLD(s, seq_);
    tunlock(s);
    if (ok) return 0;
    if (try_once) return -EAGAIN;
    if (carom__deadline_passed(deadline)) return -ETIMEDOUT;
    atomic_fetch_add_explicit(TW(s, waiters_), 1, memory_order_seq_cst);
    struct timespec cap;
    int r = carom__futex_wait(TW(s, seq_), seq,
                              carom__deadline_cap(deadline, CAROM_OWNER_POLL_MS * 1000000ull, &cap));
    atomic_fetch_sub_explicit(TW(s, waiters_), 1, memory_order_relaxed);
    if (r == -ETIMEDOUT && TLD(s, seq_) == seq) {
      /* A poll interval passed with no release: maybe a holder died. */
      tlock(s);
      reclaim_locked(s);
      tunlock(s);
    }
  }
}

int carom_tsem_acquire(carom_tsem_t *s, const struct timespec *deadline) {
  return tsem_acquire(s, deadline, false);
}

int carom_tsem_tryacquire(carom_tsem_t *s) { return tsem_acquire(s, NULL, true); }

int carom_tsem_release(carom_tsem_t *s) {
  const pid_t me = carom__self_pid();
  tlock(s);
  int r = CAROM_EOVERRELEASE;
  for (int i = 0; i < CAROM_TSEM_SLOTS; i++) {
    if (s->slot_[i].pid == me && s->slot_[i].units > 0) {
      /* value_ first, then the slot: a death in between is repaired from the
       * table (the unit counts as still held, then reclaimed). */
      TST(s, value_, TLD(s, value_) + 1);
      if (--s->slot_[i].units == 0) s->slot_[i].pid = 0;
      r = 0;
      break;
    }
  }
  if (r == 0) {
    atomic_fetch_add_explicit(TW(s, seq_), 1, memory_order_seq_cst);
    if (atomic_load_explicit(TW(s, waiters_), memory_order_seq_cst))
      carom__futex_wake(TW(s, seq_), 1);
  }
  tunlock(s);
  return r;
}

int carom_tsem_reclaim(carom_tsem_t *s) {
  tlock(s);
  uint32_t got = reclaim_locked(s);
  tunlock(s);
  return (int)got;
}

unsigned carom_tsem_value(const carom_tsem_t *s) { return TLD(s, value_); }

unsigned carom_tsem_held(const carom_tsem_t *s) {
  const pid_t me = carom__self_pid();
  for (int i = 0; i < CAROM_TSEM_SLOTS; i++)
    if (((volatile const int32_t *)&s->slot_[i].pid)[0] == me)
      return ((volatile const uint32_t *)&s->slot_[i].units)[0];
  return 0;
}
