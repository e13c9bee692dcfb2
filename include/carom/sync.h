/* carom/sync.h — process-shared synchronisation primitives on Linux futexes.
 *
 * Every type here is a plain fixed-size struct that works wherever it is placed
 * in MAP_SHARED memory (an anonymous mapping inherited over fork, a named
 * segment, carom's shared heap), used by any number of processes and threads at
 * once. The structs hold no pointers, so the same object may be mapped at
 * different addresses in different processes. Fields are private: use the
 * functions. Objects must be initialised once (by one process) with *_init
 * before use and must not be copied.
 *
 * Blocking calls take an absolute CLOCK_MONOTONIC deadline (see carom/common.h):
 * NULL blocks without bound, a past deadline tries once.
 *
 * Owner death (Lock, RLock): the futex word holds the owner's pid. A waiter
 * that has slept for CAROM_OWNER_POLL_MS without being woken checks whether the
 * owner process is still alive (pidfd; a zombie counts as dead); if not, it
 * takes the lock over and returns -EOWNERDEAD. The new owner repairs the state
 * the lock protects and calls carom_lock_consistent() before releasing; a lock
 * released while inconsistent becomes permanently unusable (-ENOTRECOVERABLE
 * for every later acquirer), as POSIX robust mutexes behave. If the recovering
 * owner dies too, the next acquirer gets -EOWNERDEAD again. Limits: the death
 * of a *thread* that holds a lock while its process lives on is not detected
 * (the pid is alive); a process that exec()s while holding a lock is still
 * alive and is not detected either.
 */
#ifndef CAROM_SYNC_H
#define CAROM_SYNC_H

#include "carom/common.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How often a sleeping waiter checks that a lock's owner still lives. The
 * worst case for noticing a dead owner is about this long after the death. */
#define CAROM_OWNER_POLL_MS 20

/* ---------------------------------------------------------------- Lock ----
 * A non-recursive mutex (Python's multiprocessing.Lock). Any thread of any
 * process may release it (as in Python), not only the acquirer.
 * Uncontended acquire+release is two atomic instructions, no syscall.
 * Memory ordering: acquire has acquire semantics, release has release
 * semantics; everything written before a release is visible after the next
 * acquire. */
typedef struct carom_lock {
  uint32_t word_; /* owner pid | state bits (private) */
} carom_lock_t;

#define CAROM_LOCK_INITIALIZER {0}

/* Initialise an unlocked lock. Always 0. Not thread-safe against users of l. */
CAROM_EXTERN int carom_lock_init(carom_lock_t *l);
/* Nothing to free; provided for symmetry. The lock must not be held. */
CAROM_EXTERN void carom_lock_destroy(carom_lock_t *l);
/* Acquire, blocking until the deadline (NULL: forever; past: try once).
 * 0 acquired; -ETIMEDOUT deadline passed; -EOWNERDEAD acquired, but the
 * previous owner died holding it (repair, then carom_lock_consistent());
 * -ENOTRECOVERABLE the lock was released while inconsistent. */
CAROM_EXTERN int carom_lock_acquire(carom_lock_t *l, const struct timespec *deadline);
/* Acquire without blocking: 0, -EAGAIN when held, or -EOWNERDEAD /
 * -ENOTRECOVERABLE as above. */
CAROM_EXTERN int carom_lock_tryacquire(carom_lock_t *l);
/* Release: 0, or CAROM_ENOTLOCKED when the lock is not held (Python's
 * "release unlocked lock"). Wakes one waiter only if one sleeps. */
CAROM_EXTERN int carom_lock_release(carom_lock_t *l);
/* After -EOWNERDEAD: mark the protected state repaired. 0, or -EINVAL when the
 * lock is not in the owner-died state. */
CAROM_EXTERN int carom_lock_consistent(carom_lock_t *l);
/* True while held (a snapshot). */
CAROM_EXTERN bool carom_lock_locked(const carom_lock_t *l);

/* --------------------------------------------------------------- RLock ----
 * A recursive mutex owned by one thread of one process (Python's RLock).
 * The owner may acquire it again; each acquire needs a release. Release by a
 * thread that does not own it fails with CAROM_ENOTOWNER. Owner death as for
 * Lock (the recursion count restarts at 1 for the new owner). */
typedef struct carom_rlock {
  uint32_t word_;  /* owner pid | state bits, as carom_lock_t (private) */
  int32_t owner_;  /* owner thread id (private) */
  uint32_t count_; /* recursion depth (private) */
  uint32_t pad_;
} carom_rlock_t;

