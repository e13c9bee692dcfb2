/* carom/shm.h — shared memory: segments, a shared heap, Value/Array.
 *
 * Segments (Python's shared_memory.SharedMemory and the anonymous arenas of
 * multiprocessing.heap):
 *   - anonymous: a memfd (or MAP_SHARED|MAP_ANONYMOUS) mapping; processes
 *     forked after creation inherit it at the same address. Needs no /dev/shm.
 *   - named: a file in /dev/shm (the namespace shm_open uses, so Python's
 *     SharedMemory(name) sees carom's segments and vice versa) that unrelated
 *     processes attach to by name.
 * Space is reserved at creation (fallocate, or MADV_POPULATE_WRITE), so a full
 * /dev/shm or memory limit is an error from the create call (-ENOSPC/-ENOMEM),
 * never a SIGBUS on a later touch.
 *
 * Names and the resource tracker: a named segment created with
 * carom_shm_create() is registered with the tracker of the calling process's
 * family (a helper process started on the first registration; the family is
 * the process that started it and every process forked from it afterwards).
 * When every member of the family has exited (even by SIGKILL), the tracker
 * unlinks the names still registered and exits. carom_shm_unlink()
 * unregisters. Attaching never registers anything: only the creator's family
 * ever unlinks a name (cpython#82300 is the opposite behaviour). The tracker
 * unlinks a name only if it still denotes the file the creator made (same
 * inode), so a name re-created by someone else is never removed.
 *
 * Shared heap: carom_heap_create() reserves a large region of address space
 * (default CAROM_HEAP_DEFAULT_CAPACITY) backed by one shared mapping and
 * commits (populates) it lazily in chunks as the allocator's break grows. Any
 * process of the family (the creator and processes forked after the heap was
 * created) may allocate and free; a block allocated by one is usable by all at
 * the same address. Exhaustion of the reservation, or failure to commit more
 * memory, is -ENOMEM from carom_heap_alloc(), never corruption or SIGBUS.
 *
 * Value/Array (Python's multiprocessing.Value/Array/RawValue/RawArray) live in
 * a shared heap: a small header, an optional own RLock, and the data.
 */
#ifndef CAROM_SHM_H
#define CAROM_SHM_H

#include "carom/common.h"
#include "carom/sync.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================= segments ==== */

typedef struct carom_shm carom_shm_t; /* process-local handle (owns fd + mapping) */

/* Longest accepted segment name, without the optional leading '/'. */
#define CAROM_SHM_NAME_MAX 200

/* Flags for carom_shm_create(). */
enum {
  /* Do not register the name with the resource tracker: the caller alone is
   * responsible for carom_shm_unlink() (Python's track=False). */
  CAROM_SHM_UNTRACKED = 1u << 0,
};

/* Create an anonymous shared segment of `size` bytes (> 0), zero-filled,
 * with its memory reserved now. Processes forked afterwards inherit it at the
 * same address. Never touches /dev/shm. Free with carom_shm_close().
 * 0; -EINVAL size 0; -ENOMEM/-ENOSPC memory could not be reserved; other
 * negated errno from memfd_create/mmap. Thread-safe. Not async-signal-safe. */
CAROM_EXTERN int carom_shm_anon_create(size_t size, carom_shm_t **out);

/* Create the named segment `name` ("/name" or "name": 1..CAROM_SHM_NAME_MAX
 * characters, no other '/', not "." or "..") of `size` bytes, zero-filled and
 * fully reserved, and map it. The name appears only once the segment has its
 * full size (an attacher never sees a half-sized segment). Unless
 * CAROM_SHM_UNTRACKED, the name is registered with the family's tracker.
 * 0; -EEXIST the name exists; -EINVAL bad name, size 0 or unknown flags;
 * -ENOSPC the shm filesystem is too small (nothing is left behind);
 * -ENODEV there is no /dev/shm (no name namespace; anonymous segments and
 * heaps still work); -EACCES; other negated errno. Thread-safe. */
