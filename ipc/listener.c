/* ipc/listener.c — Listener and Client: addresses, bind/listen/accept,
 * connect with a deadline, and the handshake around them.
 *
 * Invariants:
 * - A Unix-socket Listener's file is created 0600: the socket inode's mode is
 *   set with fchmod() before bind(), and Linux's bind() creates the file from
 *   that mode (less the umask), so there is no window where it is wider. The
 *   default address lives in a fresh mkdtemp() directory (0700).
 * - Only the process that created a Listener removes its socket file and
 *   temporary directory (a forked child freeing its copy leaves them).
 * - accept never waits on one client longer than handshake_timeout: a client
 *   that says nothing, hangs up or runs as another uid is dropped and accept
 *   goes on with the next one, all within the caller's deadline.
 */
#include "ipc/internal.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#define ADDR_MAX 160

struct carom_listener {
  int fd;
  int family;
  pid_t creator;
  char address[ADDR_MAX];
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* file to unlink, or "" */
  char tmpdir[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* dir to rmdir, or "" */
  uint8_t *key;
  size_t keylen;
  bool has_key;
  double handshake_timeout;
  bool allow_other_uids;
  carom_conn_opts_t conn_opts;
};

typedef struct {
  struct sockaddr_storage sa;
  socklen_t salen;
  int family;
  bool abstract;
} addr_t;

static int parse_unix(const char *name, bool abstract, addr_t *a) {
  struct sockaddr_un *un = (struct sockaddr_un *)&a->sa;
  size_t n = strlen(name);
  if (!n) return -EINVAL;
  if (n + 1 > sizeof un->sun_path) return -ENAMETOOLONG;
  memset(un, 0, sizeof *un);
  un->sun_family = AF_UNIX;
  if (abstract) { /* sun_path[0] = 0, then the name, no terminator counted */
    memcpy(un->sun_path + 1, name, n);
    a->salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
  } else {
    memcpy(un->sun_path, name, n);
    a->salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  }
  a->family = AF_UNIX;
  a->abstract = abstract;
  return 0;
}

static int parse_address(const char *s, bool passive, addr_t *a) {
  memset(a, 0, sizeof *a);
  if (!strncmp(s, "unix:", 5)) return parse_unix(s + 5, false, a);
  if (s[0] == '/' || s[0] == '.') return parse_unix(s, false, a);
  if (!strncmp(s, "abstract:", 9)) return parse_unix(s + 9, true, a);
  if (s[0] == '@') return parse_unix(s + 1, true, a);
  if (!strncmp(s, "tcp:", 4)) s += 4;
  char host[128];
  const char *port;
  if (s[0] == '[') {
    const char *end = strchr(s, ']');
    if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host) return -EINVAL;
    memcpy(host, s + 1, (size_t)(end - s - 1));
    host[end - s - 1] = 0;
    port = end + 2;
  } else {
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) return -EINVAL;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    port = colon + 1;
  }
  if (!*port || strspn(port, "0123456789") != strlen(port)) return -EINVAL;
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)};
  struct addrinfo *res = NULL;
  if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0 || !res) return -EINVAL;
  memcpy(&a->sa, res->ai_addr, res->ai_addrlen);
  a->salen = res->ai_addrlen;
  a->family = res->ai_family;
  freeaddrinfo(res);
  return 0;
}

static void format_inet(const struct sockaddr_storage *ss, char *out, size_t n) {
  char h[INET6_ADDRSTRLEN] = "?";
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &s6->sin6_addr, h, sizeof h);
    snprintf(out, n, "tcp:[%s]:%u", h, ntohs(s6->sin6_port));
  } else {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &s4->sin_addr, h, sizeof h);
    snprintf(out, n, "tcp:%s:%u", h, ntohs(s4->sin_port));
  }
}

#define LOPT_HAS(o, field) \
  ((o) && (o)->size >= offsetof(carom_listener_opts_t, field) + sizeof((o)->field))