CAROM_EXTERN int carom_rlock_init(carom_rlock_t *l);
CAROM_EXTERN void carom_rlock_destroy(carom_rlock_t *l);
/* 0, -ETIMEDOUT, -EOWNERDEAD, -ENOTRECOVERABLE as carom_lock_acquire;
 * -EOVERFLOW when the recursion count would overflow. */
CAROM_EXTERN int carom_rlock_acquire(carom_rlock_t *l, const struct timespec *deadline);
CAROM_EXTERN int carom_rlock_tryacquire(carom_rlock_t *l);
/* 0, or CAROM_ENOTOWNER when the caller does not own the lock. */
CAROM_EXTERN int carom_rlock_release(carom_rlock_t *l);
CAROM_EXTERN int carom_rlock_consistent(carom_rlock_t *l);
/* True when the calling thread owns the lock. */
CAROM_EXTERN bool carom_rlock_is_owned(const carom_rlock_t *l);
/* Recursion depth held by the calling thread (0 if it does not own it). */
CAROM_EXTERN unsigned carom_rlock_count(const carom_rlock_t *l);

/* ----------------------------------------------------------- Semaphore ----
 * A counting semaphore (Python's multiprocessing.Semaphore) and, initialised
 * with carom_sem_init_bounded(), a BoundedSemaphore whose release past the
 * initial value fails with CAROM_EOVERRELEASE (Python's ValueError).
 *
 * Design (musl's sem_*): a value word whose top bit says "somebody may sleep"
 * plus an advisory count of sleepers. Acquire is one CAS when a unit is free;
 * it spins briefly only while nobody sleeps, then sleeps on the word. Release
 * adds its units with one CAS and calls FUTEX_WAKE only when the sleep bit was
 * set. Memory ordering: release has release semantics, a successful acquire
 * has acquire semantics.
 *
 * Process death: a semaphore has no owner, so the units a process held when it
 * died are lost (Python's semaphores behave the same; see the tracked variant
 * below for one that reclaims them). A waiter that dies while asleep leaves
 * the advisory sleeper count one too high: later releases then make a
 * needless FUTEX_WAKE and acquirers skip the brief spin; nothing blocks.
 *
 * Which calls may overlap: all of them, from any thread of any process,
 * except init/destroy, which need the semaphore unused. */
typedef struct carom_sem {
  uint32_t value_;   /* units | SLEEPERS bit (private) */
  uint32_t waiters_; /* advisory count of sleepers (private) */
  uint32_t limit_;   /* BoundedSemaphore: the initial value; else the max (private) */
  uint32_t pad_;
} carom_sem_t;

/* Largest value a semaphore can hold (Python: no limit; POSIX SEM_VALUE_MAX). */
#define CAROM_SEM_VALUE_MAX 0x7fffffffu

/* Initialise with `value` units. 0, or -EINVAL when value > CAROM_SEM_VALUE_MAX. */
CAROM_EXTERN int carom_sem_init(carom_sem_t *s, unsigned value);
/* Initialise a BoundedSemaphore: the value may never exceed `value`. */
CAROM_EXTERN int carom_sem_init_bounded(carom_sem_t *s, unsigned value);
CAROM_EXTERN void carom_sem_destroy(carom_sem_t *s);
/* Take one unit, blocking until the deadline (NULL: forever; past: try once).
 * 0 or -ETIMEDOUT. */
CAROM_EXTERN int carom_sem_acquire(carom_sem_t *s, const struct timespec *deadline);
/* Take one unit without blocking: 0 or -EAGAIN. async-signal-safe. */
CAROM_EXTERN int carom_sem_tryacquire(carom_sem_t *s);
/* Return n >= 1 units (Python's release(n)) and wake up to n sleepers.
 * 0; CAROM_EOVERRELEASE when a BoundedSemaphore would exceed its initial
 * value (nothing is released); -EOVERFLOW past CAROM_SEM_VALUE_MAX; -EINVAL
 * when n == 0. async-signal-safe. */
CAROM_EXTERN int carom_sem_release(carom_sem_t *s, unsigned n);
/* Units available now (a snapshot; Python's get_value()). */
CAROM_EXTERN unsigned carom_sem_value(const carom_sem_t *s);

