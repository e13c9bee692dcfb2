/* carom/queue.h — Queue, JoinableQueue and SimpleQueue (Python's
 * multiprocessing.Queue / JoinableQueue / SimpleQueue) for processes and
 * threads.
 *
 * Queue: a multi-producer multi-consumer FIFO of byte strings in shared
 * memory, built on the crash-safe MPMC ring (carom/ring.h). Each item is
 * copied into a fixed-size slot of `max_item` bytes: memory is
 * slots × (max_item + 16) bytes, allocated once. There is no feeder thread:
 * put() copies the item into shared memory before it returns, so an item is
 * either in the queue or its put returned an error; nothing is buffered in
 * the producer, nothing is lost when it exits, and exit never waits for a
 * reader. A process SIGKILLed inside put/get never blocks the others for more
 * than about CAROM_RING_POLL_MS, and no consumer ever sees a torn item (see
 * carom/ring.h for what is lost and how it is counted).
 *
 * A Queue is a shared-memory object holding no pointers: either let
 * carom_queue_create() map it (MAP_SHARED|MAP_ANONYMOUS, inherited by fork()ed
 * children at the same address), or place it yourself in any shared memory
 * of carom_queue_footprint() bytes with carom_queue_init() and find it in
 * other processes with carom_queue_attach().
 *
 * Python's names map as: put(block, timeout) -> carom_queue_put(deadline)
 * (block=False is a past deadline, or carom_queue_put_nowait); Full/Empty ->
 * CAROM_EFULL/CAROM_EEMPTY. Deadlines are absolute CLOCK_MONOTONIC times (NULL
 * waits forever, past tries once).
 *
 * Which calls may overlap: every Queue call with every other, from any thread
 * of any process, except init/destroy/free, which nothing may overlap.
 *
 * Memory ordering: a put happens-before the get that returns its item.
 */
#ifndef CAROM_QUEUE_H
#define CAROM_QUEUE_H

#include "carom/common.h"
#include "carom/ring.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- Queue --- */

typedef struct carom_queue carom_queue_t;

typedef struct carom_queue_opts {
  size_t size;     /* sizeof(carom_queue_opts_t) */
  size_t maxsize;  /* most items held at once; 0: bounded by capacity_bytes only */
  size_t max_item; /* largest item in bytes (default 64 KiB); larger puts fail
                      with CAROM_EMSGSIZE */
  size_t capacity_bytes; /* with maxsize 0: slot memory to allocate (default
                            16 MiB), at least one slot */
  int joinable;          /* nonzero: a JoinableQueue (task_done/join) */
} carom_queue_opts_t;

#define CAROM_QUEUE_DEFAULT_MAX_ITEM ((size_t)64 * 1024)
#define CAROM_QUEUE_DEFAULT_CAPACITY ((size_t)16 * 1024 * 1024)

/* Bytes a queue with these options needs (opts NULL: defaults), or 0 when the
 * options are invalid. */
CAROM_EXTERN size_t carom_queue_footprint(const carom_queue_opts_t *opts);
/* Initialise a queue in caller-owned shared memory (64-byte aligned, at least
 * carom_queue_footprint() bytes). 0 or -EINVAL. *out == mem. */
CAROM_EXTERN int carom_queue_init(void *mem, size_t mem_size, const carom_queue_opts_t *opts,
                                  carom_queue_t **out);
/* The queue initialised in mem (perhaps by another process), or NULL. */
CAROM_EXTERN carom_queue_t *carom_queue_attach(void *mem);
/* For init()ed queues: nothing to release (the caller owns the memory). */
CAROM_EXTERN void carom_queue_destroy(carom_queue_t *q);
/* Map a new queue in MAP_SHARED|MAP_ANONYMOUS memory (inherited over fork).
 * 0, -EINVAL, -ENOMEM. */
CAROM_EXTERN int carom_queue_create(const carom_queue_opts_t *opts, carom_queue_t **out);
/* Unmap a created queue in this process (accepts NULL). Never waits: unread
 * items are discarded with the memory once every process has unmapped it. */
CAROM_EXTERN void carom_queue_free(carom_queue_t *q);

/* Put a copy of len bytes. Blocks while full until the deadline.
 * 0; CAROM_EFULL still full at the deadline; CAROM_EMSGSIZE len > max_item
 * (nothing changes); CAROM_ECLOSED the queue is closed. */
CAROM_EXTERN int carom_queue_put(carom_queue_t *q, const void *data, size_t len,
                                 const struct timespec *deadline);
/* put without waiting for space: CAROM_EFULL when full. */
CAROM_EXTERN int carom_queue_put_nowait(carom_queue_t *q, const void *data, size_t len);
/* Take the oldest item into buf (capacity cap). Blocks while empty until the
 * deadline. Its length (>= 0); CAROM_EEMPTY still empty at the deadline;
 * CAROM_ECLOSED closed and drained; CAROM_ETOOSHORT the item is longer than
 * cap (it stays queued; carom_queue_max_item() bytes always suffice). */
