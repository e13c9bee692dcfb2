/* shm/tracker.c — the resource tracker: unlinks the names a process family
 * created once the whole family is gone, even after SIGKILL.
 *
 * Design. On the first registration a process (the family root) creates a
 * SOCK_SEQPACKET socketpair and double-forks a tracker process T that keeps
 * one end (the read end) and closes every other fd. The root keeps the other
 * end (the write end, O_CLOEXEC); every process forked from the root
 * afterwards inherits it, so the family is exactly "the holders of the write
 * end". exec() closes it (CLOEXEC), so a program started with exec is never a
 * silent member. Members send one datagram per registration:
 *   'R' ino(8 bytes) path      remember path (unlink it at the end if it
 *                              still names inode ino; ino 0: unconditionally)
 *   'U' ino(8 bytes) path      forget path
 * Datagrams are atomic, so any number of members may send at once. When the
 * last holder of the write end exits (normally or by a signal), T's recv()
 * returns 0 (end of file); T unlinks every path still registered and exits.
 *
 * Lifetime. T is a grandchild, reparented at once to init (or the nearest
 * subreaper) which reaps it: it is never a zombie of ours and never confuses
 * a waitpid(-1) in the user's code. It cannot be an orphan that lives
 * forever: it exits on end of file, which the kernel delivers when the last
 * member dies. It runs setsid() and ignores SIGINT/SIGTERM/SIGHUP/SIGQUIT so
 * a Ctrl-C to the terminal's process group (which kills the family) does not
 * kill the tracker before it cleans up. Only SIGKILL of T itself leaks names.
 *
 * T is forked from a possibly multi-threaded process, so it only makes
 * system calls (no malloc, no stdio, no locks): its table lives in an mmap'd
 * array grown with mremap.
 *
 * Ordering. The creator registers before the name becomes visible (see
 * segment.c), so a creator killed between the two leaves nothing behind; the
 * inode check makes a stale registration harmless to a name re-created by
 * someone else afterwards.
 */
#include "shm/internal.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

enum { MSG_HDR = 1 + 8, MSG_MAX = MSG_HDR + CAROM__TRACK_PATH_MAX };

static pthread_mutex_t track_mu = PTHREAD_MUTEX_INITIALIZER;
static int track_fd = -1; /* write end; inherited by fork children */
static pid_t track_pid;

/* ------------------------------------------------------ tracker process -- */

typedef struct {
  uint64_t ino;
  uint32_t len; /* 0: free slot */
  char path[CAROM__TRACK_PATH_MAX + 1];
} slot_t;

static void tracker_close_others(int keep) {
  /* stdin/stdout/stderr to /dev/null: the tracker must not hold a pipe that
   * somebody (a shell, ctest) waits to see closed. */
  int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
  for (int fd = 0; fd < 3; fd++) {
    if (nul >= 0 && nul != fd) dup2(nul, fd);
    else if (nul < 0) close(fd);
  }
  if (syscall(SYS_close_range, 3u, (unsigned)keep - 1, 0u) != 0 ||
      syscall(SYS_close_range, (unsigned)keep + 1, ~0u, 0u) != 0) {
    for (int fd = 3; fd < 65536; fd++)
      if (fd != keep) close(fd);
  }
}