CAROM_EXTERN int carom_shm_create(const char *name, size_t size, unsigned flags,
                                  carom_shm_t **out);

/* Attach to an existing named segment. `size` 0 maps the whole segment;
 * otherwise the segment must be at least `size` bytes and only `size` bytes
 * are mapped. Attaching registers nothing: closing or exiting never unlinks.
 * 0; -ENOENT no such name; -EOVERFLOW the segment is smaller than `size`;
 * -EINVAL bad name; -ENODEV no /dev/shm; other negated errno. */
CAROM_EXTERN int carom_shm_attach(const char *name, size_t size, carom_shm_t **out);

/* Base address of the mapping in this process. */
CAROM_EXTERN void *carom_shm_addr(const carom_shm_t *s);
/* Mapped size in bytes. */
CAROM_EXTERN size_t carom_shm_size(const carom_shm_t *s);
/* The name without leading '/', or NULL for an anonymous segment. */
CAROM_EXTERN const char *carom_shm_name(const carom_shm_t *s);
/* The backing fd (memfd or /dev/shm file, O_CLOEXEC) for passing to another
 * process over a Unix socket, or -1 when the segment has none. Owned by s. */
CAROM_EXTERN int carom_shm_fd(const carom_shm_t *s);

/* Remove the name (Python's SharedMemory.unlink()); existing mappings stay
 * valid. If this handle created the name, it is also unregistered from the
 * tracker. Only the creator should call this (ownership is explicit).
 * 0; -ENOENT already gone; -EINVAL anonymous segment. */
CAROM_EXTERN int carom_shm_unlink(carom_shm_t *s);
/* Remove a name without a handle (cleanup of a known leftover). 0, -ENOENT,
 * -EINVAL bad name, -ENODEV no /dev/shm. Does not touch any tracker. */
CAROM_EXTERN int carom_shm_unlink_name(const char *name);

/* Unmap and close this process's handle. Never unlinks. Accepts NULL.
 * Other processes' mappings (including forked children's) are unaffected. */
CAROM_EXTERN void carom_shm_close(carom_shm_t *s);

/* ========================================================== shared heap ==== */

typedef struct carom_heap carom_heap_t; /* lives in shared memory */

/* Address space reserved by a heap created with capacity 0. Only what is
 * allocated is ever committed. */
#define CAROM_HEAP_DEFAULT_CAPACITY ((size_t)1 << 30)
/* Every block is aligned to at least this. */
#define CAROM_HEAP_MIN_ALIGN 16

/* Create a heap reserving `capacity` bytes of address space (0: the default;
 * rounded up to pages; at least 64 KiB). The heap's state, including its
 * Lock, lives at the start of the region. Processes forked afterwards share
 * it. 0; -ENOMEM; other negated errno from memfd_create/mmap. */
CAROM_EXTERN int carom_heap_create(size_t capacity, carom_heap_t **out);
/* Unmap the heap in this process (other processes keep their mapping; the
 * memory is released when the last one unmaps or exits). Accepts NULL. */
CAROM_EXTERN void carom_heap_destroy(carom_heap_t *h);

/* The process-wide default heap used when a NULL heap is passed, created on
 * first use (like Python's multiprocessing.heap). A child forked before that
 * first use creates its own. 0 or the errors of carom_heap_create(). */
CAROM_EXTERN int carom_heap_default(carom_heap_t **out);

/* Allocate `size` bytes (> 0) aligned to `align` (0 means
 * CAROM_HEAP_MIN_ALIGN; otherwise a power of two, at most 4096; 64 gives a
 * cache line of its own start). Contents are unspecified. Blocks on the heap's
 * Lock. 0 and *out set; -EINVAL bad size/align; -ENOMEM the reservation is
 * exhausted or memory could not be committed; -ENOTRECOVERABLE the heap was
 * found damaged after an owner death and is fenced. Thread- and
 * process-safe. Not async-signal-safe. */
