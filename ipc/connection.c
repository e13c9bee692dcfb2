/* ipc/connection.c — Connections: length-prefixed messages over a stream
 * socket or a pipe, with deadlines, buffered reads and fd passing.
 *
 * Receive side invariants (one receiving thread at a time):
 * - rbuf[rpos, rlen) holds received bytes not yet consumed; when neither
 *   rmsg_active nor skip is set, rbuf[rpos] is the first byte of a frame
 *   header. Frames that fit in rbuf are assembled there (several small frames
 *   arrive with one read); larger ones move to rmsg, allocated once the
 *   length passed the limit check, and the rest is read straight into it.
 * - A message is consumed (rpos advanced, rmsg handed over or freed) only
 *   when it is returned whole; a timeout, EAGAIN or ETOOSHORT leaves the
 *   state as it was, so the next call resumes. EOF drops a partial message.
 * - skip > 0: the payload of a rejected (too long) frame is still arriving
 *   and is dropped before anything else is parsed.
 *
 * Send side: header and payload leave in one sendmsg/writev; the loop only
 * continues after a partial write. A frame cut by the deadline marks the
 * side broken (send_broken) and shuts the write side down, so the peer sees
 * EOF rather than a frame with a wrong tail.
 *
 * Sockets stay in blocking mode (MSG_DONTWAIT per call when a deadline is
 * set); a pipe's write end is O_NONBLOCK because write() has no per-call
 * flag, its read end blocks in read() unless a deadline asks for ppoll first. Waiting is ppoll with
 * the time left until the caller's absolute deadline, recomputed after every
 * EINTR.
 */
#include "ipc/internal.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

/* Payload of a send_handle message (the fd rides on it as SCM_RIGHTS). */
static const uint8_t handle_magic[8] = {0, 'c', 'a', 'r', 'o', 'm', 'f', 'd'};

/* ---- frame codec ---- */

size_t carom__frame_encode(uint64_t len, uint64_t thr, uint8_t out[CAROM__FRAME_HDR_MAX]) {
  if (thr == 0 || thr > CAROM_CONN_SHORT_HEADER_MAX) thr = CAROM_CONN_SHORT_HEADER_MAX;
  if (len <= thr) {
    for (int i = 0; i < 4; i++) out[i] = (uint8_t)(len >> (24 - 8 * i));
    return CAROM__FRAME_SHORT;
  }
  memset(out, 0xff, 4);
  for (int i = 0; i < 8; i++) out[4 + i] = (uint8_t)(len >> (56 - 8 * i));
  return CAROM__FRAME_EXT;
}

size_t carom__frame_decode(const uint8_t *b, size_t n, uint64_t *len) {
  if (n < CAROM__FRAME_SHORT) return 0;
  uint32_t v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
  if (v != CAROM__FRAME_EXT_MARK) {
    *len = v;
    return CAROM__FRAME_SHORT;
  }
  if (n < CAROM__FRAME_EXT) return 0;
  uint64_t l = 0;
  for (int i = 0; i < 8; i++) l = l << 8 | b[4 + i];
  *len = l;
  return CAROM__FRAME_EXT;
}

/* ---- lifecycle ---- */

#define OPT_HAS(o, field) \
  ((o) && (o)->size >= offsetof(carom_conn_opts_t, field) + sizeof((o)->field))

int carom__conn_new(int fd, unsigned flags, const carom_conn_opts_t *opts, carom_conn_t **out) {
  carom_conn_t *c = calloc(1, sizeof *c);
  if (!c) {
    close(fd);
    return -ENOMEM;
  }
  c->fd = fd;
  c->flags = flags;
  c->max_message = CAROM_CONN_DEFAULT_MAX_MESSAGE;
  c->ext_threshold = CAROM_CONN_SHORT_HEADER_MAX;
  if (OPT_HAS(opts, max_message) && opts->max_message) c->max_message = opts->max_message;
  if (OPT_HAS(opts, ext_threshold) && opts->ext_threshold &&
      opts->ext_threshold < CAROM_CONN_SHORT_HEADER_MAX)
    c->ext_threshold = opts->ext_threshold;
  if (OPT_HAS(opts, nonblocking) && opts->nonblocking) c->flags |= CAROM__C_NONBLOCK;
  *out = c;
  return 0;
}

