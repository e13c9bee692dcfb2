/* ipc/ring.c — SPSC and crash-safe MPMC rings of fixed-size slots in shared
 * memory (carom/ring.h).
 *
 * Memory layout (offsets from the ring's start, so any mapping address works):
 *   line 0  read-mostly: magic, kind, sizes, closed flag
 *   line 1  producers:  tail (next position to claim), SPSC head cache
 *   line 2  consumers:  head (next position to take), SPSC tail cache
 *   line 3  consumers sleep here: items_seq (futex), cons_waiting
 *   line 4  producers sleep here: space_seq (futex), prod_waiting
 *   line 5  recovery counters
 *   then `nslots` slots of `stride` bytes: {word, len, data[slot_size]}.
 * Positions are 64-bit counters that never wrap; position p lives in slot
 * p % nslots.
 *
 * MPMC slot word (64 bits): pos (40 bits, mod 2^40) | state (2) | pid (22).
 *   (p, FREE)            slot is free for the producer of position p
 *   (p, WRITING, pid)    producer pid claimed position p and is copying in
 *   (p, READY)           item p is published
 *   (p, READING, pid)    consumer pid claimed item p and is copying out
 *   -> (p + nslots, FREE) when the consumer finishes (or a dead claimant is
 *   recovered). Every transition is one CAS or one release store on the word,
 *   so a process killed at any instruction leaves the word in one of these
 *   states, naming itself when it holds the slot.
 * Invariants: tail and head only move forward, by CAS from p to p + 1, and
 * only after the slot of p has left state (p, FREE) (for tail) or (p, READY)
 * (for head); anyone who sees that may advance them ("helping"), so a process
 * killed between its slot CAS and its tail/head CAS stops nobody. A consumer
 * copies only out of a slot it moved READY -> READING, and READY is stored
 * only after the whole item was copied in: no torn item can be read. A slot
 * is recycled under a live claimant never: recovery needs the claimant's pid
 * to be dead, and the recovering CAS compares the whole word (pos, state,
 * pid), so it fails if anything moved meanwhile.
 * pos is kept mod 2^40: a participant preempted while 2^40 positions pass
 * could be confused (ABA); at 10^8 items/s that is three hours asleep inside
 * one put.
 *
 * Sleeping: a blocked side spins, then sets its *_waiting flag, issues a
 * full fence (a global membarrier: see publish_fence), reads the futex word, re-tries, and sleeps. The other side
 * publishes, fences (a compiler barrier once membarrier-registered), and only if the flag is set clears it,
 * bumps the futex word and wakes every sleeper: the two fences make it
 * impossible for both to miss each other (store-buffer / Dekker pattern), and
 * clearing the flag makes one sleep episode cost one FUTEX_WAKE. Sleeps are capped at
 * CAROM_RING_POLL_MS so a waiter behind a dead claimant gets to check it.
 */
#include "ipc/ring_internal.h"

#include <linux/membarrier.h>
#include <sched.h>
#include <string.h>

#define RING_MAGIC 0x31474e49524d4f52ull /* "ROMRING1" */

enum {
  ST_FREE = 0,
  ST_WRITING = 1,
  ST_READY = 2,
  ST_READING = 3,
};
enum {
  W_PID_BITS = 22,
  W_STATE_SHIFT = 22,
  W_POS_SHIFT = 24,
  W_POS_BITS = 40,
};
#define W_PID_MASK ((1u << W_PID_BITS) - 1)
#define W_POS_MASK ((1ull << W_POS_BITS) - 1)

/* A blocked side keeps trying for SPIN_NS before it sleeps, yielding its CPU
 * between tries after the first few µs. One sleep/wake-up costs 25-55 µs on
 * the reference machine (FLOORS.md), but on a loaded 2-CPU machine the other
 * side is often descheduled for longer than that, and a sleep then turns a
 * stream into a ping-pong of wake-ups: measured (bench queue.1to1.64B, load
 * ~5), a 50 µs budget gave 0.25 of the raw ring's throughput, 200 µs 0.42.
 * A side blocked for longer sleeps and costs nothing. The non-waiting calls
 * spin at most SPIN_TRIES behind a slot another process is finishing. */
