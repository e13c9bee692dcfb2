/* shm/heap.c — a shared-memory allocator for arbitrary-size blocks.
 *
 * Region. One MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE mapping of
 * `capacity` bytes (no /dev/shm, no fd). The heap's state (struct carom_heap)
 * sits at its start; blocks follow. Every process forked after creation
 * inherits the mapping at the same address, so a block pointer is valid in all
 * of them; internally everything is an offset from the base. Memory is
 * committed lazily: when the break (`brk`, end of the carved area) must grow,
 * the pages up to the new break (rounded up to COMMIT_CHUNK) are populated
 * with MADV_POPULATE_WRITE, which returns ENOMEM instead of letting a later
 * touch fail. Reservation exhausted or population refused: -ENOMEM, nothing
 * changed.
 *
 * Blocks. Every block starts 16-aligned with a 16-byte header
 *   word 0: tag (bits 48..63: IN_USE or FREE) | size (bytes, header included,
 *           multiple of 16, >= MIN_BLOCK)
 *   word 1: size of the physically previous block (0 for the first)
 * and the payload follows the header, so payloads are 16-aligned; larger
 * alignments split off a leading free fragment. Free blocks keep next/prev
 * offsets of their bin's doubly linked list in the payload. Bins: exact
 * 16-byte classes up to 1 KiB, then one per power of two. Allocation is first
 * fit from the smallest bin that can hold the request, else carved at the
 * break; free coalesces with both neighbours. Invariants (checked by
 * carom_heap_check): blocks tile [START, brk) exactly; no two free blocks
 * are adjacent; the bins hold exactly the free blocks.
 *
 * Owner death. All mutations run under the heap's carom Lock and are ordered
 * so that the chain of block sizes (the "walk" from START to brk) is valid
 * after every single store: a split writes the new tail header inside the
 * free block before shrinking the block's size word; a merge grows a size
 * word in one store; the break is raised only after the new block's header
 * is written and its pages committed. The free lists, prev_size words and
 * counters may be torn by a death. So an acquirer that gets -EOWNERDEAD
 * rebuilds: it walks the blocks (validating every header), merges adjacent
 * free blocks, rewrites prev_size, refills the bins, recounts, and marks the
 * lock consistent. At most the one block the dead process was allocating or
 * freeing is lost (left marked in use). If the walk finds a damaged header
 * (memory scribbled by a bug, not a death), the heap is fenced: the lock is
 * released inconsistent, so every later call returns -ENOTRECOVERABLE instead
 * of handing out overlapping blocks.
 */
#include "shm/internal.h"

#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

enum {
  HDR = 16,
  MIN_BLOCK = 32,
  SMALL_MAX = 1024,
  NSMALL = SMALL_MAX / 16 + 1, /* index size/16, 2..64 used */
  NBINS = NSMALL + 40,
  COMMIT_CHUNK = 256 * 1024,
  MAX_ALIGN = 4096,
};

#define HEAP_MAGIC 0x6361726f6d686561ull /* "caromhea" */
#define TAG_SHIFT 48
#define TAG_USED 0xCA7Eull
#define TAG_FREE 0xF7EEull
#define SIZE_MASK ((1ull << TAG_SHIFT) - 1)

struct carom_heap {
  uint64_t magic;
  uint64_t capacity;
  carom_lock_t lock;
  uint32_t repairs;
  uint64_t brk;       /* offset of the end of the carved area */
  uint64_t committed; /* bytes populated from the base */
  uint64_t last;      /* offset of the last block, 0: none */
  uint64_t live_blocks;
  uint64_t live_bytes;
  uint64_t bins[NBINS]; /* offset of the first free block, 0: empty */
};

typedef struct {
  uint64_t word;      /* tag | size */
  uint64_t prev_size; /* size of the previous block */
  uint64_t next, prev; /* free blocks only: bin links */
} blk_t;

#define START (((sizeof(struct carom_heap) + 63) / 64) * 64)