int carom_conn_create_pipe(int duplex, const carom_conn_opts_t *opts, carom_conn_t **a,
                           carom_conn_t **b) {
  if (!a || !b) return -EINVAL;
  *a = *b = NULL;
  int fds[2];
  unsigned fa, fb;
  if (duplex) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == -1) return -errno;
    fa = fb = CAROM__C_READABLE | CAROM__C_WRITABLE | CAROM__C_SOCKET | CAROM__C_UNIX;
  } else {
    if (pipe2(fds, O_CLOEXEC) == -1) return -errno;
    /* Only the write end needs O_NONBLOCK (a bounded write); the read end
     * blocks in read() when there is no deadline. */
    if (fcntl(fds[1], F_SETFL, O_NONBLOCK) == -1) {
      int e = errno;
      close(fds[0]);
      close(fds[1]);
      return -e;
    }
    fa = CAROM__C_READABLE;
    fb = CAROM__C_WRITABLE;
  }
  int r = carom__conn_new(fds[0], fa, opts, a);
  if (r) {
    close(fds[1]);
    return r;
  }
  r = carom__conn_new(fds[1], fb, opts, b);
  if (r) {
    carom_conn_free(*a);
    *a = NULL;
    return r;
  }
  return 0;
}

int carom_conn_create_fd(int fd, int readable, int writable, const carom_conn_opts_t *opts,
                         carom_conn_t **out) {
  if (!out) return -EINVAL;
  *out = NULL;
  if (fd < 0) return -EINVAL;
  struct stat st;
  if ((!readable && !writable) || fstat(fd, &st) == -1) {
    close(fd);
    return -EINVAL;
  }
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  unsigned flags = (readable ? CAROM__C_READABLE : 0) | (writable ? CAROM__C_WRITABLE : 0);
  if (S_ISSOCK(st.st_mode)) {
    int type = 0, dom = 0;
    socklen_t l = sizeof type;
    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l);
    l = sizeof dom;
    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l);
    if (type != SOCK_STREAM) {
      close(fd);
      return -EINVAL;
    }
    flags |= CAROM__C_SOCKET | (dom == AF_UNIX ? CAROM__C_UNIX : 0);
  } else if (writable) {
    /* write() has no per-call non-blocking flag; a bounded send needs it. */
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1 && !(fl & O_NONBLOCK)) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  }
  return carom__conn_new(fd, flags, opts, out);
}

static void drop_receive_state(carom_conn_t *c) {
  free(c->rbuf);
  c->rbuf = NULL;
  c->rpos = c->rlen = 0;
  free(c->rmsg);
  c->rmsg = NULL;
  c->rmsg_active = false;
  c->skip = 0;
  for (int i = 0; i < c->nfdq; i++) close(c->fdq[i]);
  c->nfdq = 0;
}

int carom_conn_close(carom_conn_t *c) {
  if (!c) return -EINVAL;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  drop_receive_state(c);
  return 0;
}

void carom_conn_free(carom_conn_t *c) {
  if (!c) return;
  carom_conn_close(c);
  free(c);
}

int carom_conn_fileno(const carom_conn_t *c) { return c ? c->fd : -1; }
int carom_conn_readable(const carom_conn_t *c) { return c && (c->flags & CAROM__C_READABLE); }
int carom_conn_writable(const carom_conn_t *c) { return c && (c->flags & CAROM__C_WRITABLE); }
int carom_conn_closed(const carom_conn_t *c) { return !c || c->fd < 0; }

/* ---- receiving ---- */

/* Take fds that arrived as SCM_RIGHTS; beyond the queue they are closed. */
static void take_fds(carom_conn_t *c, struct msghdr *mh) {
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      if (c->nfdq < CAROM__FDQ_MAX)
        c->fdq[c->nfdq++] = fd;
      else
        close(fd);
    }
  }
}

/* Read up to n bytes, waiting up to the deadline for the first one.
 * Returns > 0, CAROM_EEOF, -ETIMEDOUT, -EAGAIN (nonblocking end) or -errno. */