enum { SPIN_TRIES = 400, SPIN_PAUSES = 1, SPIN_CLOCK_EVERY = 64 };
#define SPIN_NS 200000ull
#define POLL_NS ((uint64_t)CAROM_RING_POLL_MS * 1000000ull)
/* Internal: blocked behind a slot another process holds (not plain empty/full). */
#define E_HELD (-EINPROGRESS)

struct carom_ring {
  /* line 0: written at init (and once by close) */
  uint64_t magic;
  uint32_t kind;
  _Atomic uint32_t closed;
  uint64_t nslots;
  uint64_t mask; /* nslots - 1 when a power of two, else 0 */
  uint64_t slot_size;
  uint64_t stride;
  uint64_t slots_off;
  char pad0[CAROM_CACHELINE - 7 * 8];
  /* line 1: producers */
  _Atomic uint64_t tail;
  _Atomic uint64_t head_cache; /* SPSC: the producer's last view of head */
  char pad1[CAROM_CACHELINE - 16];
  /* line 2: consumers */
  _Atomic uint64_t head;
  _Atomic uint64_t tail_cache; /* SPSC: the consumer's last view of tail */
  char pad2[CAROM_CACHELINE - 16];
  /* line 3 */
  _Atomic uint32_t items_seq;
  _Atomic uint32_t cons_waiting; /* flag: a consumer may sleep on items_seq */
  char pad3[CAROM_CACHELINE - 8];
  /* line 4 */
  _Atomic uint32_t space_seq;
  _Atomic uint32_t prod_waiting; /* flag: a producer may sleep on space_seq */
  char pad4[CAROM_CACHELINE - 8];
  /* line 5 */
  _Atomic uint64_t lost_puts;
  _Atomic uint64_t lost_gets;
  char pad5[CAROM_CACHELINE - 16];
};

typedef struct {
  _Atomic uint64_t word; /* MPMC only */
  _Atomic uint64_t len;
  unsigned char data[];
} slot_t;

_Static_assert(sizeof(struct carom_ring) == 6 * CAROM_CACHELINE, "ring header layout");
_Static_assert(sizeof(slot_t) == 16, "slot header");

static inline uint64_t mkw(uint64_t pos, unsigned st, uint32_t pid) {
  return ((pos & W_POS_MASK) << W_POS_SHIFT) | ((uint64_t)st << W_STATE_SHIFT) | pid;
}
static inline uint64_t w_pos(uint64_t w) { return w >> W_POS_SHIFT; }
static inline unsigned w_state(uint64_t w) { return (unsigned)(w >> W_STATE_SHIFT) & 3u; }
static inline pid_t w_pid(uint64_t w) { return (pid_t)(w & W_PID_MASK); }
/* a - b for 40-bit positions, as a signed distance. */
static inline int64_t pdiff(uint64_t a, uint64_t b) {
  uint64_t d = (a - b) & W_POS_MASK;
  return (d & (1ull << (W_POS_BITS - 1))) ? (int64_t)d - (int64_t)(1ull << W_POS_BITS)
                                           : (int64_t)d;
}

static inline slot_t *slot_at(carom_ring_t *r, uint64_t pos) {
  uint64_t i = r->mask ? (pos & r->mask) : (pos % r->nslots);
  return (slot_t *)((unsigned char *)r + r->slots_off + i * r->stride);
}

/* ---- sizes, init ---- */

static size_t stride_of(size_t slot_size) {
  return (sizeof(slot_t) + slot_size + 15) & ~(size_t)15;
}

size_t carom_ring_size(size_t slots, size_t slot_size) {
  if (slots == 0 || slots > CAROM_RING_MAX_SLOTS || slot_size > CAROM_RING_MAX_SLOT_SIZE) return 0;
  size_t stride = stride_of(slot_size);
  if (stride > (SIZE_MAX - sizeof(struct carom_ring)) / slots) return 0;
  return sizeof(struct carom_ring) + slots * stride;
}