static void tracker_main(int rfd) __attribute__((noreturn));
static void tracker_main(int rfd) {
  setsid();
  if (chdir("/") != 0) {
    /* harmless: paths are absolute */
  }
  struct sigaction ign;
  memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &ign, NULL);
  /* Move the read end above 2, then drop everything else (including the
   * write end we inherited: holding it would keep us alive forever). */
  int fd = (int)fcntl(rfd, F_DUPFD_CLOEXEC, 3);
  if (fd < 0) _exit(1);
  tracker_close_others(fd);

  pid_t me = (pid_t)syscall(SYS_getpid);
  if (send(fd, &me, sizeof me, MSG_NOSIGNAL) != (ssize_t)sizeof me) _exit(1);

  size_t cap = 16, n = 0;
  slot_t *tab = mmap(NULL, cap * sizeof(slot_t), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (tab == MAP_FAILED) _exit(1);
  char msg[MSG_MAX + 1];
  for (;;) {
    ssize_t r = recv(fd, msg, sizeof msg, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break; /* 0: every member is gone */
    if (r < MSG_HDR + 1 || r > MSG_MAX) continue;
    uint64_t ino;
    memcpy(&ino, msg + 1, 8);
    uint32_t len = (uint32_t)(r - MSG_HDR);
    const char *path = msg + MSG_HDR;
    if (msg[0] == 'R') {
      size_t i = 0;
      while (i < n && tab[i].len != 0) i++;
      if (i == n) {
        if (n == cap) {
          slot_t *g = mremap(tab, cap * sizeof(slot_t), 2 * cap * sizeof(slot_t), MREMAP_MAYMOVE);
          if (g == MAP_FAILED) continue; /* out of memory: this name is not tracked */
          tab = g;
          cap *= 2;
        }
        n++;
      }
      tab[i].ino = ino;
      tab[i].len = len;
      memcpy(tab[i].path, path, len);
      tab[i].path[len] = 0;
    } else if (msg[0] == 'U') {
      for (size_t i = n; i-- > 0;) {
        if (tab[i].len == len && memcmp(tab[i].path, path, len) == 0) {
          tab[i].len = 0;
          break;
        }
      }
    }
  }
  for (size_t i = 0; i < n; i++) {
    if (tab[i].len == 0) continue;
    struct stat st;
    if (tab[i].ino != 0 && (stat(tab[i].path, &st) != 0 || (uint64_t)st.st_ino != tab[i].ino))
      continue; /* gone, or re-created by someone else: not ours */
    unlink(tab[i].path);
  }
  _exit(0);
}

/* --------------------------------------------------------- family side -- */

/* Start a tracker; called with track_mu held. */
static int tracker_start(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
  pid_t mid = fork();
  if (mid < 0) {
    int e = errno;
    close(sv[0]);
    close(sv[1]);
    return -e;
  }
  if (mid == 0) {
    /* Intermediate: fork the tracker and exit at once, so the tracker is
     * reparented to init and never becomes our zombie. */
    pid_t t = fork();
    if (t == 0) tracker_main(sv[1]);
    _exit(t < 0 ? 1 : 0);
  }
  close(sv[1]);
  int st;
  while (waitpid(mid, &st, 0) < 0 && errno == EINTR) {
  }
  /* The tracker announces its pid once it has dropped every other fd; EOF
   * here means it died or could not be forked. */
  pid_t t = 0;
  ssize_t r;
  do r = recv(sv[0], &t, sizeof t, 0);
  while (r < 0 && errno == EINTR);
  if (r != (ssize_t)sizeof t) {
    int e = r < 0 ? errno : EPIPE;
    close(sv[0]);
    return -e;
  }
  track_fd = sv[0];
  track_pid = t;
  carom__debug("resource tracker started: pid %d", (int)t);
  return 0;
}

static int tracker_send(char op, const char *path, uint64_t ino) {
  size_t len = strlen(path);
  if (len == 0 || len > CAROM__TRACK_PATH_MAX) return -EINVAL;
  char msg[MSG_MAX];
  msg[0] = op;
  memcpy(msg + 1, &ino, 8);
  memcpy(msg + MSG_HDR, path, len);
  pthread_mutex_lock(&track_mu);
  int rc = 0;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (track_fd < 0) {
      if (op == 'U') break; /* nothing registered in this family */
      rc = tracker_start();
      if (rc < 0) break;
    }
    ssize_t w;
    do w = send(track_fd, msg, MSG_HDR + len, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w == (ssize_t)(MSG_HDR + len)) {
      rc = 0;
      break;
    }
    rc = w < 0 ? -errno : -EIO;
    /* The tracker died (someone killed it): start a new one for this and
     * later names. Names it held are lost; say so. */
    carom__warn("resource tracker pid %d is gone (%s); starting a new one", (int)track_pid,
                carom_strerror(rc));
    close(track_fd);
    track_fd = -1;
    track_pid = 0;
  }
  pthread_mutex_unlock(&track_mu);
  return rc;
}

int carom__tracker_register(const char *path, uint64_t ino) { return tracker_send('R', path, ino); }

int carom__tracker_unregister(const char *path) { return tracker_send('U', path, 0); }

pid_t carom__tracker_pid(void) {
  pthread_mutex_lock(&track_mu);
  pid_t p = track_pid;
  pthread_mutex_unlock(&track_mu);
  return p;
}