static inline char *base(const carom_heap_t *h) { return (char *)h; }
static inline blk_t *B(const carom_heap_t *h, uint64_t off) { return (blk_t *)(base(h) + off); }
static inline uint64_t bsize(const blk_t *b) { return b->word & SIZE_MASK; }
static inline uint64_t btag(const blk_t *b) { return b->word >> TAG_SHIFT; }
static inline bool bfree(const blk_t *b) { return btag(b) == TAG_FREE; }
static inline uint64_t mk(uint64_t tag, uint64_t size) { return (tag << TAG_SHIFT) | size; }

/* Stores that make up the walk must not be reordered by the compiler past
 * each other. (Other processes only read under the lock, whose release
 * orders everything; this is about a process dying between two stores, where
 * program order is what the next owner sees.) */
#define ORDER() atomic_signal_fence(memory_order_seq_cst)

static unsigned bin_of(uint64_t size) {
  if (size <= SMALL_MAX) return (unsigned)(size / 16);
  unsigned lg = 63u - (unsigned)__builtin_clzll(size); /* >= 10 */
  unsigned i = NSMALL + (lg - 10);
  return i < NBINS ? i : NBINS - 1;
}

static void bin_insert(carom_heap_t *h, uint64_t off) {
  blk_t *b = B(h, off);
  unsigned i = bin_of(bsize(b));
  b->prev = 0;
  b->next = h->bins[i];
  if (b->next) B(h, b->next)->prev = off;
  h->bins[i] = off;
}

static void bin_remove(carom_heap_t *h, uint64_t off) {
  blk_t *b = B(h, off);
  if (b->prev) B(h, b->prev)->next = b->next;
  else h->bins[bin_of(bsize(b))] = b->next;
  if (b->next) B(h, b->next)->prev = b->prev;
}

/* Update the prev_size of the block after `off` (if any). */
static void fix_next_prev(carom_heap_t *h, uint64_t off) {
  uint64_t n = off + bsize(B(h, off));
  if (n < h->brk) B(h, n)->prev_size = bsize(B(h, off));
}

/* ------------------------------------------------------------ repair -- */

/* Walk [START, brk). With `rebuild`, also merge free runs, rewrite
 * prev_size, refill bins and counters. Returns 0 or -EINVAL (damaged). */
static int walk(carom_heap_t *h, bool rebuild, carom_heap_stats_t *st) {
  if (h->brk < START || h->brk > h->capacity || h->brk % 16 || h->committed < h->brk)
    return -EINVAL;
  if (rebuild) memset(h->bins, 0, sizeof h->bins);
  uint64_t off = START, prev = 0, live = 0, live_bytes = 0, free_bytes = 0, nfree = 0;
  uint64_t prev_off = 0;
  while (off < h->brk) {
    blk_t *b = B(h, off);
    uint64_t sz = bsize(b), tag = btag(b);
    if ((tag != TAG_USED && tag != TAG_FREE) || sz < MIN_BLOCK || sz % 16 || sz > h->brk - off)
      return -EINVAL;
    if (rebuild) {
      if (tag == TAG_FREE && prev_off && bfree(B(h, prev_off))) {
        /* Merge into the previous free block (one store keeps the walk valid). */
        blk_t *p = B(h, prev_off);
        p->word = mk(TAG_FREE, bsize(p) + sz);
        free_bytes += sz;
        off += sz;
        prev = bsize(p);
        continue;
      }
      b->prev_size = prev;
    } else {
      if (b->prev_size != prev) return -EINVAL;
      if (tag == TAG_FREE && prev_off && bfree(B(h, prev_off))) return -EINVAL;
    }
    if (tag == TAG_USED) {
      live++;
      live_bytes += sz;
    } else {
      free_bytes += sz;
      nfree++;
    }
    prev = sz;
    prev_off = off;
    off += sz;
  }
  if (off != h->brk) return -EINVAL;
  if (rebuild) h->last = prev_off;
  else if (h->last != prev_off) return -EINVAL;
  if (rebuild) {
    /* Second pass: bins (sizes are final now). */
    for (uint64_t o = START; o < h->brk; o += bsize(B(h, o)))
      if (bfree(B(h, o))) bin_insert(h, o);
    h->live_blocks = live;
    h->live_bytes = live_bytes;
  } else {
    /* The bins must hold exactly the free blocks, each in its own bin. */
    uint64_t listed = 0;
    for (unsigned i = 0; i < NBINS; i++) {
      uint64_t p = 0;
      for (uint64_t o = h->bins[i]; o; o = B(h, o)->next) {
        if (o < START || o >= h->brk || o % 16 || !bfree(B(h, o)) || bin_of(bsize(B(h, o))) != i ||
            B(h, o)->prev != p || ++listed > nfree)
          return -EINVAL;
        p = o;
      }
    }
    if (listed != nfree || live != h->live_blocks || live_bytes != h->live_bytes) return -EINVAL;
  }
  if (st) {
    st->capacity = h->capacity;
    st->committed = h->committed;
    st->brk = h->brk;
    st->live_blocks = live;
    st->live_bytes = live_bytes;
    st->free_bytes = free_bytes;
    st->repairs = h->repairs;
  }
  return 0;
}

