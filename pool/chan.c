/* pool/chan.c — single-producer single-consumer byte ring of frames in shared
 * memory, the pool's task and result channel.
 *
 * Invariants: head and tail only grow (they are byte counts, reduced modulo
 * cap for positions); 0 <= head - tail <= cap; every frame starts 8-byte
 * aligned and is published by one release store of head after its bytes are
 * written, so a reader that acquires head sees whole frames only. A producer
 * that dies mid-frame leaves bytes beyond head that no reader looks at.
 *
 * Memory ordering:
 *   producer: write frame bytes; store-release head   (publishes the frame)
 *   consumer: load-acquire head; read frame; store-release tail (frees space)
 *   producer: load-acquire tail before reusing space  (frees are seen)
 *
 * Soft limit: while every frame is small, the producer writes below `lim`
 * (CHAN_SOFT) and wraps there with a PAD frame that spans the rest of the
 * ring, so a fresh ring carrying small messages faults in CHAN_SOFT bytes
 * rather than all of cap (1.25 µs a page here). The first frame over a
 * quarter of lim lifts it to cap for good. The consumer just follows PADs.
 */
#include "pool/internal.h"

#include <string.h>

static inline uint64_t r8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

void chan_init(chan_t *c, uint64_t data_off, uint64_t cap) {
  atomic_init(&c->head, 0);
  atomic_init(&c->tail, 0);
  atomic_init(&c->prod_wait, 0);
  atomic_init(&c->cons_wait, 0);
  c->cap = cap;
  c->lim = cap < CHAN_SOFT ? cap : CHAN_SOFT;
  c->data_off = data_off;
}

/* The message is the concatenation of a[0..na) and b[0..nb). */
static inline const struct iovec *seg(const struct iovec *a, size_t na, const struct iovec *b,
                                      size_t i) {
  return i < na ? &a[i] : &b[i - na];
}

/* Copy n bytes of the message starting at message offset off. */
static void gather(char *dst, const struct iovec *a, size_t na, const struct iovec *b, size_t nb,
                   size_t off, size_t n) {
  size_t i = 0, cnt = na + nb;
  while (i < cnt && off >= seg(a, na, b, i)->iov_len) off -= seg(a, na, b, i++)->iov_len;
  while (n > 0 && i < cnt) {
    if (off == 0 && i >= na) { /* whole items of b: the hot loop of a map's chunk */
      const struct iovec *v = &b[i - na], *vend = b + nb;
      while (v < vend && v->iov_len <= n) {
        size_t l = v->iov_len;
        if (l == 8) memcpy(dst, v->iov_base, 8);
        else if (l) memcpy(dst, v->iov_base, l);
        dst += l;
        n -= l;
        v++;
      }
      i = na + (size_t)(v - b);
      if (n == 0 || i >= cnt) break;
    }
    const struct iovec *v = seg(a, na, b, i);
    if (v->iov_len == 0) { /* empty parts (no pad, no items) may have a NULL base */
      i++;
      continue;
    }
    size_t take = v->iov_len - off;
    if (take > n) take = n;
    memcpy(dst, (const char *)v->iov_base + off, take);
    dst += take;
    n -= take;
    off = 0;
    i++;
  }
}

enum { MIN_PARTIAL = 512 };

bool chan_write(chan_t *c, const struct iovec *iov, int iovcnt, size_t total, size_t *progress) {
  return chan_write2(c, iov, (size_t)iovcnt, NULL, 0, total, progress);
}

bool chan_write2(chan_t *c, const struct iovec *a, size_t na, const struct iovec *b, size_t nb,
                 size_t total, size_t *progress) {
  const uint64_t mask = c->cap - 1;
  char *data = chan_data(c);
  uint64_t head = atomic_load_explicit(&c->head, memory_order_relaxed);
  while (*progress < total) {
    uint64_t tail = atomic_load_explicit(&c->tail, memory_order_acquire);
    uint64_t free = c->cap - (head - tail);
    uint64_t chunk = total - *progress;
    if (chunk > chan_max_frame(c)) chunk = chan_max_frame(c);
    uint64_t want = sizeof(frame_t) + r8(chunk);
    if (want > c->lim / 4) c->lim = c->cap; /* a large frame: the whole ring from now on */
    /* Frames go below lim; a PAD runs to the ring's end (padlen bytes). */
    uint64_t pos = head & mask, padlen = c->cap - pos;
    uint64_t contig = pos < c->lim ? c->lim - pos : 0;
    if (want > contig || want > free) {
      if (contig < want && free >= padlen + want) {
        goto pad; /* fits whole at the start */
      }
      uint64_t room = contig < free ? contig : free;
      if (room >= sizeof(frame_t) + MIN_PARTIAL) {
        chunk = (room - sizeof(frame_t)) & ~(uint64_t)7;
        want = sizeof(frame_t) + chunk;
      } else if (padlen < free && free - padlen >= sizeof(frame_t) + MIN_PARTIAL) {
        goto pad;
      } else {
        return false;
      }
    }
    {
      frame_t *f = (frame_t *)(data + pos);
      gather((char *)(f + 1), a, na, b, nb, *progress, chunk);
      f->len = (uint32_t)chunk;
      f->flags = (*progress == 0 ? FR_FIRST : 0) | (*progress + chunk == total ? FR_LAST : 0);
      head += want;
      *progress += chunk;
      atomic_store_explicit(&c->head, head, memory_order_release);
      continue;
    }
  pad : {
    frame_t *f = (frame_t *)(data + pos);
    f->len = (uint32_t)(padlen - sizeof(frame_t));
    f->flags = FR_PAD;
    head += padlen;
    atomic_store_explicit(&c->head, head, memory_order_release);
  }
  }
  return true;
}

const frame_t *chan_peek(chan_t *c) {
  const uint64_t mask = c->cap - 1;
  uint64_t tail = atomic_load_explicit(&c->tail, memory_order_relaxed);
  for (;;) {
    uint64_t head = atomic_load_explicit(&c->head, memory_order_acquire);
    if (tail == head) return NULL;
    const frame_t *f = (const frame_t *)(chan_data(c) + (tail & mask));
    if (!(f->flags & FR_PAD)) return f;
    tail += sizeof(frame_t) + f->len;
    atomic_store_explicit(&c->tail, tail, memory_order_release);
  }
}

void chan_consume(chan_t *c, const frame_t *f) {
  uint64_t tail = atomic_load_explicit(&c->tail, memory_order_relaxed);
  atomic_store_explicit(&c->tail, tail + sizeof(frame_t) + r8(f->len), memory_order_release);
}