int carom_ring_init(void *mem, size_t mem_size, carom_ring_kind_t kind, size_t slots,
                    size_t slot_size, carom_ring_t **out) {
  size_t need = carom_ring_size(slots, slot_size);
  if (!mem || need == 0 || mem_size < need || ((uintptr_t)mem % CAROM_CACHELINE) != 0 ||
      (kind != CAROM_RING_SPSC && kind != CAROM_RING_MPMC))
    return -EINVAL;
  carom_ring_t *r = mem;
  memset(r, 0, sizeof *r);
  r->kind = (uint32_t)kind;
  r->nslots = slots;
  r->mask = (slots & (slots - 1)) == 0 ? slots - 1 : 0;
  r->slot_size = slot_size;
  r->stride = stride_of(slot_size);
  r->slots_off = sizeof *r;
  atomic_init(&r->closed, 0);
  atomic_init(&r->tail, 0);
  atomic_init(&r->head, 0);
  atomic_init(&r->head_cache, 0);
  atomic_init(&r->tail_cache, 0);
  atomic_init(&r->items_seq, 0);
  atomic_init(&r->space_seq, 0);
  atomic_init(&r->cons_waiting, 0);
  atomic_init(&r->prod_waiting, 0);
  atomic_init(&r->lost_puts, 0);
  atomic_init(&r->lost_gets, 0);
  for (uint64_t i = 0; i < slots; i++) {
    slot_t *s = slot_at(r, i);
    atomic_init(&s->word, mkw(i, ST_FREE, 0));
    atomic_init(&s->len, 0);
  }
  /* Publish the initialised ring to whoever attaches after checking magic. */
  atomic_store_explicit((_Atomic uint64_t *)&r->magic, RING_MAGIC, memory_order_release);
  if (out) *out = r;
  return 0;
}

void carom_ring_destroy(carom_ring_t *r) { (void)r; }

carom_ring_t *carom_ring_attach(void *mem) {
  carom_ring_t *r = mem;
  if (!r || ((uintptr_t)mem % CAROM_CACHELINE) != 0) return NULL;
  if (atomic_load_explicit((_Atomic uint64_t *)&r->magic, memory_order_acquire) != RING_MAGIC)
    return NULL;
  if ((r->kind != CAROM_RING_SPSC && r->kind != CAROM_RING_MPMC) || r->nslots == 0 ||
      r->stride != stride_of(r->slot_size) || r->slots_off != sizeof *r)
    return NULL;
  return r;
}

/* ---- asymmetric fence (membarrier) ----
 *
 * The wake check needs store->load ordering on the publishing side (publish,
 * then read the other side's waiting flag). A seq_cst fence there costs a
 * full barrier per item, which waits for the slot's cache line and dominates
 * a busy stream. Instead, a process registers once for
 * MEMBARRIER_CMD_GLOBAL_EXPEDITED and its publishers use a compiler barrier
 * only; a side about to sleep (slow path, ~0.4 µs here) issues the global
 * membarrier, which makes every running registered thread pass a full
 * barrier: the asymmetric form of the same store-buffer pairing (liburcu's
 * sys_membarrier scheme). Processes that cannot register keep the real fence;
 * a sleeper that cannot issue the membarrier caps its sleep at
 * MB_FALLBACK_NS instead, so a registered publisher is never missed for
 * longer than that. Registration is per process (carom__mb_register: a
 * fork()ed child registers again). */
#define MB_FALLBACK_NS 1000000ull

/* The publisher's half: order the preceding publish before the following
 * load of a waiting flag. */
static inline void publish_fence(void) {
  if (CAROM_LIKELY(carom__mb_registered(CAROM__MB_GLOBAL)) || carom__mb_register(CAROM__MB_GLOBAL))
    atomic_signal_fence(memory_order_seq_cst); /* compiler only; see above */
  else
    atomic_thread_fence(memory_order_seq_cst);
}

/* The sleeper's half, after setting its flag and before re-checking the ring.
 * false when the global membarrier is unavailable. */
static bool sleeper_fence(void) {
  atomic_thread_fence(memory_order_seq_cst);
  return syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0;
}

/* ---- wake-ups ---- */