static int heap_lock(carom_heap_t *h) {
  int r = carom_lock_acquire(&h->lock, NULL);
  if (r == 0) return 0;
  if (r == -EOWNERDEAD) {
    if (walk(h, true, NULL) == 0) {
      h->repairs++;
      carom__warn("heap %p: a process died inside the allocator; state rebuilt", (void *)h);
      carom_lock_consistent(&h->lock);
      return 0;
    }
    carom__warn("heap %p: damaged state found after an owner death; heap fenced", (void *)h);
    carom_lock_release(&h->lock); /* inconsistent: becomes NOTRECOVERABLE */
    return -ENOTRECOVERABLE;
  }
  return r; /* -ENOTRECOVERABLE */
}

static void heap_unlock(carom_heap_t *h) { carom_lock_release(&h->lock); }

/* ----------------------------------------------------------- create -- */

static int commit(carom_heap_t *h, uint64_t upto) {
  if (upto <= h->committed) return 0;
  uint64_t want = (upto + COMMIT_CHUNK - 1) / COMMIT_CHUNK * COMMIT_CHUNK;
  if (want > h->capacity) want = h->capacity;
  if (madvise(base(h) + h->committed, want - h->committed, MADV_POPULATE_WRITE) != 0) {
    int e = errno;
    if (e != EINVAL) return -ENOMEM; /* ENOMEM, EFAULT (would SIGBUS), EAGAIN... */
    /* Kernel before 5.14: touch the pages (no SIGBUS source exists for an
     * anonymous shared mapping; a shortage is the OOM killer's business). */
    for (uint64_t o = h->committed; o < want; o += 4096) ((volatile char *)base(h))[o] = 0;
  }
  ORDER();
  h->committed = want;
  return 0;
}