static ssize_t io_read(carom_conn_t *c, void *buf, size_t n, const struct timespec *deadline) {
  /* A socket with no deadline can sleep inside recv(): one syscall. */
  bool block = !deadline && !(c->flags & CAROM__C_NONBLOCK);
  static const struct timespec zero = {0, 0};
  for (;;) {
    ssize_t r;
    if (c->flags & CAROM__C_UNIX) {
      union {
        char b[CMSG_SPACE(CAROM__FDQ_MAX * sizeof(int))];
        struct cmsghdr align;
      } cbuf;
      struct iovec iov = {buf, n};
      struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.b,
                          .msg_controllen = sizeof cbuf.b};
      r = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | (block ? 0 : MSG_DONTWAIT));
      if (r >= 0 && mh.msg_controllen) take_fds(c, &mh);
    } else if (c->flags & CAROM__C_SOCKET) {
      r = recv(c->fd, buf, n, block ? 0 : MSG_DONTWAIT);
    } else {
      /* Pipe read ends stay in blocking mode (one read() per wake-up, as a
       * raw pipe reader); with a deadline, wait for POLLIN first. A fd that
       * is O_NONBLOCK anyway (a write end, a FIFO opened O_RDWR) returns
       * EAGAIN below and takes the poll path. */
      if (!block) {
        int p = carom__poll_fd(c->fd, POLLIN, (c->flags & CAROM__C_NONBLOCK) ? &zero : deadline);
        if (p == 0) return (c->flags & CAROM__C_NONBLOCK) ? -EAGAIN : -ETIMEDOUT;
        if (p < 0) return p;
      }
      r = read(c->fd, buf, n);
    }
    if (r > 0) return r;
    if (r == 0) return CAROM_EEOF;
    int e = errno;
    if (e == EINTR) continue;
    if (e == ECONNRESET) return CAROM_EEOF;
    if (e != EAGAIN) return -e;
    if (c->flags & CAROM__C_NONBLOCK) return -EAGAIN;
    int p = carom__poll_fd(c->fd, POLLIN, deadline);
    if (p == 0) return -ETIMEDOUT;
    if (p < 0) return p;
  }
}