/* After publishing (or freeing) a slot: wake the other side if it sleeps. */
static inline void wake_side(_Atomic uint32_t *seq, _Atomic uint32_t *waiting) {
  /* Orders the preceding publish (a store to a slot word or to tail/head)
   * before the load of *waiting; pairs with sleeper_fence() in wait_op()
   * after its store of the flag. Without it the store could sit in the store
   * buffer while we read waiting == 0 and the sleeper reads the old slot. */
  publish_fence();
  if (CAROM_LIKELY(atomic_load_explicit(waiting, memory_order_relaxed) == 0)) return;
  /* Clear the flag so the sleepers of this episode cost one wake, not one
   * per item until they run; each re-sets it before sleeping again. */
  if (!atomic_exchange_explicit(waiting, 0, memory_order_relaxed)) return;
  /* release: a sleeper that acquires the new seq value also sees the item. */
  atomic_fetch_add_explicit(seq, 1, memory_order_release);
  carom__futex_wake(seq, INT_MAX);
}

static inline void wake_consumers(carom_ring_t *r) { wake_side(&r->items_seq, &r->cons_waiting); }
static inline void wake_producers(carom_ring_t *r) { wake_side(&r->space_seq, &r->prod_waiting); }

static inline bool is_closed(const carom_ring_t *r) {
  return atomic_load_explicit((_Atomic uint32_t *)&r->closed, memory_order_acquire) != 0;
}

/* ---- SPSC ---- */

static int spsc_tryput(carom_ring_t *r, const void *data, size_t len, _Atomic uint32_t *count) {
  if (CAROM_UNLIKELY(is_closed(r))) return CAROM_ECLOSED;
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  uint64_t h = atomic_load_explicit(&r->head_cache, memory_order_relaxed);
  if (t - h >= r->nslots) {
    /* acquire: the consumer's copy out of the slot we are about to reuse
     * happened before its release store of head. */
    h = atomic_load_explicit(&r->head, memory_order_acquire);
    atomic_store_explicit(&r->head_cache, h, memory_order_relaxed);
    if (t - h >= r->nslots) return -EAGAIN;
  }
  slot_t *s = slot_at(r, t);
  atomic_store_explicit(&s->len, len, memory_order_relaxed);
  if (len) memcpy(s->data, data, len);
  if (count) atomic_fetch_add_explicit(count, 1, memory_order_relaxed);
  /* release: the item's bytes and len before the new tail. */
  atomic_store_explicit(&r->tail, t + 1, memory_order_release);
  wake_consumers(r);
  return 0;
}

static ssize_t spsc_tryget(carom_ring_t *r, void *buf, size_t cap) {
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  uint64_t t = atomic_load_explicit(&r->tail_cache, memory_order_relaxed);
  if (h == t) {
    /* acquire: pairs with the producer's release store of tail. */
    t = atomic_load_explicit(&r->tail, memory_order_acquire);
    atomic_store_explicit(&r->tail_cache, t, memory_order_relaxed);
    if (h == t) return is_closed(r) ? CAROM_ECLOSED : -EAGAIN;
  }
  slot_t *s = slot_at(r, h);
  size_t len = (size_t)atomic_load_explicit(&s->len, memory_order_relaxed);
  if (len > cap) return CAROM_ETOOSHORT;
  if (len) memcpy(buf, s->data, len);
  /* release: our copy out before the producer may reuse the slot. */
  atomic_store_explicit(&r->head, h + 1, memory_order_release);
  wake_producers(r);
  return (ssize_t)len;
}

/* ---- MPMC ---- */

/* Move tail (or head) from pos to pos + 1 if nobody has. Relaxed: the slot
 * words carry all the ordering; tail/head are only hints of where to look. */
static inline void help_advance(_Atomic uint64_t *ctr, uint64_t pos) {
  atomic_compare_exchange_strong_explicit(ctr, &pos, pos + 1, memory_order_relaxed,
                                          memory_order_relaxed);
}

