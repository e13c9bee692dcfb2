/* ipc/queue.c — Queue and JoinableQueue: a header line plus an MPMC ring in
 * one block of shared memory (offsets only).
 *
 * Layout: struct carom_queue (one cache line of settings, one line for the
 * JoinableQueue counter and its waiters), then the ring at ring_off.
 * Invariants: unfinished counts items put (counted before they are published,
 * see carom__ring_put_counted) minus task_done calls, and never goes below 0:
 * task_done decrements by CAS only from a positive value.
 */
#include "ipc/ring_internal.h"
#include "carom/queue.h"

#include <string.h>
#include <sys/mman.h>

#define QUEUE_MAGIC 0x3145554555514d52ull /* "RMQUEUE1" */

enum { Q_JOINABLE = 1u << 0, Q_MAPPED = 1u << 1 };

struct carom_queue {
  uint64_t magic;
  uint32_t flags;
  uint32_t pad;
  uint64_t max_item;
  uint64_t ring_off;
  uint64_t total_size; /* bytes of the mapping when created by carom_queue_create */
  char pad0[CAROM_CACHELINE - 5 * 8];
  _Atomic uint32_t unfinished;   /* futex: join() sleeps until it reads 0 */
  _Atomic uint32_t join_waiters; /* join() callers asleep or about to be */
  char pad1[CAROM_CACHELINE - 8];
};

_Static_assert(sizeof(struct carom_queue) == 2 * CAROM_CACHELINE, "queue header layout");

static inline carom_ring_t *ring_of(const carom_queue_t *q) {
  return (carom_ring_t *)((unsigned char *)q + q->ring_off);
}

/* Resolve options into slot count and slot size; false when invalid. */
static bool resolve(const carom_queue_opts_t *o, size_t *slots, size_t *item, bool *joinable) {
  carom_queue_opts_t d = {sizeof d, 0, 0, 0, 0};
  if (o) {
    if (o->size < sizeof d) return false;
    d = *o;
  }
  *item = d.max_item ? d.max_item : CAROM_QUEUE_DEFAULT_MAX_ITEM;
  *joinable = d.joinable != 0;
  if (d.maxsize) {
    *slots = d.maxsize;
  } else {
    size_t cap = d.capacity_bytes ? d.capacity_bytes : CAROM_QUEUE_DEFAULT_CAPACITY;
    size_t per = carom_ring_size(2, *item) - carom_ring_size(1, *item);
    if (per == 0) return false;
    *slots = cap / per ? cap / per : 1;
    if (*slots > CAROM_RING_MAX_SLOTS) *slots = CAROM_RING_MAX_SLOTS;
  }
  return carom_ring_size(*slots, *item) != 0;
}

size_t carom_queue_footprint(const carom_queue_opts_t *opts) {
  size_t slots, item;
  bool j;
  if (!resolve(opts, &slots, &item, &j)) return 0;
  size_t rs = carom_ring_size(slots, item);
  if (rs > SIZE_MAX - sizeof(struct carom_queue)) return 0;
  return sizeof(struct carom_queue) + rs;
}

static int init_at(void *mem, size_t mem_size, const carom_queue_opts_t *opts, uint32_t extra,
                   carom_queue_t **out) {
  size_t slots, item;
  bool joinable;
  size_t need = carom_queue_footprint(opts);
  if (!mem || !out || need == 0 || mem_size < need || ((uintptr_t)mem % CAROM_CACHELINE) != 0 ||
      !resolve(opts, &slots, &item, &joinable))
    return -EINVAL;
  carom_queue_t *q = mem;
  memset(q, 0, sizeof *q);
  q->flags = (joinable ? Q_JOINABLE : 0) | extra;
  q->max_item = item;
  q->ring_off = sizeof *q;
  q->total_size = need;
  atomic_init(&q->unfinished, 0);
  atomic_init(&q->join_waiters, 0);
  int rc = carom_ring_init((unsigned char *)q + q->ring_off, mem_size - q->ring_off,
                           CAROM_RING_MPMC, slots, item, NULL);
  if (rc) return rc;
  atomic_store_explicit((_Atomic uint64_t *)&q->magic, QUEUE_MAGIC, memory_order_release);
  *out = q;
  return 0;
}

int carom_queue_init(void *mem, size_t mem_size, const carom_queue_opts_t *opts,
                     carom_queue_t **out) {
  return init_at(mem, mem_size, opts, 0, out);
}

carom_queue_t *carom_queue_attach(void *mem) {
  carom_queue_t *q = mem;
  if (!q || ((uintptr_t)mem % CAROM_CACHELINE) != 0) return NULL;
  if (atomic_load_explicit((_Atomic uint64_t *)&q->magic, memory_order_acquire) != QUEUE_MAGIC)
    return NULL;
  if (q->ring_off != sizeof *q || !carom_ring_attach((unsigned char *)q + q->ring_off))
    return NULL;
  return q;
}

void carom_queue_destroy(carom_queue_t *q) { (void)q; }

