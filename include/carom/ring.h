/* carom/ring.h — lock-free rings of fixed-size slots in caller-owned memory.
 *
 * Two kinds share one API:
 *   CAROM_RING_SPSC  one producer and one consumer at a time (any processes or
 *                    threads, but the caller guarantees no two producers and
 *                    no two consumers run at once). Two cache-line-local
 *                    counters and one release store per item.
 *   CAROM_RING_MPMC  any number of producers and consumers in any processes
 *                    and threads, crash-safe: a participant SIGKILLed at any
 *                    instruction inside put/get never stops the others, and a
 *                    consumer never receives a torn item.
 *
 * Placement: the caller provides carom_ring_size(slots, slot_size) bytes of
 * memory aligned to 64 bytes (any MAP_SHARED mapping: anonymous and inherited
 * over fork, memfd, a named segment) and calls carom_ring_init() once, in one
 * process, before anyone else uses it. The ring holds offsets, never pointers:
 * every process may map it at a different address. Nothing needs freeing;
 * carom_ring_destroy() is provided for symmetry.
 *
 * Items are byte strings of 0..slot_size bytes, copied in by put and out by
 * get. Blocking calls spin briefly, then sleep on a futex; a side is woken
 * only when it sleeps (the fast path makes no syscall). Deadlines are absolute
 * CLOCK_MONOTONIC times (carom/common.h): NULL waits without bound, a past
 * deadline tries once.
 *
 * Memory ordering: put has release semantics and get acquire semantics for
 * the item: everything the producer wrote before put is visible to the
 * consumer after the get that returns that item. docs/ARCHITECTURE.md
 * ("ipc/: Queues and rings") lists every fence and what it orders.
 *
 * Crash behaviour. MPMC: every slot word records the pid of the process that
 * claimed it. A waiter blocked behind a slot claimed by a process that has
 * died (checked with a pidfd after CAROM_RING_POLL_MS of waiting) recycles the
 * slot: a dead producer's unpublished item is dropped (counted in
 * lost_puts — its put never returned success), a dead consumer's claimed item
 * is dropped (counted in lost_gets — the consumer may or may not have copied
 * it before dying). Every other item is delivered exactly once, in order per
 * producer. The death of a thread inside a live process is not detected (the
 * pid lives), nor is a process that exec()s inside put/get. SPSC: a producer
 * killed inside put leaves nothing visible (the item never commits); a
 * consumer killed inside get leaves the item in the ring, so its replacement
 * receives it again (at-least-once for that one item).
 *
 * Which calls may overlap (any processes/threads):
 *             | put           | get           | close/stats/count
 *   SPSC put  | no            | yes           | yes
 *   SPSC get  | yes           | no            | yes
 *   MPMC put  | yes           | yes           | yes
 *   MPMC get  | yes           | yes           | yes
 *   init      | no            | no            | no
 */
#ifndef CAROM_RING_H
#define CAROM_RING_H

#include "carom/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CAROM_RING_SPSC = 1, CAROM_RING_MPMC = 2 } carom_ring_kind_t;

/* How long a blocked MPMC waiter waits on one claimed slot before it checks
 * the claimant's liveness. A dead claimant is passed within about this long. */
#define CAROM_RING_POLL_MS 10

/* Largest slot count and slot size accepted by carom_ring_init. */
#define CAROM_RING_MAX_SLOTS (1u << 30)
#define CAROM_RING_MAX_SLOT_SIZE ((size_t)1 << 32)

/* A ring is the memory itself; the type is opaque. */
typedef struct carom_ring carom_ring_t;

/* puts and gets are derived from the ring's positions (no counter on the fast
 * path): exact once the ring is quiescent, approximate while it is busy. */