int carom_heap_create(size_t capacity, carom_heap_t **out) {
  if (capacity == 0) capacity = CAROM_HEAP_DEFAULT_CAPACITY;
  if (capacity < 65536) capacity = 65536;
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  if (capacity > SIZE_MASK) return -EINVAL;
  capacity = (capacity + pg - 1) / pg * pg;
  void *p = mmap(NULL, capacity, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return errno == ENOMEM ? -ENOMEM : -errno;
  carom_heap_t *h = p;
  h->capacity = capacity;
  h->committed = 0;
  if (madvise(p, pg, MADV_POPULATE_WRITE) != 0 && errno != EINVAL) {
    munmap(p, capacity);
    return -ENOMEM;
  }
  h->committed = pg;
  carom_lock_init(&h->lock);
  h->brk = START;
  h->magic = HEAP_MAGIC;
  *out = h;
  return 0;
}

void carom_heap_destroy(carom_heap_t *h) {
  if (h) munmap(h, h->capacity);
}

static pthread_mutex_t default_mu = PTHREAD_MUTEX_INITIALIZER;
static carom_heap_t *default_heap;

int carom_heap_default(carom_heap_t **out) {
  pthread_mutex_lock(&default_mu);
  int rc = 0;
  if (!default_heap) rc = carom_heap_create(0, &default_heap);
  if (rc == 0) *out = default_heap;
  pthread_mutex_unlock(&default_mu);
  return rc;
}

carom_lock_t *carom__heap_lock(carom_heap_t *h) { return &h->lock; }

/* ------------------------------------------------------------ alloc -- */

/* Make a free block of at least `size` bytes at the end of the heap: the
 * last block if free, grown by what is missing, else a new block at the
 * break. Returns its offset, or 0 with *err set (nothing changed). */
static uint64_t extend(carom_heap_t *h, uint64_t size, int *err) {
  uint64_t last = h->last;
  uint64_t have = (last && bfree(B(h, last))) ? bsize(B(h, last)) : 0;
  uint64_t grow = size - have;
  if (grow > h->capacity - h->brk) {
    *err = -ENOMEM;
    return 0;
  }
  int rc = commit(h, h->brk + grow);
  if (rc < 0) {
    *err = rc;
    return 0;
  }
  uint64_t off = h->brk;
  blk_t *b = B(h, off);
  b->prev_size = last ? bsize(B(h, last)) : 0;
  b->word = mk(TAG_FREE, grow);
  ORDER();
  h->brk = off + grow; /* the new block is now part of the walk */
  ORDER();
  if (have) {
    /* Two adjacent free blocks until this store; a rebuild would merge them. */
    bin_remove(h, last);
    B(h, last)->word = mk(TAG_FREE, have + grow);
    return last;
  }
  h->last = off;
  return off;
}

/* Offset of the last block before `off` if it is free and adjacent, else 0. */
static uint64_t prev_free(carom_heap_t *h, uint64_t off) {
  uint64_t ps = B(h, off)->prev_size;
  if (off == START || ps == 0 || ps > off - START) return 0;
  uint64_t p = off - ps;
  return (bfree(B(h, p)) && bsize(B(h, p)) == ps) ? p : 0;
}

static int heap_alloc_locked(carom_heap_t *h, size_t size, size_t align, void **out) {
  uint64_t need = ((uint64_t)size + HDR + 15) & ~15ull;
  if (need < MIN_BLOCK) need = MIN_BLOCK;
  /* Room for a leading fragment when the alignment exceeds 16. */
  uint64_t want = need + (align > 16 ? 2 * align : 0);

  uint64_t off = 0;
  for (unsigned i = bin_of(want); i < NBINS && !off; i++)
    for (uint64_t o = h->bins[i]; o; o = B(h, o)->next)
      if (bsize(B(h, o)) >= want) {
        off = o;
        break;
      }
  if (off) {
    bin_remove(h, off);
  } else {
    /* Carve at the break; a free last block contributes its space. */
    int err = 0;
    uint64_t n = extend(h, want, &err);
    if (!n) return err;
    off = n;
  }
  blk_t *b = B(h, off);
  uint64_t bs = bsize(b);
  uint64_t pay = ((off + HDR + align - 1) & ~((uint64_t)align - 1));
  uint64_t lead = pay - HDR - off;
  if (lead > 0 && lead < MIN_BLOCK) lead += align;
  uint64_t a_off = off + lead;
  uint64_t a_size = need;
  uint64_t tail = bs - lead - need;
  if (tail < MIN_BLOCK) {
    a_size += tail;
    tail = 0;
  }
  /* Ordered so the walk stays valid after each store (see the file comment). */
  if (tail) {
    blk_t *t = B(h, a_off + a_size);
    t->prev_size = a_size;
    t->word = mk(TAG_FREE, tail);
  }
  ORDER();
  blk_t *a = B(h, a_off);
  if (lead) {
    a->prev_size = lead;
    a->word = mk(TAG_USED, a_size);
    ORDER();
    b->word = mk(TAG_FREE, lead);
  } else {
    a->word = mk(TAG_USED, a_size);
  }
  ORDER();
  if (h->last == off) h->last = tail ? a_off + a_size : a_off;
  if (tail) {
    fix_next_prev(h, a_off + a_size);
    bin_insert(h, a_off + a_size);
  } else {
    fix_next_prev(h, a_off);
  }
  if (lead) {
    /* The leading fragment may touch a free block before it (a block taken
     * from the bins never does; one carved at the break may). */
    uint64_t p = prev_free(h, off);
    if (p) {
      bin_remove(h, p);
      B(h, p)->word = mk(TAG_FREE, bsize(B(h, p)) + lead);
      ORDER();
      fix_next_prev(h, p);
      bin_insert(h, p);
    } else {
      bin_insert(h, off);
    }
  }
  h->live_blocks++;
  h->live_bytes += a_size;
  *out = base(h) + a_off + HDR;
  return 0;
}

int carom_heap_alloc(carom_heap_t *h, size_t size, size_t align, void **out) {
  if (!h || !out) return -EINVAL;
  if (align == 0) align = CAROM_HEAP_MIN_ALIGN;
  if (align < CAROM_HEAP_MIN_ALIGN) align = CAROM_HEAP_MIN_ALIGN;
  if (size == 0 || (align & (align - 1)) || align > MAX_ALIGN) return -EINVAL;
  if (size > h->capacity) return -ENOMEM;
  int rc = heap_lock(h);
  if (rc < 0) return rc;
  rc = heap_alloc_locked(h, size, align, out);
  heap_unlock(h);
  return rc;
}

int carom_heap_calloc(carom_heap_t *h, size_t size, size_t align, void **out) {
  int rc = carom_heap_alloc(h, size, align, out);
  if (rc == 0) memset(*out, 0, size);
  return rc;
}

/* Header offset of a live block whose payload is p, or 0. Called locked. */
static uint64_t live_block(carom_heap_t *h, const void *p) {
  uintptr_t a = (uintptr_t)p, b0 = (uintptr_t)base(h);
  if (a < b0 + START + HDR || a >= b0 + h->brk || (a - b0) % 16) return 0;
  uint64_t off = (uint64_t)(a - b0) - HDR;
  blk_t *b = B(h, off);
  uint64_t sz = bsize(b);
  if (btag(b) != TAG_USED || sz < MIN_BLOCK || sz % 16 || sz > h->brk - off) return 0;
  return off;
}

int carom_heap_free(carom_heap_t *h, void *p) {
  if (!h || !p) return -EINVAL;
  int rc = heap_lock(h);
  if (rc < 0) return rc;
  uint64_t off = live_block(h, p);
  if (!off) {
    heap_unlock(h);
    return -EINVAL;
  }
  blk_t *b = B(h, off);
  uint64_t sz = bsize(b);
  b->word = mk(TAG_FREE, sz);
  ORDER();
  h->live_blocks--;
  h->live_bytes -= sz;
  uint64_t n = off + sz;
  if (n < h->brk && bfree(B(h, n))) {
    if (h->last == n) h->last = off;
    bin_remove(h, n);
    sz += bsize(B(h, n));
    b->word = mk(TAG_FREE, sz);
    ORDER();
  }
  uint64_t p0 = prev_free(h, off);
  if (p0) {
    bin_remove(h, p0);
    B(h, p0)->word = mk(TAG_FREE, bsize(B(h, p0)) + sz);
    ORDER();
    if (h->last == off) h->last = p0;
    off = p0;
  }
  fix_next_prev(h, off);
  bin_insert(h, off);
  heap_unlock(h);
  return 0;
}

size_t carom_heap_block_size(carom_heap_t *h, void *p) {
  if (!h || !p || heap_lock(h) < 0) return 0;
  uint64_t off = live_block(h, p);
  size_t n = off ? (size_t)(bsize(B(h, off)) - HDR) : 0;
  heap_unlock(h);
  return n;
}

uint64_t carom_heap_offset(const carom_heap_t *h, const void *p) {
  return (uint64_t)((const char *)p - (const char *)h);
}

void *carom_heap_ptr(const carom_heap_t *h, uint64_t off) { return base(h) + off; }

int carom_heap_check(carom_heap_t *h, carom_heap_stats_t *st) {
  if (!h || h->magic != HEAP_MAGIC) return -EINVAL;
  int rc = heap_lock(h);
  if (rc < 0) return rc;
  rc = walk(h, false, st);
  heap_unlock(h);
  return rc;
}

/* ------------------------------------------- sync objects in the heap -- */

static int heap_or_default(carom_heap_t **h) { return *h ? 0 : carom_heap_default(h); }

int carom_heap_new_lock(carom_heap_t *h, carom_lock_t **out) {
  int rc = heap_or_default(&h);
  void *p;
  if (rc == 0) rc = carom_heap_alloc(h, sizeof(carom_lock_t), 0, &p);
  if (rc < 0) return rc;
  carom_lock_init(p);
  *out = p;
  return 0;
}

/* Allocate size bytes for a sync object in h (or the default heap). */
static int new_obj(carom_heap_t **h, size_t size, void **p) {
  int rc = heap_or_default(h);
  if (rc == 0) rc = carom_heap_alloc(*h, size, 0, p);
  return rc < 0 ? rc : 0;
}

enum sem_kind { SEM_PLAIN, SEM_BOUNDED, SEM_TRACKED };

/* A Semaphore, BoundedSemaphore or tracked semaphore of `value` in h (or the
 * default heap): allocated, initialised, freed again if value is refused. */
static int new_sem(carom_heap_t *h, enum sem_kind kind, unsigned value, void **out) {
  void *p;
  int rc = new_obj(&h, kind == SEM_TRACKED ? sizeof(carom_tsem_t) : sizeof(carom_sem_t), &p);
  if (rc) return rc;
  switch (kind) {
    case SEM_PLAIN: rc = carom_sem_init(p, value); break;
    case SEM_BOUNDED: rc = carom_sem_init_bounded(p, value); break;
    case SEM_TRACKED: rc = carom_tsem_init(p, value); break;
  }
  if (rc < 0) {
    carom_heap_free(h, p);
    return rc;
  }
  *out = p;
  return 0;
}

int carom_heap_new_sem(carom_heap_t *h, unsigned value, carom_sem_t **out) {
  void *p;
  int rc = new_sem(h, SEM_PLAIN, value, &p);
  if (rc == 0) *out = p;
  return rc;
}

int carom_heap_new_bounded_sem(carom_heap_t *h, unsigned value, carom_sem_t **out) {
  void *p;
  int rc = new_sem(h, SEM_BOUNDED, value, &p);
  if (rc == 0) *out = p;
  return rc;
}

int carom_heap_new_tsem(carom_heap_t *h, unsigned value, carom_tsem_t **out) {
  void *p;
  int rc = new_sem(h, SEM_TRACKED, value, &p);
  if (rc == 0) *out = p;
  return rc;
}

int carom_heap_new_event(carom_heap_t *h, carom_event_t **out) {
  void *p;
  int rc = new_obj(&h, sizeof(carom_event_t), &p);
  if (rc) return rc;
  carom_event_init(p);
  *out = p;
  return 0;
}

int carom_heap_new_cond(carom_heap_t *h, carom_cond_t **out) {
  void *p;
  int rc = new_obj(&h, sizeof(carom_cond_t), &p);
  if (rc) return rc;
  carom_cond_init(p, NULL);
  *out = p;
  return 0;
}

int carom_heap_new_barrier(carom_heap_t *h, unsigned parties, carom_barrier_action_fn action,
                           void *arg, double timeout_s, carom_barrier_t **out) {
  if (parties == 0) return -EINVAL;
  void *p;
  int rc = new_obj(&h, sizeof(carom_barrier_t), &p);
  if (rc) return rc;
  if ((rc = carom_barrier_init(p, parties, action, arg, timeout_s)) < 0) {
    carom_heap_free(h, p);
    return rc;
  }
  *out = p;
  return 0;
}

int carom_heap_new_rlock(carom_heap_t *h, carom_rlock_t **out) {
  int rc = heap_or_default(&h);
  void *p;
  if (rc == 0) rc = carom_heap_alloc(h, sizeof(carom_rlock_t), 0, &p);
  if (rc < 0) return rc;
  carom_rlock_init(p);
  *out = p;
  return 0;
}