static int mpmc_tryput(carom_ring_t *r, const void *data, size_t len, bool recover,
                       _Atomic uint32_t *count) {
  const uint32_t me = (uint32_t)carom__self_pid();
  const int64_t n = (int64_t)r->nslots;
  for (;;) {
    if (CAROM_UNLIKELY(is_closed(r))) return CAROM_ECLOSED;
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    slot_t *s = slot_at(r, pos);
    /* acquire: see the state the last owner of the slot left it in. */
    uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
    int64_t d = pdiff(w_pos(w), pos);
    if (d == 0 && w_state(w) == ST_FREE) {
      /* acquire on success: the previous consumer's copy out (ended by its
       * release store of FREE) happens before our copy in. */
      if (!atomic_compare_exchange_strong_explicit(&s->word, &w, mkw(pos, ST_WRITING, me),
                                                   memory_order_acquire, memory_order_relaxed))
        continue;
      help_advance(&r->tail, pos);
      atomic_store_explicit(&s->len, len, memory_order_relaxed);
      if (len) memcpy(s->data, data, len);
      if (count) atomic_fetch_add_explicit(count, 1, memory_order_relaxed);
      /* release: the item's bytes and len before READY. */
      atomic_store_explicit(&s->word, mkw(pos, ST_READY, 0), memory_order_release);
      wake_consumers(r);
      return 0;
    }
    if (d >= 0) { /* position pos is taken already: tail is stale */
      help_advance(&r->tail, pos);
      continue;
    }
    if (d != -n) continue; /* tail moved under us; look again */
    /* The slot still holds position pos - n: the ring is full. */
    unsigned st = w_state(w);
    if (st == ST_READY) return -EAGAIN;
    if (!recover) return E_HELD;
    pid_t owner = w_pid(w);
    if (carom__pid_alive(owner)) return E_HELD;
    /* The claimant of pos - n died. Recycle its slot for pos. */
    if (atomic_compare_exchange_strong_explicit(&s->word, &w, mkw(pos, ST_FREE, 0),
                                                memory_order_acquire, memory_order_relaxed)) {
      atomic_fetch_add_explicit(st == ST_WRITING ? &r->lost_puts : &r->lost_gets, 1,
                                memory_order_relaxed);
      carom__warn("ring %p: pid %d died %s slot of position %llu; slot recycled", (void *)r,
                  (int)owner, st == ST_WRITING ? "writing" : "reading",
                  (unsigned long long)(pos - (uint64_t)n));
      /* A consumer may be sleeping at head == pos - n behind this slot. */
      atomic_fetch_add_explicit(&r->items_seq, 1, memory_order_release);
      carom__futex_wake(&r->items_seq, INT_MAX);
    }
  }
}

static ssize_t mpmc_tryget(carom_ring_t *r, void *buf, size_t cap, bool recover) {
  const uint32_t me = (uint32_t)carom__self_pid();
  const uint64_t n = r->nslots;
  for (;;) {
    uint64_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    slot_t *s = slot_at(r, pos);
    /* acquire: pairs with the producer's release store of READY. */
    uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
    int64_t d = pdiff(w_pos(w), pos);
    if (d > 0) { /* item pos is gone already: head is stale */
      help_advance(&r->head, pos);
      continue;
    }
    if (d < 0) /* the slot still holds an earlier lap: nothing at pos yet */
      return is_closed(r) ? CAROM_ECLOSED : -EAGAIN;
    switch (w_state(w)) {
    case ST_READY: {
      /* acquire: the len load happens before the word re-check below. */
      size_t len = (size_t)atomic_load_explicit(&s->len, memory_order_acquire);
      if (len > cap) {
        if (atomic_load_explicit(&s->word, memory_order_relaxed) == w) return CAROM_ETOOSHORT;
        continue;
      }
      if (!atomic_compare_exchange_strong_explicit(&s->word, &w, mkw(pos, ST_READING, me),
                                                   memory_order_acquire, memory_order_relaxed))
        continue;
      help_advance(&r->head, pos);
      if (len) memcpy(buf, s->data, len);
      /* release: our copy out before the next producer's copy in. */
      atomic_store_explicit(&s->word, mkw(pos + n, ST_FREE, 0), memory_order_release);
      wake_producers(r);
      return (ssize_t)len;
    }
    case ST_READING:
      help_advance(&r->head, pos);
      continue;
    case ST_WRITING: {
      if (!recover) return E_HELD;
      pid_t owner = w_pid(w);
      if (carom__pid_alive(owner)) return E_HELD;
      /* The producer of pos died before publishing: skip the hole. */
      if (atomic_compare_exchange_strong_explicit(&s->word, &w, mkw(pos + n, ST_FREE, 0),
                                                  memory_order_acq_rel, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&r->lost_puts, 1, memory_order_relaxed);
        carom__warn("ring %p: producer pid %d died writing position %llu; skipped", (void *)r,
                    (int)owner, (unsigned long long)pos);
        help_advance(&r->head, pos);
        wake_producers(r);
      }
      continue;
    }
    default: /* ST_FREE at pos: no producer has claimed pos */
      return is_closed(r) ? CAROM_ECLOSED : -EAGAIN;
    }
  }
}