CAROM_EXTERN int carom_heap_alloc(carom_heap_t *h, size_t size, size_t align, void **out);
/* As carom_heap_alloc() with zero-filled contents. */
CAROM_EXTERN int carom_heap_calloc(carom_heap_t *h, size_t size, size_t align, void **out);
/* Free a block from carom_heap_alloc() of the same heap, by any process of
 * the family. 0; -EINVAL not a live block of this heap (double free, foreign
 * pointer: detected, nothing is changed); -ENOTRECOVERABLE fenced heap. */
CAROM_EXTERN int carom_heap_free(carom_heap_t *h, void *p);
/* Usable size of a live block (>= the size asked for), or 0 if p is not one. */
CAROM_EXTERN size_t carom_heap_block_size(carom_heap_t *h, void *p);

/* Offset of p from the heap base (stable in every process of the family and
 * meaningful to a process that maps the same heap elsewhere), and back. */
CAROM_EXTERN uint64_t carom_heap_offset(const carom_heap_t *h, const void *p);
CAROM_EXTERN void *carom_heap_ptr(const carom_heap_t *h, uint64_t off);

typedef struct carom_heap_stats {
  size_t capacity;    /* bytes reserved */
  size_t committed;   /* bytes populated so far */
  size_t brk;         /* bytes ever carved from the region (high-water mark) */
  size_t live_blocks; /* blocks allocated and not freed */
  size_t live_bytes;  /* their total block size, headers included */
  size_t free_bytes;  /* bytes in free blocks below brk */
  uint32_t repairs;   /* times the state was rebuilt after an owner death */
} carom_heap_stats_t;

/* Walk every block and check the heap's invariants (sizes, alignment,
 * links, no two adjacent free blocks, free lists == free blocks). Takes the
 * lock. 0 valid (and *st filled if non-NULL); -EINVAL damaged;
 * -ENOTRECOVERABLE fenced. */
CAROM_EXTERN int carom_heap_check(carom_heap_t *h, carom_heap_stats_t *st);

/* Convenience constructors: allocate a sync primitive in the heap (NULL:
 * the default heap) and initialise it, so that `carom_heap_new_lock(NULL,
 * &l)` before fork() gives a lock the children share, as `Lock()` does in
 * Python. Free with carom_heap_free(h, obj) (after the object's *_destroy,
 * which for these types does nothing). 0, or carom_heap_alloc()'s errors. */
CAROM_EXTERN int carom_heap_new_lock(carom_heap_t *h, carom_lock_t **out);
CAROM_EXTERN int carom_heap_new_rlock(carom_heap_t *h, carom_rlock_t **out);
/* Semaphore(value) / BoundedSemaphore(value) / tracked semaphore. */
CAROM_EXTERN int carom_heap_new_sem(carom_heap_t *h, unsigned value, carom_sem_t **out);
CAROM_EXTERN int carom_heap_new_bounded_sem(carom_heap_t *h, unsigned value, carom_sem_t **out);
CAROM_EXTERN int carom_heap_new_tsem(carom_heap_t *h, unsigned value, carom_tsem_t **out);
CAROM_EXTERN int carom_heap_new_event(carom_heap_t *h, carom_event_t **out);
/* Condition() with its own RLock, as Python's Condition(); bind to another
 * lock with carom_cond_init() on memory from carom_heap_alloc() instead. */
CAROM_EXTERN int carom_heap_new_cond(carom_heap_t *h, carom_cond_t **out);
/* Barrier(parties, action, timeout): see carom_barrier_init (-EINVAL for
 * parties == 0, nothing allocated). */
CAROM_EXTERN int carom_heap_new_barrier(carom_heap_t *h, unsigned parties,
                                        carom_barrier_action_fn action, void *arg,
                                        double timeout_s, carom_barrier_t **out);

/* ========================================================= Value/Array ==== */