int carom_listener_create(const carom_listener_opts_t *opts, carom_listener_t **out) {
  if (!out) return -EINVAL;
  *out = NULL;
  carom_listener_t *l = calloc(1, sizeof *l);
  if (!l) return -ENOMEM;
  l->fd = -1;
  l->creator = getpid();
  l->handshake_timeout = 5.0;
  const char *address = LOPT_HAS(opts, address) ? opts->address : NULL;
  int backlog = LOPT_HAS(opts, backlog) && opts->backlog > 0 ? opts->backlog : 128;
  if (LOPT_HAS(opts, handshake_timeout) && opts->handshake_timeout > 0)
    l->handshake_timeout = opts->handshake_timeout;
  l->allow_other_uids = LOPT_HAS(opts, allow_other_uids) && opts->allow_other_uids;
  if (LOPT_HAS(opts, conn) && opts->conn.size) l->conn_opts = opts->conn;
  int r = 0;
  if (LOPT_HAS(opts, authkey_len) && opts->authkey) {
    r = carom__auth_ready();
    if (r) goto fail;
    l->key = malloc(opts->authkey_len ? opts->authkey_len : 1);
    if (!l->key) {
      r = -ENOMEM;
      goto fail;
    }
    memcpy(l->key, opts->authkey, opts->authkey_len);
    l->keylen = opts->authkey_len;
    l->has_key = true;
  }

  addr_t a;
  char tmp_address[ADDR_MAX];
  if (!address || !*address) {
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    if ((size_t)snprintf(l->tmpdir, sizeof l->tmpdir, "%s/carom-XXXXXX", dir) >=
        sizeof l->tmpdir - sizeof "/listener.sock") {
      l->tmpdir[0] = 0;
      r = -ENAMETOOLONG;
      goto fail;
    }
    if (!mkdtemp(l->tmpdir)) {
      r = -errno;
      l->tmpdir[0] = 0;
      goto fail;
    }
    snprintf(tmp_address, sizeof tmp_address, "unix:%s/listener.sock", l->tmpdir);
    address = tmp_address;
  }
  r = parse_address(address, true, &a);
  if (r) goto fail;
  l->family = a.family;
  l->fd = socket(a.family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (l->fd == -1) {
    r = -errno;
    goto fail;
  }
  if (a.family == AF_UNIX) {
    if (!a.abstract && fchmod(l->fd, 0600) == -1) {
      r = -errno;
      goto fail;
    }
  } else {
    int one = 1;
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  }
  if (bind(l->fd, (struct sockaddr *)&a.sa, a.salen) == -1) {
    r = -errno;
    goto fail;
  }
  if (a.family == AF_UNIX && !a.abstract)
    snprintf(l->path, sizeof l->path, "%s", ((struct sockaddr_un *)&a.sa)->sun_path);
  if (listen(l->fd, backlog) == -1) {
    r = -errno;
    goto fail;
  }
  if (a.family == AF_UNIX) {
    const struct sockaddr_un *un = (const struct sockaddr_un *)&a.sa;
    if (a.abstract)
      snprintf(l->address, sizeof l->address, "abstract:%.*s",
               (int)(a.salen - offsetof(struct sockaddr_un, sun_path) - 1), un->sun_path + 1);
    else
      snprintf(l->address, sizeof l->address, "unix:%s", un->sun_path);
  } else {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) == -1) {
      r = -errno;
      goto fail;
    }
    format_inet(&ss, l->address, sizeof l->address);
  }
  *out = l;
  return 0;
fail:
  carom_listener_free(l);
  return r;
}

const char *carom_listener_address(const carom_listener_t *l) { return l ? l->address : NULL; }
int carom_listener_fileno(const carom_listener_t *l) { return l ? l->fd : -1; }

void carom_listener_close(carom_listener_t *l) {
  if (!l) return;
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  if (getpid() == l->creator) {
    if (l->path[0]) unlink(l->path);
    if (l->tmpdir[0]) rmdir(l->tmpdir);
  }
  l->path[0] = l->tmpdir[0] = 0;
}

void carom_listener_free(carom_listener_t *l) {
  if (!l) return;
  carom_listener_close(l);
  if (l->key) {
    explicit_bzero(l->key, l->keylen);
    free(l->key);
  }
  free(l);
}

/* A Unix peer of another uid (root aside) is refused unless allowed. */
static bool peer_allowed(const carom_listener_t *l, int fd) {
  if (l->family != AF_UNIX || l->allow_other_uids) return true;
  struct ucred cr;
  socklen_t len = sizeof cr;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == -1) return false;
  return cr.uid == geteuid() || cr.uid == 0;
}

