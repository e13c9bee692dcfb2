/* ipc/simplequeue.c — SimpleQueue: length-prefixed frames over one pipe.
 *
 * Frame: uint64_t length (host order), then the bytes. A writer holds wlock
 * for a whole frame and a reader holds rlock for a whole frame, so frames of
 * different processes never interleave even above PIPE_BUF. `pending` keeps
 * the length of a frame whose header was read by a get whose buffer was too
 * short (CAROM_ETOOSHORT), so the next get reads its body.
 * Crash: a process killed holding wlock/rlock may have written or read part
 * of a frame; the byte stream cannot be resynchronised, so whoever takes the
 * lock over (-EOWNERDEAD) marks the queue broken and every later call fails
 * with CAROM_EPIPE rather than deliver a torn item.
 * TODO(connections): move the framing onto ipc/ Connections once they land.
 */
#include "base/internal.h"
#include "carom/queue.h"
#include "carom/sync.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef struct {
  carom_lock_t wlock;
  carom_lock_t rlock;
  _Atomic uint32_t broken;
  /* Under the matching lock: 1 while its holder may have moved bytes of a
   * frame through the pipe; 0 while it only waits (poll) or is done. */
  _Atomic uint32_t wbusy, rbusy;
  uint32_t pad;
  uint64_t pending; /* under rlock: length of a frame whose header was read, +1 */
} sq_shared_t;

struct carom_simplequeue {
  int rfd, wfd;
  size_t max_item;
  sq_shared_t *sh;
};

int carom_simplequeue_create(size_t max_item, carom_simplequeue_t **out) {
  if (!out || max_item == 0) return -EINVAL;
  carom_simplequeue_t *q = calloc(1, sizeof *q);
  if (!q) return -ENOMEM;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    int e = -errno;
    free(q);
    return e;
  }
  void *m = mmap(NULL, sizeof(sq_shared_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                 -1, 0);
  if (m == MAP_FAILED) {
    int e = -errno;
    close(fds[0]);
    close(fds[1]);
    free(q);
    return e;
  }
  q->sh = m;
  carom_lock_init(&q->sh->wlock);
  carom_lock_init(&q->sh->rlock);
  atomic_init(&q->sh->broken, 0);
  atomic_init(&q->sh->wbusy, 0);
  atomic_init(&q->sh->rbusy, 0);
  q->sh->pending = 0;
  q->rfd = fds[0];
  q->wfd = fds[1];
  q->max_item = max_item;
  *out = q;
  return 0;
}

void carom_simplequeue_close(carom_simplequeue_t *q) {
  if (q->rfd >= 0) close(q->rfd);
  if (q->wfd >= 0) close(q->wfd);
  q->rfd = q->wfd = -1;
}

void carom_simplequeue_free(carom_simplequeue_t *q) {
  if (!q) return;
  carom_simplequeue_close(q);
  munmap(q->sh, sizeof *q->sh);
  free(q);
}

static int lock_or_broken(carom_simplequeue_t *q, carom_lock_t *l, _Atomic uint32_t *busy) {
  int rc = carom_lock_acquire(l, NULL);
  if (rc == -EOWNERDEAD) {
    carom_lock_consistent(l);
    if (atomic_load_explicit(busy, memory_order_relaxed)) {
      carom__warn("simplequeue %p: a process died mid-frame; queue broken", (void *)q);
      atomic_store_explicit(&q->sh->broken, 1, memory_order_relaxed);
      carom_lock_release(l);
      return CAROM_EPIPE;
    }
    rc = 0; /* it died waiting, before touching the stream */
  }
  if (rc) return rc == -ENOTRECOVERABLE ? CAROM_EPIPE : rc;
  if (atomic_load_explicit(&q->sh->broken, memory_order_relaxed)) {
    carom_lock_release(l);
    return CAROM_EPIPE;
  }
  return 0;
}

int carom_simplequeue_put(carom_simplequeue_t *q, const void *data, size_t len) {
  if (q->wfd < 0) return CAROM_ECLOSED;
  if (len > q->max_item) return CAROM_EMSGSIZE;
  uint64_t hdr = len;
  unsigned char small[PIPE_BUF];
  int rc = lock_or_broken(q, &q->sh->wlock, &q->sh->wbusy);
  if (rc) return rc;
  atomic_store_explicit(&q->sh->wbusy, 1, memory_order_relaxed);
  if (sizeof hdr + len <= sizeof small) {
    /* One write(): at most PIPE_BUF bytes are written atomically. */
    memcpy(small, &hdr, sizeof hdr);
    if (len) memcpy(small + sizeof hdr, data, len);
    rc = carom__write_all(q->wfd, small, sizeof hdr + len);
  } else {
    rc = carom__write_all(q->wfd, &hdr, sizeof hdr);
    if (!rc) rc = carom__write_all(q->wfd, data, len);
  }
  /* A failed write may have left part of a frame in the pipe. */
  if (rc) atomic_store_explicit(&q->sh->broken, 1, memory_order_relaxed);
  atomic_store_explicit(&q->sh->wbusy, 0, memory_order_relaxed);
  carom_lock_release(&q->sh->wlock);
  return rc == -EPIPE ? CAROM_EPIPE : rc;
}

ssize_t carom_simplequeue_get(carom_simplequeue_t *q, void *buf, size_t cap) {
  if (q->rfd < 0) return CAROM_ECLOSED;
  int rc = lock_or_broken(q, &q->sh->rlock, &q->sh->rbusy);
  if (rc) return rc;
  uint64_t len;
  /* Wait for data without consuming any, so a reader killed while waiting
   * leaves the stream intact. */
  if (!q->sh->pending) {
    int w = carom__poll_fd(q->rfd, POLLIN, NULL);
    if (w < 0) {
      rc = w;
      goto out;
    }
  }
  atomic_store_explicit(&q->sh->rbusy, 1, memory_order_relaxed);
  if (q->sh->pending) {
    len = q->sh->pending - 1;
  } else {
    rc = carom__recv_all(q->rfd, &len, sizeof len);
    if (rc) goto out;
    if (len > q->max_item) { /* cannot come from a carom writer */
      atomic_store_explicit(&q->sh->broken, 1, memory_order_relaxed);
      rc = CAROM_EPIPE;
      goto out;
    }
  }
  if (len > cap) {
    q->sh->pending = len + 1;
    rc = CAROM_ETOOSHORT;
    goto out;
  }
  q->sh->pending = 0;
  rc = carom__recv_all(q->rfd, buf, len);
  if (rc == CAROM_EEOF) { /* header without body: a writer died mid-frame */
    atomic_store_explicit(&q->sh->broken, 1, memory_order_relaxed);
    rc = CAROM_EPIPE;
  }
out:
  atomic_store_explicit(&q->sh->rbusy, 0, memory_order_relaxed);
  carom_lock_release(&q->sh->rlock);
  return rc ? rc : (ssize_t)len;
}

bool carom_simplequeue_empty(carom_simplequeue_t *q) {
  if (q->rfd < 0) return true;
  /* POLLIN, not POLLHUP alone: a pipe whose writers all closed is empty. */
  int r = carom__fd_revents(q->rfd, POLLIN);
  return r <= 0 || !(r & POLLIN);
}