/* Read more bytes into rbuf (compacting it first). */
static ssize_t fill_rbuf(carom_conn_t *c, const struct timespec *deadline) {
  if (!c->rbuf) {
    c->rbuf = malloc(CAROM__RBUF_SIZE);
    if (!c->rbuf) return -ENOMEM;
  }
  if (c->rpos) {
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  ssize_t r = io_read(c, c->rbuf + c->rlen, CAROM__RBUF_SIZE - c->rlen, deadline);
  if (r > 0) c->rlen += (size_t)r;
  return r;
}

/* Drop as much of a rejected payload as rbuf holds. */
static void skip_buffered(carom_conn_t *c) {
  size_t avail = c->rlen - c->rpos;
  size_t d = c->skip < avail ? (size_t)c->skip : avail;
  c->rpos += d;
  c->skip -= d;
}

typedef struct {
  const uint8_t *p;
  uint64_t len;
  size_t advance; /* rbuf bytes to consume; 0 when the message is rmsg */
  bool in_rmsg;
} msgref_t;

static int check_recv(const carom_conn_t *c) {
  if (c->fd < 0) return CAROM_ECLOSED;
  if (!(c->flags & CAROM__C_READABLE)) return -EBADF;
  return 0;
}

/* Locate the next whole message (not consumed) of at most limit bytes. */
static int next_message(carom_conn_t *c, uint64_t limit, msgref_t *m,
                        const struct timespec *deadline) {
  for (;;) {
    ssize_t r;
    if (c->rmsg_active) {
      if (c->rmsg_got == c->rmsg_len) {
        if (c->rmsg_len > limit) { /* held after ETOOSHORT, now over a per-call cap */
          free(c->rmsg);
          c->rmsg = NULL;
          c->rmsg_active = false;
          return CAROM_EMSGSIZE;
        }
        *m = (msgref_t){c->rmsg, c->rmsg_len, 0, true};
        return 0;
      }
      r = io_read(c, c->rmsg + c->rmsg_got, c->rmsg_len - c->rmsg_got, deadline);
      if (r == CAROM_EEOF) { /* never deliver a partial message */
        free(c->rmsg);
        c->rmsg = NULL;
        c->rmsg_active = false;
      }
      if (r < 0) return (int)r;
      c->rmsg_got += (uint64_t)r;
      continue;
    }
    if (c->skip) {
      skip_buffered(c);
      if (!c->skip) continue;
      c->rpos = c->rlen = 0;
      r = fill_rbuf(c, deadline);
      if (r < 0) {
        if (r == CAROM_EEOF) c->skip = 0;
        return (int)r;
      }
      continue;
    }
    size_t avail = c->rlen - c->rpos;
    uint64_t len = 0;
    size_t hl = avail ? carom__frame_decode(c->rbuf + c->rpos, avail, &len) : 0;
    if (hl) {
      if (len > limit) {
        /* Reject before allocating anything; drop the payload as it comes. */
        c->rpos += hl;
        c->skip = len;
        skip_buffered(c);
        return CAROM_EMSGSIZE;
      }
      if (len <= avail - hl) {
        *m = (msgref_t){c->rbuf + c->rpos + hl, len, hl + (size_t)len, false};
        return 0;
      }
      if (hl + len > CAROM__RBUF_SIZE) {
        uint8_t *p = malloc((size_t)len);
        if (!p) return -ENOMEM;
        memcpy(p, c->rbuf + c->rpos + hl, avail - hl);
        c->rmsg = p;
        c->rmsg_len = len;
        c->rmsg_got = avail - hl;
        c->rmsg_active = true;
        c->rpos = c->rlen = 0;
        continue;
      }
    }
    r = fill_rbuf(c, deadline);
    if (r == CAROM_EEOF) c->rpos = c->rlen = 0; /* a partial frame dies with the peer */
    if (r < 0) return (int)r;
  }
}

static void consume(carom_conn_t *c, const msgref_t *m) {
  if (m->in_rmsg) {
    free(c->rmsg);
    c->rmsg = NULL;
    c->rmsg_active = false;
  } else {
    c->rpos += m->advance;
    if (c->rpos == c->rlen) c->rpos = c->rlen = 0;
  }
}

static uint64_t limit_of(const carom_conn_t *c, uint64_t maxlength) {
  return maxlength && maxlength < c->max_message ? maxlength : c->max_message;
}

ssize_t carom_conn_recv_bytes(carom_conn_t *c, size_t maxlength, void **out,
                              const struct timespec *deadline) {
  if (!c || !out) return -EINVAL;
  *out = NULL;
  int r = check_recv(c);
  if (r) return r;
  msgref_t m;
  r = next_message(c, limit_of(c, maxlength), &m, deadline);
  if (r) return r;
  if (m.in_rmsg) { /* hand the buffer over: no copy */
    *out = c->rmsg;
    c->rmsg = NULL;
    c->rmsg_active = false;
    return (ssize_t)m.len;
  }
  void *p = malloc(m.len ? (size_t)m.len : 1);
  if (!p) return -ENOMEM;
  memcpy(p, m.p, (size_t)m.len);
  consume(c, &m);
  *out = p;
  return (ssize_t)m.len;
}

ssize_t carom__conn_recv_into(carom_conn_t *c, void *buf, size_t buflen, size_t maxlen,
                              size_t *needed, const struct timespec *deadline) {
  int r = check_recv(c);
  if (r) return r;
  msgref_t m;
  r = next_message(c, limit_of(c, maxlen), &m, deadline);
  if (r) return r;
  if (m.len > buflen) {
    if (needed) *needed = (size_t)m.len;
    return CAROM_ETOOSHORT;
  }
  if (m.len) memcpy(buf, m.p, (size_t)m.len);
  consume(c, &m);
  return (ssize_t)m.len;
}

ssize_t carom_conn_recv_bytes_into(carom_conn_t *c, void *buf, size_t buflen, size_t offset,
                                   size_t *needed, const struct timespec *deadline) {
  if (!c || (!buf && buflen) || offset > buflen) return -EINVAL;
  uint8_t *p = buf ? (uint8_t *)buf + offset : NULL;
  return carom__conn_recv_into(c, p, buflen - offset, 0, needed, deadline);
}

bool carom__conn_has_message(const carom_conn_t *c) {
  if (c->rmsg_active) return c->rmsg_got == c->rmsg_len;
  if (c->skip || !c->rbuf) return false;
  uint64_t len;
  size_t avail = c->rlen - c->rpos;
  size_t hl = carom__frame_decode(c->rbuf + c->rpos, avail, &len);
  return hl && (len > c->max_message || len <= avail - hl);
}

int carom_conn_poll(carom_conn_t *c, const struct timespec *deadline) {
  if (!c) return -EINVAL;
  int r = check_recv(c);
  if (r) return r;
  if (carom__conn_has_message(c) || c->nfdq) return 1;
  return carom__poll_fd(c->fd, POLLIN, deadline);
}

/* ---- sending ---- */

/* writev on a pipe without letting SIGPIPE reach the process: block it for
 * this thread, and consume the one our write raised (unless one was already
 * pending before, which belongs to somebody else). */
static ssize_t pipe_writev(int fd, const struct iovec *iov, int cnt) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  bool was_blocked = sigismember(&old, SIGPIPE);
  bool pending_before = false;
  if (was_blocked) {
    sigset_t pend;
    sigpending(&pend);
    pending_before = sigismember(&pend, SIGPIPE);
  }
  ssize_t r = writev(fd, iov, cnt);
  int e = errno;
  if (r < 0 && e == EPIPE && !pending_before) {
    const struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &zero) == -1 && errno == EINTR) {
    }
  }
  if (!was_blocked) pthread_sigmask(SIG_SETMASK, &old, NULL);
  errno = e;
  return r;
}