int carom_listener_accept(carom_listener_t *l, const struct timespec *deadline,
                          carom_conn_t **out) {
  if (!l || !out) return -EINVAL;
  *out = NULL;
  for (;;) {
    if (l->fd < 0) return CAROM_ECLOSED;
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1) {
      int e = errno;
      if (e == EINTR || e == ECONNABORTED) continue;
      if (e != EAGAIN) return -e;
      int p = carom__poll_fd(l->fd, POLLIN, deadline);
      if (p == 0) return -ETIMEDOUT;
      if (p < 0) return p;
      continue;
    }
    if (!peer_allowed(l, fd)) {
      carom__warn("listener %s: refused a peer running as another user", l->address);
      close(fd);
      continue;
    }
    unsigned flags = CAROM__C_READABLE | CAROM__C_WRITABLE | CAROM__C_SOCKET;
    if (l->family == AF_UNIX) {
      flags |= CAROM__C_UNIX;
    } else {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    carom_conn_t *c;
    int r = carom__conn_new(fd, flags, l->conn_opts.size ? &l->conn_opts : NULL, &c);
    if (r) return r;
    if (!l->has_key) {
      *out = c;
      return 0;
    }
    struct timespec cap;
    const struct timespec *hs =
        carom__deadline_cap(deadline, (uint64_t)(l->handshake_timeout * 1e9), &cap);
    r = carom__auth_deliver(c, l->key, l->keylen, hs);
    if (r == 0) r = carom__auth_answer(c, l->key, l->keylen, hs);
    if (r == 0) {
      *out = c;
      return 0;
    }
    carom_conn_free(c);
    /* Failures of ours (no memory, no libcrypto) and a wrong key end the
     * accept; a peer's silence or disappearance does not. */
    if (r == CAROM_EAUTH || r == -ENOMEM || r == -EIO || r == -ELIBACC) return r;
    if (carom__deadline_passed(deadline)) return -ETIMEDOUT;
    /* Silent, slow or vanished client: drop it and serve the next. */
    carom__debug("listener %s: dropped a client during the handshake (%s)", l->address,
                 carom_err_name(r));
  }
}

/* ---- Client ---- */

#define COPT_HAS(o, field) \
  ((o) && (o)->size >= offsetof(carom_client_opts_t, field) + sizeof((o)->field))

static int connect_deadline(int fd, const addr_t *a, const struct timespec *deadline) {
  for (;;) {
    if (connect(fd, (const struct sockaddr *)&a->sa, a->salen) == 0) return 0;
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN && a->family == AF_UNIX) {
      /* A Unix listener's backlog is full: no event tells when it drains, so
       * retry every millisecond until the deadline. */
      if (carom__deadline_passed(deadline)) return -ETIMEDOUT;
      struct timespec ms = {0, 1000000};
      nanosleep(&ms, NULL);
      continue;
    }
    if (e != EINPROGRESS) return -e;
    int p = carom__poll_fd(fd, POLLOUT, deadline);
    if (p == 0) return -ETIMEDOUT;
    if (p < 0) return p;
    int err = 0;
    socklen_t l = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) == -1) return -errno;
    return -err;
  }
}

int carom_conn_create_client(const char *address, const carom_client_opts_t *opts,
                             const struct timespec *deadline, carom_conn_t **out) {
  if (!out) return -EINVAL;
  *out = NULL;
  if (!address) return -EINVAL;
  addr_t a;
  int r = parse_address(address, false, &a);
  if (r) return r;
  if (COPT_HAS(opts, authkey_len) && opts->authkey && (r = carom__auth_ready()) != 0) return r;
  int fd = socket(a.family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1) return -errno;
  r = connect_deadline(fd, &a, deadline);
  if (r) {
    close(fd);
    return r;
  }
  /* Sockets stay in blocking mode; carom uses MSG_DONTWAIT per call. */
  int fl = fcntl(fd, F_GETFL);
  if (fl != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  unsigned flags = CAROM__C_READABLE | CAROM__C_WRITABLE | CAROM__C_SOCKET;
  if (a.family == AF_UNIX) {
    flags |= CAROM__C_UNIX;
  } else {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  carom_conn_t *c;
  const carom_conn_opts_t *copts = COPT_HAS(opts, conn) && opts->conn.size ? &opts->conn : NULL;
  r = carom__conn_new(fd, flags, copts, &c);
  if (r) return r;
  if (COPT_HAS(opts, authkey_len) && opts->authkey) {
    r = carom__auth_answer(c, opts->authkey, opts->authkey_len, deadline);
    if (r == 0) r = carom__auth_deliver(c, opts->authkey, opts->authkey_len, deadline);
    if (r) {
      carom_conn_free(c);
      return r;
    }
  }
  *out = c;
  return 0;
}
