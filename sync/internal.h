/* sync/internal.h — private parts of sync/ shared between its files (never
 * installed). The lock word is shared by Lock and RLock; Condition and Barrier
 * use the word-level calls to release and re-acquire the lock they are bound to.
 */
#ifndef CAROM_SYNC_INTERNAL_H
#define CAROM_SYNC_INTERNAL_H

#include "base/internal.h"
#include "carom/sync.h"

/* Lock word layout: the owner's pid in the low bits, state bits on top.
 * PID_MAX_LIMIT is 2^22 on Linux, so a pid always fits the mask. */
enum {
  CAROM__LK_PID_MASK = 0x003fffffu,
  CAROM__LK_NOTRECOVERABLE = 1u << 29, /* permanent: released while inconsistent */
  CAROM__LK_INCONSISTENT = 1u << 30,   /* held after owner death, not yet repaired */
  CAROM__LK_WAITERS = 1u << 31,        /* somebody may sleep on the word */
};

#define CAROM__WORD(p) ((_Atomic uint32_t *)(p))

/* Acquire a lock word for the calling process. `try_once` never sleeps.
 * Returns 0, -EOWNERDEAD, -ENOTRECOVERABLE, -ETIMEDOUT, or -EAGAIN (try_once). */
int carom__lockword_acquire(_Atomic uint32_t *w, const struct timespec *deadline, bool try_once);
/* Release a held lock word. 0 or CAROM_ENOTLOCKED. */
int carom__lockword_release(_Atomic uint32_t *w);
/* Mark a lock word taken over from a dead owner (-EOWNERDEAD) consistent
 * again, so its release frees it instead of making it not recoverable.
 * The caller holds it. 0, or -EINVAL when it was not inconsistent. */
int carom__lockword_consistent(_Atomic uint32_t *w);

/* Condition support: release every recursion level of an RLock the caller
 * owns, returning the depth in *depth (CAROM_ENOTOWNER if not owned), and
 * take it back with that depth (codes of carom_rlock_acquire). */
int carom__rlock_release_all(carom_rlock_t *l, uint32_t *depth);
int carom__rlock_restore(carom_rlock_t *l, uint32_t depth, const struct timespec *deadline);

#endif