/* ---- blocking ---- */

typedef struct {
  const void *src;
  void *dst;
  size_t len; /* put: item length; get: buffer capacity */
  _Atomic uint32_t *count;
} op_t;

static ssize_t try_op(carom_ring_t *r, bool put, const op_t *op, bool recover) {
  if (r->kind == CAROM_RING_SPSC)
    return put ? spsc_tryput(r, op->src, op->len, op->count) : spsc_tryget(r, op->dst, op->len);
  return put ? mpmc_tryput(r, op->src, op->len, recover, op->count)
             : mpmc_tryget(r, op->dst, op->len, recover);
}

static inline bool blocked(ssize_t rc) { return rc == -EAGAIN || rc == E_HELD; }

/* One non-waiting attempt: behind a slot another process holds, spin briefly
 * (it is probably mid-copy), then check whether its holder is alive. */
static ssize_t try_once(carom_ring_t *r, bool put, const op_t *op) {
  ssize_t rc = try_op(r, put, op, false);
  for (int i = 0; rc == E_HELD && i < SPIN_TRIES; i++) {
    for (int k = 0; k < SPIN_PAUSES; k++) carom__cpu_relax();
    rc = try_op(r, put, op, false);
  }
  if (rc == E_HELD) rc = try_op(r, put, op, true);
  return rc == E_HELD ? -EAGAIN : rc;
}

static ssize_t wait_op(carom_ring_t *r, bool put, const op_t *op, const struct timespec *deadline) {
  ssize_t rc = try_op(r, put, op, false);
  if (CAROM_LIKELY(!blocked(rc))) return rc;
  if (carom__deadline_passed(deadline)) {
    rc = try_once(r, put, op);
    return rc == -EAGAIN ? -ETIMEDOUT : rc;
  }
  uint64_t spin_end = 0;
  for (unsigned i = 1;; i++) {
    carom__cpu_relax();
    rc = try_op(r, put, op, false);
    if (!blocked(rc)) return rc;
    if (i % SPIN_CLOCK_EVERY == 0) {
      uint64_t now = carom_now_ns();
      if (!spin_end) spin_end = now + SPIN_NS;
      if (now >= spin_end || (deadline && now >= carom__ts_ns(deadline))) break;
      /* On a busy machine the other side may be waiting for our CPU:
       * offer it (cheaper than sleeping and being woken). */
      if (i >= 8 * SPIN_CLOCK_EVERY) sched_yield();
    }
  }
  _Atomic uint32_t *seq = put ? &r->space_seq : &r->items_seq;
  _Atomic uint32_t *waiting = put ? &r->prod_waiting : &r->cons_waiting;
  const uint64_t start = carom_now_ns();
  bool recover = false;
  for (;;) {
    atomic_store_explicit(waiting, 1, memory_order_relaxed);
    /* Orders the waiting flag's store before the re-try's loads of the ring;
     * pairs with publish_fence() in wake_side(). */
    bool fenced = sleeper_fence();
    /* acquire: pairs with the release increment in wake_side()/close. */
    uint32_t s = atomic_load_explicit(seq, memory_order_acquire);
    rc = try_op(r, put, op, recover);
    /* The flag stays set when we leave: other sleepers may rely on it; the
     * cost is at most one needless wake. */
    if (!blocked(rc)) return rc;
    if (carom__deadline_passed(deadline)) {
      if (rc == E_HELD && !recover) rc = try_op(r, put, op, true);
      return blocked(rc) ? -ETIMEDOUT : rc;
    }
    struct timespec cap;
    carom__futex_wait(seq, s, carom__deadline_cap(deadline, fenced ? POLL_NS : MB_FALLBACK_NS, &cap));
    /* After a poll interval of being blocked, check claimants' liveness on
     * every further try (only slow paths reach this). */
    if (!recover && carom_now_ns() - start >= POLL_NS) recover = true;
  }
}

