/* base/io.c — waiting on one fd with a deadline, and whole-buffer transfers
 * on fds, shared by ipc/ (Connections, Listener, SimpleQueue) and proc/
 * (boot messages, the forkserver, sentinels) and by base's own liveness test.
 *
 * Every call retries after EINTR; a wait recomputes the time left from the
 * absolute deadline before each ppoll, so a retry never stretches it
 * (STYLE.md, timeouts). Only system calls: usable between fork and exec.
 */
#include "base/internal.h"

#include <poll.h>
#include <sys/socket.h>

/* ppoll fd until it has one of `events`, the deadline or an error:
 * revents (> 0), 0 at the deadline, -errno. */
static int poll_one(int fd, short events, const struct timespec *deadline) {
  for (;;) {
    struct timespec rel;
    struct pollfd p = {.fd = fd, .events = events};
    int r = ppoll(&p, 1, carom__timeout_of(deadline, &rel), NULL);
    if (r > 0) return p.revents;
    if (r == 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

int carom__poll_fd(int fd, short events, const struct timespec *deadline) {
  int r = poll_one(fd, events, deadline);
  if (r > 0) return (r & POLLNVAL) ? -EBADF : 1;
  return r;
}

int carom__fd_revents(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  int r;
  while ((r = poll(&p, 1, 0)) < 0 && errno == EINTR) { /* look once, no clock read */
  }
  return r > 0 ? p.revents : r == 0 ? 0 : -errno;
}

/* write(2), or send(2) with MSG_NOSIGNAL on a socket, until all is out. */
static int put_all(int fd, const void *buf, size_t len, bool sock) {
  const char *p = buf;
  while (len) {
    ssize_t n = sock ? send(fd, p, len, MSG_NOSIGNAL) : write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int carom__write_all(int fd, const void *buf, size_t len) { return put_all(fd, buf, len, false); }

int carom__send_all(int fd, const void *buf, size_t len) { return put_all(fd, buf, len, true); }

int carom__recv_all(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len) {
    ssize_t n = read(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return CAROM_EEOF;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}