/* The deadline cut a frame: the stream cannot be resynchronised, so stop
 * sending and let the peer see EOF instead of a frame with a wrong tail. */
static void break_send(carom_conn_t *c) {
  c->send_broken = true;
  if (c->flags & CAROM__C_SOCKET) {
    shutdown(c->fd, SHUT_WR);
  } else { /* a write-only pipe end: closing it is the only way to say EOF */
    close(c->fd);
    c->fd = -1;
  }
}

static int send_frame(carom_conn_t *c, const void *p, size_t n, int pass_fd,
                      const struct timespec *deadline) {
  if (c->send_broken) return -EPIPE;
  if (c->fd < 0) return CAROM_ECLOSED;
  if (!(c->flags & CAROM__C_WRITABLE)) return -EBADF;
  uint8_t hdr[CAROM__FRAME_HDR_MAX];
  size_t hl = carom__frame_encode(n, c->ext_threshold, hdr);
  const uint64_t total = hl + (uint64_t)n;
  uint64_t done = 0;
  bool block = !deadline && !(c->flags & CAROM__C_NONBLOCK);
  for (;;) {
    struct iovec iov[2];
    int cnt = 0;
    if (done < hl) iov[cnt++] = (struct iovec){hdr + done, hl - done};
    if (n) {
      size_t off = done > hl ? (size_t)(done - hl) : 0;
      iov[cnt++] = (struct iovec){(uint8_t *)p + off, n - off};
    }
    ssize_t r;
    if (c->flags & CAROM__C_SOCKET) {
      union {
        char b[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
      } cbuf;
      struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
      if (pass_fd >= 0 && done == 0) {
        memset(&cbuf, 0, sizeof cbuf);
        mh.msg_control = cbuf.b;
        mh.msg_controllen = sizeof cbuf.b;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
      }
      r = sendmsg(c->fd, &mh, MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT));
    } else {
      r = pipe_writev(c->fd, iov, cnt);
    }
    if (r > 0) {
      done += (uint64_t)r;
      if (done == total) return 0;
      continue;
    }
    int e = r == 0 ? EAGAIN : errno;
    if (e == EINTR) continue;
    if (e == EAGAIN) {
      if (done == 0 && (c->flags & CAROM__C_NONBLOCK)) return -EAGAIN;
      int pr = carom__poll_fd(c->fd, POLLOUT, deadline);
      if (pr > 0) continue;
      if (done) break_send(c);
      return pr == 0 ? -ETIMEDOUT : pr;
    }
    if (done) break_send(c);
    return e == ECONNRESET ? -EPIPE : -e;
  }
}

int carom_conn_send_bytes(carom_conn_t *c, const void *buf, size_t buflen, size_t offset,
                          size_t size, const struct timespec *deadline) {
  if (!c || (!buf && buflen) || offset > buflen || size > buflen - offset) return -EINVAL;
  return send_frame(c, size ? (const uint8_t *)buf + offset : NULL, size, -1, deadline);
}

/* ---- fd passing ---- */

int carom_conn_send_handle(carom_conn_t *c, int fd, const struct timespec *deadline) {
  if (!c || fd < 0) return -EINVAL;
  if (c->fd >= 0 && !(c->flags & CAROM__C_UNIX)) return -ENOTSOCK;
  return send_frame(c, handle_magic, sizeof handle_magic, fd, deadline);
}

int carom_conn_recv_handle(carom_conn_t *c, const struct timespec *deadline) {
  if (!c) return -EINVAL;
  if (c->fd >= 0 && !(c->flags & CAROM__C_UNIX)) return -ENOTSOCK;
  uint8_t buf[sizeof handle_magic];
  size_t needed;
  ssize_t r = carom__conn_recv_into(c, buf, sizeof buf, 0, &needed, deadline);
  if (r == CAROM_ETOOSHORT) { /* not ours: consume it, as documented */
    void *p = NULL;
    r = carom_conn_recv_bytes(c, 0, &p, deadline);
    free(p);
    return r < 0 ? (int)r : -EPROTO;
  }
  if (r < 0) return (int)r;
  /* The fd arrived with the bytes of this frame, so it is queued by now. */
  if (r != (ssize_t)sizeof handle_magic || memcmp(buf, handle_magic, sizeof buf) || !c->nfdq)
    return -EPROTO;
  int fd = c->fdq[0];
  memmove(c->fdq, c->fdq + 1, (size_t)(--c->nfdq) * sizeof(int));
  return fd;
}