/* ---- public ---- */

int carom__ring_put_counted(carom_ring_t *r, const void *data, size_t len,
                            const struct timespec *deadline, bool try_only,
                            _Atomic uint32_t *count) {
  if (len > r->slot_size) return CAROM_EMSGSIZE;
  op_t op = {.src = data, .dst = NULL, .len = len, .count = count};
  return (int)(try_only ? try_once(r, true, &op) : wait_op(r, true, &op, deadline));
}

int carom_ring_put(carom_ring_t *r, const void *data, size_t len, const struct timespec *deadline) {
  return carom__ring_put_counted(r, data, len, deadline, false, NULL);
}

int carom_ring_tryput(carom_ring_t *r, const void *data, size_t len) {
  return carom__ring_put_counted(r, data, len, NULL, true, NULL);
}

ssize_t carom_ring_get(carom_ring_t *r, void *buf, size_t cap, const struct timespec *deadline) {
  op_t op = {.src = NULL, .dst = buf, .len = cap, .count = NULL};
  return wait_op(r, false, &op, deadline);
}

ssize_t carom_ring_tryget(carom_ring_t *r, void *buf, size_t cap) {
  op_t op = {.src = NULL, .dst = buf, .len = cap, .count = NULL};
  return try_once(r, false, &op);
}

void carom_ring_close(carom_ring_t *r) {
  atomic_store_explicit(&r->closed, 1, memory_order_seq_cst);
  /* release: a sleeper that reads the new seq value also sees closed. */
  atomic_fetch_add_explicit(&r->items_seq, 1, memory_order_release);
  atomic_fetch_add_explicit(&r->space_seq, 1, memory_order_release);
  carom__futex_wake(&r->items_seq, INT_MAX);
  carom__futex_wake(&r->space_seq, INT_MAX);
}

bool carom_ring_closed(const carom_ring_t *r) { return is_closed(r); }

size_t carom_ring_count(const carom_ring_t *r) {
  carom_ring_t *m = (carom_ring_t *)r;
  uint64_t h = atomic_load_explicit(&m->head, memory_order_relaxed);
  uint64_t t = atomic_load_explicit(&m->tail, memory_order_relaxed);
  if (t <= h) return 0;
  return (size_t)(t - h > r->nslots ? r->nslots : t - h);
}

size_t carom_ring_capacity(const carom_ring_t *r) { return (size_t)r->nslots; }
size_t carom_ring_slot_size(const carom_ring_t *r) { return (size_t)r->slot_size; }
carom_ring_kind_t carom_ring_kind(const carom_ring_t *r) { return (carom_ring_kind_t)r->kind; }

void carom_ring_stats(const carom_ring_t *r, carom_ring_stats_t *out) {
  carom_ring_t *m = (carom_ring_t *)r;
  uint64_t lp = atomic_load_explicit(&m->lost_puts, memory_order_relaxed);
  uint64_t lg = atomic_load_explicit(&m->lost_gets, memory_order_relaxed);
  uint64_t h = atomic_load_explicit(&m->head, memory_order_relaxed);
  uint64_t t = atomic_load_explicit(&m->tail, memory_order_relaxed);
  out->lost_puts = lp;
  out->lost_gets = lg;
  out->puts = t >= lp ? t - lp : 0;
  out->gets = h >= lp ? h - lp : 0;
}
