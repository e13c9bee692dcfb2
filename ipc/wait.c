/* ipc/wait.c — carom_wait(): readiness of many Connections, Listeners and raw
 * fds (pidfd sentinels, eventfds) at once, with one ppoll.
 *
 * Invariant: a Connection that already holds a whole message in its buffer
 * is ready without looking at its fd (its fd may well be empty: the message
 * came in with an earlier read), so wait never sleeps while a message is
 * ready. Such objects turn the ppoll into a non-blocking sweep of the rest.
 */
#include "ipc/internal.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>


int carom_wait(carom_wait_obj_t *objs, size_t n, const struct timespec *deadline) {
  if (!objs && n) return -EINVAL;
  struct pollfd stack[32];
  struct pollfd *pfd = n <= 32 ? stack : calloc(n, sizeof *pfd);
  if (!pfd) return -ENOMEM;
  int ready = 0, r = 0;
  for (size_t i = 0; i < n; i++) {
    carom_wait_obj_t *o = &objs[i];
    o->ready = 0;
    int fd = -1;
    switch (o->kind) {
      case CAROM_WAIT_CONN:
        if (!o->conn) {
          r = -EINVAL;
          goto out;
        }
        if (o->conn->fd < 0) {
          r = CAROM_ECLOSED;
          goto out;
        }
        if (!(o->conn->flags & CAROM__C_READABLE)) {
          r = -EBADF;
          goto out;
        }
        if (carom__conn_has_message(o->conn) || o->conn->nfdq) {
          o->ready = 1;
          ready++;
        }
        fd = o->conn->fd;
        break;
      case CAROM_WAIT_LISTENER:
        if (!o->listener) {
          r = -EINVAL;
          goto out;
        }
        fd = carom_listener_fileno(o->listener);
        if (fd < 0) {
          r = CAROM_ECLOSED;
          goto out;
        }
        break;
      case CAROM_WAIT_FD:
        if (o->fd < 0) {
          r = -EINVAL;
          goto out;
        }
        fd = o->fd;
        break;
      default:
        r = -EINVAL;
        goto out;
    }
    pfd[i] = (struct pollfd){.fd = fd, .events = POLLIN};
  }
  for (;;) {
    struct timespec rel, zero = {0, 0};
    const struct timespec *t = ready ? &zero : carom__timeout_of(deadline, &rel);
    int p = ppoll(pfd, n, t, NULL);
    if (p < 0) {
      if (errno == EINTR) continue;
      r = -errno;
      goto out;
    }
    for (size_t i = 0; i < n; i++) {
      if (pfd[i].revents & POLLNVAL) {
        r = -EBADF;
        goto out;
      }
      if (pfd[i].revents && !objs[i].ready) {
        objs[i].ready = 1;
        ready++;
      }
    }
    r = ready;
    break;
  }
out:
  if (pfd != stack) free(pfd);
  return r;
}