/* --------------------------------------------------- Tracked semaphore ----
 * A counting semaphore that records which processes hold its units, so units
 * held by a process that dies are given back (USER-PAIN P18). Holders are
 * kept in a fixed table of CAROM_TSEM_SLOTS (pid, units) entries; at most
 * that many processes can hold units at once (the next acquirer from another
 * process waits for a slot, as if no unit were free). Units belong to a
 * process, not a thread: any thread of a holding process may release them.
 *
 * Reclaiming: a waiter whose sleep ends without a wake-up (every
 * CAROM_OWNER_POLL_MS) scans the table for holders that are no longer alive
 * and returns their units; so do carom_tsem_tryacquire() and
 * carom_tsem_reclaim(). A unit held by a dead process thus comes back within
 * about CAROM_OWNER_POLL_MS of the death once somebody waits for it.
 * Slower than carom_sem_t (a small internal lock guards the table): use it
 * where a holder may be killed. A process killed while updating the table
 * holds the internal lock; the next user takes it over and rebuilds the free
 * count from the table, so no unit is lost or duplicated. */
#define CAROM_TSEM_SLOTS 30
typedef struct carom_tsem {
  uint32_t lock_;    /* internal lock word (private) */
  uint32_t seq_;     /* futex: bumped on every release/reclaim (private) */
  uint32_t value_;   /* free units (private) */
  uint32_t initial_; /* total units (private) */
  uint32_t waiters_; /* advisory sleepers (private) */
  uint32_t pad_;
  struct {
    int32_t pid;
    uint32_t units;
  } slot_[CAROM_TSEM_SLOTS]; /* holders (private) */
} carom_tsem_t;

/* Initialise with `value` units (1..CAROM_SEM_VALUE_MAX): 0 or -EINVAL. */
CAROM_EXTERN int carom_tsem_init(carom_tsem_t *s, unsigned value);
CAROM_EXTERN void carom_tsem_destroy(carom_tsem_t *s);
/* Take one unit for the calling process: 0 or -ETIMEDOUT (NULL: forever). */
CAROM_EXTERN int carom_tsem_acquire(carom_tsem_t *s, const struct timespec *deadline);
/* 0 or -EAGAIN. */
CAROM_EXTERN int carom_tsem_tryacquire(carom_tsem_t *s);
/* Give back one unit held by the calling process: 0, or CAROM_EOVERRELEASE
 * when this process holds none. */
CAROM_EXTERN int carom_tsem_release(carom_tsem_t *s);
/* Give back the units of dead holders now. Returns the number reclaimed. */
CAROM_EXTERN int carom_tsem_reclaim(carom_tsem_t *s);
/* Units free now (a snapshot). */
CAROM_EXTERN unsigned carom_tsem_value(const carom_tsem_t *s);
/* Units held by the calling process. */
CAROM_EXTERN unsigned carom_tsem_held(const carom_tsem_t *s);

/* --------------------------------------------------------------- Event ----
 * Python's Event: a flag that wait() blocks on until set.
 *
 * One futex word: bit 0 = set, bit 1 = "somebody may sleep", the bits above
 * a generation bumped by every set. A waiter spins briefly, then sleeps;
 * set() wakes all sleepers, and only when the sleep bit says someone sleeps. A waiter returns 0 once the event has
 * been set at any moment since it started waiting, even if another process
 * cleared it again before the waiter ran (the generation tells it), so a
 * set() followed at once by clear() wakes everybody who was waiting.
 * Memory ordering: set() has release semantics, a wait() or is_set() that
 * sees it has acquire semantics.
 *
 * Process death: there is no per-waiter state. A waiter killed while asleep
 * leaves at most the sleep bit, costing the next set() one needless wake. A
 * setter killed at any instruction either did not set the flag, or set it and
 * maybe died before its FUTEX_WAKE; sleepers re-check the word every
 * CAROM_OWNER_POLL_MS, so they still return within that bound.
 * All calls may overlap from any thread of any process. */
typedef struct carom_event {
  uint32_t word_; /* generation << 2 | SLEEPERS | SET (private) */
} carom_event_t;

/* Initialise cleared. Always 0. */
CAROM_EXTERN int carom_event_init(carom_event_t *e);
CAROM_EXTERN void carom_event_destroy(carom_event_t *e);
/* Set the flag and wake every waiter. async-signal-safe. */
CAROM_EXTERN void carom_event_set(carom_event_t *e);
/* Clear the flag. */
CAROM_EXTERN void carom_event_clear(carom_event_t *e);
CAROM_EXTERN bool carom_event_is_set(const carom_event_t *e);
/* Block until the flag is set or the deadline passes (NULL: forever; past:
 * just test). 0 when it is (or was, during the wait) set; -ETIMEDOUT when it
 * stayed clear until the deadline. Python's wait() returns True/False: 0 is
 * True. */
CAROM_EXTERN int carom_event_wait(carom_event_t *e, const struct timespec *deadline);