CAROM_EXTERN ssize_t carom_queue_get(carom_queue_t *q, void *buf, size_t cap,
                                     const struct timespec *deadline);
/* get without waiting: CAROM_EEMPTY when empty. */
CAROM_EXTERN ssize_t carom_queue_get_nowait(carom_queue_t *q, void *buf, size_t cap);

/* Approximate number of items (Python's qsize; counts puts in progress). */
CAROM_EXTERN size_t carom_queue_qsize(const carom_queue_t *q);
CAROM_EXTERN bool carom_queue_empty(const carom_queue_t *q);
CAROM_EXTERN bool carom_queue_full(const carom_queue_t *q);
CAROM_EXTERN size_t carom_queue_maxsize(const carom_queue_t *q); /* slot count */
CAROM_EXTERN size_t carom_queue_max_item(const carom_queue_t *q);

/* Close the queue for every process: later puts fail with CAROM_ECLOSED, gets
 * return what is left and then CAROM_ECLOSED; sleepers wake at once. Unlike
 * Python's close() it never waits to flush anything (there is nothing
 * buffered). Idempotent. */
CAROM_EXTERN void carom_queue_close(carom_queue_t *q);
CAROM_EXTERN bool carom_queue_closed(const carom_queue_t *q);
/* Ring counters, including items lost to processes killed inside put/get. */
CAROM_EXTERN void carom_queue_stats(const carom_queue_t *q, carom_ring_stats_t *out);

/* ------------------------------------------------------- JoinableQueue ----
 * A queue created with opts.joinable. Each successful put adds one unfinished
 * task; task_done() removes one; join() waits until none is left.
 * Crash caveat: a task whose consumer was killed after taking it is never
 * done (as in Python); carom_queue_stats().lost_gets counts such items so a
 * supervisor can call task_done() for them. A producer killed in the two
 * instructions between counting its item and publishing it leaves one
 * unfinished task that can never be done. */

/* 0; CAROM_ETASKDONE called more often than items were put (Python's
 * ValueError); -EINVAL not a joinable queue. */
CAROM_EXTERN int carom_queue_task_done(carom_queue_t *q);
/* Wait until every put item has been task_done()'d. 0; -ETIMEDOUT; -EINVAL
 * not joinable. */
CAROM_EXTERN int carom_queue_join(carom_queue_t *q, const struct timespec *deadline);
/* Unfinished tasks (snapshot); 0 for a plain queue. */
CAROM_EXTERN size_t carom_queue_unfinished(const carom_queue_t *q);

/* --------------------------------------------------------- SimpleQueue ----
 * Python's SimpleQueue: a pipe carrying length-prefixed frames (a 64-bit
 * length, then the bytes), with a process-shared Lock for writers and one for
 * readers, so frames from different processes never interleave. A heap object
 * owning two fds (O_CLOEXEC) and a small shared page for its locks; fork()ed
 * children inherit it. Items up to max_item bytes.
 * Crash caveat: unlike Queue, a process killed mid-frame leaves the byte
 * stream desynchronised; the next process to take the lock finds the
 * previous owner dead and the queue reports CAROM_EPIPE from then on (never a
 * torn item). Not fork-safe while a call is in progress in another thread. */

typedef struct carom_simplequeue carom_simplequeue_t;

/* 0, -EINVAL (max_item 0), -ENOMEM, or a negated errno from pipe2/mmap. */
CAROM_EXTERN int carom_simplequeue_create(size_t max_item, carom_simplequeue_t **out);
/* Close this process's fds and unmap (accepts NULL). Never waits. */
CAROM_EXTERN void carom_simplequeue_free(carom_simplequeue_t *q);
/* Write one frame; blocks while the pipe is full. 0; CAROM_EMSGSIZE;
 * CAROM_ECLOSED after close() in this process; CAROM_EPIPE broken (see above,
 * or no reader left). */
CAROM_EXTERN int carom_simplequeue_put(carom_simplequeue_t *q, const void *data, size_t len);
/* Read one frame, blocking. Its length; CAROM_ETOOSHORT (the item stays and
 * the next get with a larger buffer returns it); CAROM_ECLOSED after close();
 * CAROM_EEOF every writer closed; CAROM_EPIPE broken. */
CAROM_EXTERN ssize_t carom_simplequeue_get(carom_simplequeue_t *q, void *buf, size_t cap);
/* True when no byte is waiting in the pipe (a snapshot). */
CAROM_EXTERN bool carom_simplequeue_empty(carom_simplequeue_t *q);
/* Close this process's ends (Python's SimpleQueue.close). Idempotent. */
CAROM_EXTERN void carom_simplequeue_close(carom_simplequeue_t *q);

#ifdef __cplusplus
}
#endif
#endif /* CAROM_QUEUE_H */