/* Typecodes (Python's array module / billiard's typecode_to_type):
 *   'b' int8  'B' uint8  'h' int16  'H' uint16  'i' int32  'I' uint32
 *   'l' long  'L' unsigned long  'q' int64  'Q' uint64  'f' float  'd' double
 *   'c' char  'x' raw byte (no numeric meaning: only byte access) */

/* One type for both: a Value is an Array of length 1. Lives in a heap. */
typedef struct carom_shval carom_value_t;
typedef struct carom_shval carom_array_t;

typedef enum carom_value_lock {
  CAROM_VALUE_LOCK_OWN = 0,  /* a new RLock of its own (Python's lock=True) */
  CAROM_VALUE_LOCK_NONE,     /* no lock: as RawValue/RawArray (lock=False) */
  CAROM_VALUE_LOCK_GIVEN,    /* the carom_lock_t at opts.lock (lock=Lock()) */
  CAROM_VALUE_RLOCK_GIVEN,   /* the carom_rlock_t at opts.lock (lock=RLock()) */
} carom_value_lock_t;

typedef struct carom_value_opts {
  size_t size;             /* sizeof(carom_value_opts_t) */
  carom_heap_t *heap;      /* NULL: the default heap */
  carom_value_lock_t lock; /* which lock; default OWN */
  void *given;             /* the lock for *_GIVEN: must live in memory the
                              whole family maps at the same address (a heap
                              or an inherited anonymous segment) */
} carom_value_opts_t;

/* Create a synchronized Value of typecode `tc` initialised from *init (the
 * element's C type; NULL: zero). opts NULL: default heap, own RLock.
 * 0; -EINVAL bad typecode/opts; -ENOMEM heap exhausted. */
CAROM_EXTERN int carom_value_create(char tc, const void *init, const carom_value_opts_t *opts,
                                    carom_value_t **out);
/* A Value without a lock (Python's RawValue); heap NULL: default heap. */
CAROM_EXTERN int carom_rawvalue_create(char tc, const void *init, carom_heap_t *heap,
                                       carom_value_t **out);
/* A synchronized Array of n (> 0) elements, copied from init (n elements;
 * NULL: zeros). */
CAROM_EXTERN int carom_array_create(char tc, size_t n, const void *init,
                                    const carom_value_opts_t *opts, carom_array_t **out);
/* An Array without a lock (Python's RawArray). */
CAROM_EXTERN int carom_rawarray_create(char tc, size_t n, const void *init, carom_heap_t *heap,
                                       carom_array_t **out);
/* Free (any family process, once). Destroys an own lock. Accepts NULL. */
CAROM_EXTERN void carom_value_free(carom_value_t *v);
#define carom_array_free carom_value_free

CAROM_EXTERN char carom_value_typecode(const carom_value_t *v);
CAROM_EXTERN size_t carom_value_itemsize(const carom_value_t *v);
/* Number of elements (1 for a Value). */
CAROM_EXTERN size_t carom_array_len(const carom_array_t *a);
/* The raw data (Python's get_obj()): access it under the lock yourself. */
CAROM_EXTERN void *carom_value_ptr(carom_value_t *v);

/* The lock (Python's get_lock()): *kind is OWN/GIVEN (a carom_rlock_t for OWN
 * and RLOCK_GIVEN, a carom_lock_t for GIVEN) and *lock its address.
 * 0; -EINVAL the object has no lock (raw). */
CAROM_EXTERN int carom_value_get_lock(carom_value_t *v, carom_value_lock_t *kind, void **lock);
/* Acquire/release the object's lock, whatever its kind. Same codes as
 * carom_lock_acquire()/carom_lock_release() (-EOWNERDEAD: you hold the lock,
 * repair the data, then carom_value_consistent()); -EINVAL raw object. */