/* ----------------------------------------------------------- Condition ----
 * Python's Condition, bound at init to a Lock or an RLock (or to an RLock of
 * its own when given none, as Python's Condition() is).
 *
 * Binding: the condition stores the lock's address as a self-relative offset,
 * so the lock and the condition must live in the same mapping (typically the
 * same struct); then either may be mapped at any address in any process. Why
 * not take the lock per call: Python's API names the lock once, a caller can
 * then not pair the condition with a different lock by mistake, and
 * carom_cond_acquire()/release() can work through the condition.
 *
 * Design (USER-PAIN P21): a futex on a sequence counter plus an advisory
 * count of waiters, no per-waiter state. wait() reads the counter and counts
 * itself in while holding the lock, releases the lock (every recursion level
 * of an RLock), spins briefly and then sleeps until the counter moves,
 * re-acquires the lock and restores the recursion depth. notify(n) bumps the counter and wakes up to n
 * sleepers, but only if some waiter is counted. Waiters that had read the
 * counter and not yet gone to sleep also return: spurious wake-ups happen and
 * callers must re-check their predicate (use wait_for). No wake-up is lost:
 * a waiter registered before a notify either sleeps when the wake comes or
 * sees the counter moved and does not sleep. Wake-up order is not FIFO.
 *
 * Process death: a waiter killed at any point leaves the waiter count one too
 * high (notify then makes a needless FUTEX_WAKE). A notifier killed between
 * bumping the counter and waking leaves sleepers to notice the moved counter
 * by themselves within CAROM_OWNER_POLL_MS. Either dying while holding the
 * lock is the lock's owner-death case: the next acquirer, possibly a waiter
 * re-acquiring the lock in wait(), gets -EOWNERDEAD.
 *
 * All calls except wait/wait_for/notify need no lock; those three require the
 * calling process (Lock) or thread (RLock) to hold it, as Python does. */
typedef struct carom_cond {
  uint32_t seq_;      /* futex: bumped by every notify (private) */
  uint32_t waiters_;  /* advisory count of waiters (private) */
  uint32_t kind_;     /* Lock or RLock (private) */
  uint32_t pad_;
  int64_t lock_off_;  /* lock address - condition address (private) */
  carom_rlock_t own_; /* the lock when none is given (private) */
} carom_cond_t;

/* Bind to `lock`, which must be in the same mapping as c; NULL: use an RLock
 * inside the condition. Always 0. */
CAROM_EXTERN int carom_cond_init(carom_cond_t *c, carom_lock_t *lock);
/* Bind to an RLock in the same mapping. Always 0. */
CAROM_EXTERN int carom_cond_init_rlock(carom_cond_t *c, carom_rlock_t *lock);
CAROM_EXTERN void carom_cond_destroy(carom_cond_t *c);
/* Acquire / release the bound lock (codes of carom_lock_* / carom_rlock_*). */
CAROM_EXTERN int carom_cond_acquire(carom_cond_t *c, const struct timespec *deadline);
CAROM_EXTERN int carom_cond_release(carom_cond_t *c);
/* After -EOWNERDEAD from any call here: mark the bound lock consistent. */
CAROM_EXTERN int carom_cond_consistent(carom_cond_t *c);
/* Release the lock, wait for a notify or the deadline, re-acquire the lock.
 * The deadline bounds the wait, not the re-acquisition (as Python and
 * pthread_cond_timedwait). Returns with the lock held: 0 after a notify or a
 * spurious wake-up; -ETIMEDOUT at the deadline; -EOWNERDEAD when the lock's
 * previous owner died (the lock is held; repair, carom_cond_consistent()).
 * Not held on return: -ENOTRECOVERABLE; CAROM_ENOTOWNER when the caller did
 * not hold the lock (nothing waited). */
CAROM_EXTERN int carom_cond_wait(carom_cond_t *c, const struct timespec *deadline);
/* Predicate of wait_for: nonzero when the awaited state holds. Called with
 * the lock held. */
typedef int (*carom_cond_pred_fn)(void *arg);
/* Python's wait_for: evaluate pred(arg), wait while it is false. 0 when it
 * became true; -ETIMEDOUT when still false at the deadline; -EOWNERDEAD and the
 * other codes of carom_cond_wait as soon as a wait returns them. */
CAROM_EXTERN int carom_cond_wait_for(carom_cond_t *c, carom_cond_pred_fn pred, void *arg,
                                     const struct timespec *deadline);
/* Wake up to n waiters (n <= 0: none). 0, or CAROM_ENOTOWNER when the
 * caller does not hold the lock. Never blocks: one FUTEX_WAKE at most. */