int carom_queue_create(const carom_queue_opts_t *opts, carom_queue_t **out) {
  if (!out) return -EINVAL;
  size_t need = carom_queue_footprint(opts);
  if (need == 0) return -EINVAL;
  void *mem = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return errno == ENOMEM ? -ENOMEM : -errno;
  int rc = init_at(mem, need, opts, Q_MAPPED, out);
  if (rc) munmap(mem, need);
  return rc;
}

void carom_queue_free(carom_queue_t *q) {
  if (!q) return;
  if (q->flags & Q_MAPPED) munmap(q, q->total_size);
}

int carom_queue_put(carom_queue_t *q, const void *data, size_t len,
                    const struct timespec *deadline) {
  if (len > q->max_item) return CAROM_EMSGSIZE;
  _Atomic uint32_t *count = (q->flags & Q_JOINABLE) ? &q->unfinished : NULL;
  int rc = carom__ring_put_counted(ring_of(q), data, len, deadline, false, count);
  return rc == -ETIMEDOUT ? CAROM_EFULL : rc;
}

int carom_queue_put_nowait(carom_queue_t *q, const void *data, size_t len) {
  if (len > q->max_item) return CAROM_EMSGSIZE;
  _Atomic uint32_t *count = (q->flags & Q_JOINABLE) ? &q->unfinished : NULL;
  int rc = carom__ring_put_counted(ring_of(q), data, len, NULL, true, count);
  return rc == -EAGAIN ? CAROM_EFULL : rc;
}

ssize_t carom_queue_get(carom_queue_t *q, void *buf, size_t cap, const struct timespec *deadline) {
  ssize_t rc = carom_ring_get(ring_of(q), buf, cap, deadline);
  return rc == -ETIMEDOUT ? CAROM_EEMPTY : rc;
}

ssize_t carom_queue_get_nowait(carom_queue_t *q, void *buf, size_t cap) {
  ssize_t rc = carom_ring_tryget(ring_of(q), buf, cap);
  return rc == -EAGAIN ? CAROM_EEMPTY : rc;
}

size_t carom_queue_qsize(const carom_queue_t *q) { return carom_ring_count(ring_of(q)); }
bool carom_queue_empty(const carom_queue_t *q) { return carom_queue_qsize(q) == 0; }
bool carom_queue_full(const carom_queue_t *q) {
  return carom_queue_qsize(q) >= carom_ring_capacity(ring_of(q));
}
size_t carom_queue_maxsize(const carom_queue_t *q) { return carom_ring_capacity(ring_of(q)); }
size_t carom_queue_max_item(const carom_queue_t *q) { return (size_t)q->max_item; }

void carom_queue_close(carom_queue_t *q) { carom_ring_close(ring_of(q)); }
bool carom_queue_closed(const carom_queue_t *q) { return carom_ring_closed(ring_of(q)); }
void carom_queue_stats(const carom_queue_t *q, carom_ring_stats_t *out) {
  carom_ring_stats(ring_of(q), out);
}

/* ---- JoinableQueue ---- */

int carom_queue_task_done(carom_queue_t *q) {
  if (!(q->flags & Q_JOINABLE)) return -EINVAL;
  uint32_t v = atomic_load_explicit(&q->unfinished, memory_order_relaxed);
  do {
    if (v == 0) return CAROM_ETASKDONE;
    /* release: the consumer's work on the task happens before a join() that
     * sees the count reach 0. */
  } while (!atomic_compare_exchange_weak_explicit(&q->unfinished, &v, v - 1,
                                                  memory_order_release, memory_order_relaxed));
  if (v == 1) {
    /* Orders the store of 0 before the load of join_waiters; pairs with the
     * fence in join() after its waiter increment. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&q->join_waiters, memory_order_relaxed))
      carom__futex_wake(&q->unfinished, INT_MAX);
  }
  return 0;
}

int carom_queue_join(carom_queue_t *q, const struct timespec *deadline) {
  if (!(q->flags & Q_JOINABLE)) return -EINVAL;
  for (;;) {
    /* acquire: pairs with task_done's release; the tasks' effects are seen. */
    uint32_t v = atomic_load_explicit(&q->unfinished, memory_order_acquire);
    if (v == 0) return 0;
    if (carom__deadline_passed(deadline)) return -ETIMEDOUT;
    atomic_fetch_add_explicit(&q->join_waiters, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    v = atomic_load_explicit(&q->unfinished, memory_order_acquire);
    int r = v ? carom__futex_wait(&q->unfinished, v, deadline) : 0;
    atomic_fetch_sub_explicit(&q->join_waiters, 1, memory_order_relaxed);
    if (r == -ETIMEDOUT && atomic_load_explicit(&q->unfinished, memory_order_acquire) != 0)
      return -ETIMEDOUT;
  }
}

size_t carom_queue_unfinished(const carom_queue_t *q) {
  return atomic_load_explicit((_Atomic uint32_t *)&q->unfinished, memory_order_relaxed);
}