CAROM_EXTERN int carom_value_acquire(carom_value_t *v, const struct timespec *deadline);
CAROM_EXTERN int carom_value_release(carom_value_t *v);
CAROM_EXTERN int carom_value_consistent(carom_value_t *v);

/* Element copy in the element's C type (itemsize bytes). The plain forms
 * take the lock around the copy when there is one (blocking without bound);
 * the _locked forms assume the caller holds it (or there is none).
 * Indices may be negative (from the end, as in Python).
 * 0; -EINVAL index out of range. When the lock reports that a previous holder
 * died (-EOWNERDEAD), the operation is still done, the lock is marked
 * consistent, and -EOWNERDEAD is returned so the caller knows the data may
 * show a torn update; -ENOTRECOVERABLE: nothing done. */
CAROM_EXTERN int carom_value_get(carom_value_t *v, void *out);
CAROM_EXTERN int carom_value_set(carom_value_t *v, const void *in);
CAROM_EXTERN int carom_value_get_locked(carom_value_t *v, void *out);
CAROM_EXTERN int carom_value_set_locked(carom_value_t *v, const void *in);
CAROM_EXTERN int carom_array_get(carom_array_t *a, ptrdiff_t i, void *out);
CAROM_EXTERN int carom_array_set(carom_array_t *a, ptrdiff_t i, const void *in);
/* Slice [start, stop) (negative values count from the end; after that
 * 0 <= start <= stop <= len is required, else -EINVAL): copy stop-start
 * elements out of / into the array, under the lock. */
CAROM_EXTERN int carom_array_read(carom_array_t *a, ptrdiff_t start, ptrdiff_t stop, void *out);
CAROM_EXTERN int carom_array_write(carom_array_t *a, ptrdiff_t start, ptrdiff_t stop,
                                   const void *in);

/* Typed conversions for numeric typecodes: integer elements through int64_t
 * (uint64 values above INT64_MAX read as -EOVERFLOW), floating ones through
 * double. Setting a value the element type cannot hold: -EOVERFLOW, nothing
 * written. Wrong kind (get_i64 on 'd', anything on 'x'): -EINVAL. */
CAROM_EXTERN int carom_array_get_i64(carom_array_t *a, ptrdiff_t i, int64_t *out);
CAROM_EXTERN int carom_array_set_i64(carom_array_t *a, ptrdiff_t i, int64_t val);
CAROM_EXTERN int carom_array_get_f64(carom_array_t *a, ptrdiff_t i, double *out);
CAROM_EXTERN int carom_array_set_f64(carom_array_t *a, ptrdiff_t i, double val);
#define carom_value_get_i64(v, out) carom_array_get_i64((v), 0, (out))
#define carom_value_set_i64(v, val) carom_array_set_i64((v), 0, (val))
#define carom_value_get_f64(v, out) carom_array_get_f64((v), 0, (out))
#define carom_value_set_f64(v, val) carom_array_set_f64((v), 0, (val))

/* Lock-free operations on integer Values (b B h H i I l L q Q c), on element
 * 0, sequentially consistent, never taking the lock (they do not exclude a
 * holder of the lock either: use either the lock or these on a given value).
 * Arithmetic wraps modulo the element width; *old / *expected are the
 * element's value sign- or zero-extended to 64 bits. -EINVAL for f, d, x.
 * async-signal-safe. */
CAROM_EXTERN int carom_value_fetch_add(carom_value_t *v, int64_t delta, int64_t *old);
/* If the element equals *expected (compared in the element's width), store
 * desired and return 0; else store the current value in *expected and return
 * -EAGAIN. */
CAROM_EXTERN int carom_value_compare_exchange(carom_value_t *v, int64_t *expected,
                                              int64_t desired);
CAROM_EXTERN int carom_value_atomic_load(carom_value_t *v, int64_t *out);
CAROM_EXTERN int carom_value_atomic_store(carom_value_t *v, int64_t val);

#ifdef __cplusplus
}
#endif
#endif /* CAROM_SHM_H */
