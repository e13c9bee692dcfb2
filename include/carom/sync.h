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

#ifdef __cplusplus
}
#endif
#endif /* CAROM_SYNC_H */