typedef struct carom_ring_stats_s {
  uint64_t puts;      /* items published (claimed slots minus lost_puts) */
  uint64_t gets;      /* items taken by consumers (including lost_gets) */
  uint64_t lost_puts; /* MPMC: claimed by a producer that died before publishing */
  uint64_t lost_gets; /* MPMC: claimed by a consumer that died before finishing */
} carom_ring_stats_t;

/* Bytes of memory a ring of `slots` slots of `slot_size` bytes needs, or 0
 * when the arguments are out of range (slots 1..CAROM_RING_MAX_SLOTS,
 * slot_size 0..CAROM_RING_MAX_SLOT_SIZE). Any slot count works; powers of two
 * index without a division. Thread-safe, async-signal-safe. */
CAROM_EXTERN size_t carom_ring_size(size_t slots, size_t slot_size);

/* Initialise `mem` (carom_ring_size() bytes, 64-byte aligned) as an empty
 * ring and store the handle (== mem) in *out. 0, or -EINVAL for bad sizes, a
 * bad kind, misaligned memory or mem_size too small. Not thread-safe against
 * any other use of the memory. */
CAROM_EXTERN int carom_ring_init(void *mem, size_t mem_size, carom_ring_kind_t kind, size_t slots,
                                 size_t slot_size, carom_ring_t **out);
/* Nothing to release; the caller frees the memory. No call may be running. */
CAROM_EXTERN void carom_ring_destroy(carom_ring_t *r);
/* The ring in `mem` (initialised elsewhere, perhaps by another process), or
 * NULL when mem does not hold a valid ring (ck_ring_valid). */
CAROM_EXTERN carom_ring_t *carom_ring_attach(void *mem);

/* Copy len bytes into the ring, waiting for space until the deadline.
 * 0 published; -ETIMEDOUT full until the deadline; CAROM_EMSGSIZE len exceeds
 * the slot size (checked first, nothing changes); CAROM_ECLOSED the ring was
 * closed. Release semantics for the item. */
CAROM_EXTERN int carom_ring_put(carom_ring_t *r, const void *data, size_t len,
                                const struct timespec *deadline);
/* As put, never waiting for space: -EAGAIN when full. It may spin for a few
 * microseconds behind a slot another process is still releasing. */
CAROM_EXTERN int carom_ring_tryput(carom_ring_t *r, const void *data, size_t len);

/* Copy the oldest item into buf (capacity cap), waiting until the deadline.
 * Returns its length (>= 0); -ETIMEDOUT empty until the deadline;
 * CAROM_ECLOSED closed and empty; CAROM_ETOOSHORT the next item is longer than
 * cap (it stays in the ring; carom_ring_slot_size() bounds every item).
 * Acquire semantics for the item. */
CAROM_EXTERN ssize_t carom_ring_get(carom_ring_t *r, void *buf, size_t cap,
                                    const struct timespec *deadline);
/* As get, never waiting for an item: -EAGAIN when empty. */
CAROM_EXTERN ssize_t carom_ring_tryget(carom_ring_t *r, void *buf, size_t cap);

/* Close: later puts fail with CAROM_ECLOSED; gets drain what is left, then
 * fail with CAROM_ECLOSED. Wakes every sleeper. Idempotent. A put racing with
 * close may still publish its item; it stays gettable. */
CAROM_EXTERN void carom_ring_close(carom_ring_t *r);
CAROM_EXTERN bool carom_ring_closed(const carom_ring_t *r);

/* Items in the ring, a snapshot (claimed-but-unfinished slots count). */
CAROM_EXTERN size_t carom_ring_count(const carom_ring_t *r);
CAROM_EXTERN size_t carom_ring_capacity(const carom_ring_t *r);
CAROM_EXTERN size_t carom_ring_slot_size(const carom_ring_t *r);
CAROM_EXTERN carom_ring_kind_t carom_ring_kind(const carom_ring_t *r);
/* Counters since init (snapshots, relaxed). */
CAROM_EXTERN void carom_ring_stats(const carom_ring_t *r, carom_ring_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif /* CAROM_RING_H */