CAROM_EXTERN int carom_cond_notify(carom_cond_t *c, int n);
CAROM_EXTERN int carom_cond_notify_all(carom_cond_t *c);

/* ------------------------------------------------------------- Barrier ----
 * Python's threading.Barrier(parties, action, timeout) across processes.
 *
 * wait() returns the party's arrival index in its round, 0..parties-1 (a
 * permutation of them each round). When the last party arrives the optional
 * action runs once, in that party's process, before anyone is released; the
 * action is a function pointer, valid only in processes that run the same
 * program image at the same addresses (forked from the process that called
 * init, without exec). It runs without the barrier's internal lock held.
 *
 * States (Python's filling/draining/resetting/broken): a round is filling
 * while parties arrive. It ends either complete (everyone gets an index) or
 * broken (everyone still waiting gets CAROM_EBROKEN). Rounds carry a
 * generation number, so a completed round drains without blocking the next
 * one: a waiter of an ended round learns its outcome from the generation, and
 * new arrivals start the next round at once. (Python's draining state waits
 * for every party of the old round to leave; a party killed there would wedge
 * the barrier for good.) Broken: abort(), a waiter whose deadline passes, an
 * action runner that died, or a process that died holding the internal lock
 * break the round in progress, and every wait() returns CAROM_EBROKEN until
 * reset(). reset() breaks the round in progress (its waiters get EBROKEN) and
 * makes the barrier usable again (Python's resetting state).
 *
 * Timeouts: the party whose own deadline expires breaks the barrier and gets
 * -ETIMEDOUT (Python raises BrokenBarrierError there; treat both alike for
 * Python's behaviour); the others get CAROM_EBROKEN. A party killed while
 * waiting keeps its place in the round, so the others break when their
 * deadlines expire; with no deadline and no default timeout they wait on.
 * Waiters poll every CAROM_OWNER_POLL_MS for a dead action runner or a dead
 * holder of the internal lock and break the barrier when they find one. */
typedef struct carom_barrier {
  uint32_t lock_;     /* internal lock word (private) */
  uint32_t seq_;      /* futex: bumped whenever a round ends (private) */
  uint32_t parties_;  /* (private) */
  uint32_t count_;    /* arrived in the current round (private) */
  uint32_t gen_;      /* generation of the current round (private) */
  uint32_t broken_;   /* broken until reset (private) */
  uint32_t waiters_;  /* advisory sleepers (private) */
  int32_t releaser_;  /* pid running the action, or 0 (private) */
  uint64_t outcome_;  /* bit g%64: round g ended broken (private) */
  uint64_t timeout_ns_; /* default timeout, 0: none (private) */
  uint64_t action_;   /* function pointer (private) */
  uint64_t arg_;      /* its argument (private) */
} carom_barrier_t;

typedef void (*carom_barrier_action_fn)(void *arg);

/* No default timeout. */
#define CAROM_NO_TIMEOUT (-1.0)

/* parties >= 1 (else -EINVAL); action may be NULL; timeout_s is the default
 * timeout in seconds for wait(NULL), CAROM_NO_TIMEOUT (any negative value, or
 * +inf) for none. 0 or -EINVAL. */
CAROM_EXTERN int carom_barrier_init(carom_barrier_t *b, unsigned parties,
                                    carom_barrier_action_fn action, void *arg, double timeout_s);
CAROM_EXTERN void carom_barrier_destroy(carom_barrier_t *b);
/* Wait for the round to fill. deadline NULL: the default timeout (or none).
 * Returns the arrival index (>= 0); CAROM_EBROKEN when the barrier is or
 * becomes broken or is reset while waiting; -ETIMEDOUT when this party's
 * deadline passed (the barrier is then broken for the others). A call made
 * while the action of a full round runs waits for the next round. */
CAROM_EXTERN int carom_barrier_wait(carom_barrier_t *b, const struct timespec *deadline);
/* Break the barrier: waiters and later wait() calls get CAROM_EBROKEN. */
CAROM_EXTERN void carom_barrier_abort(carom_barrier_t *b);
/* Break the current round (its waiters get CAROM_EBROKEN) and make the
 * barrier usable again. */
CAROM_EXTERN void carom_barrier_reset(carom_barrier_t *b);
/* Parties waiting in the current round (0 when broken). A snapshot. */
CAROM_EXTERN unsigned carom_barrier_n_waiting(const carom_barrier_t *b);
CAROM_EXTERN unsigned carom_barrier_parties(const carom_barrier_t *b);
CAROM_EXTERN bool carom_barrier_broken(const carom_barrier_t *b);

#ifdef __cplusplus
}
#endif
#endif /* CAROM_SYNC_H */
