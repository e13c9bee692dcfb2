/* proc/forkserver.c — the forkserver start method: a single-threaded server
 * process that forks children on request, and the client side in the parent.
 *
 * Design (after Python's forkserver, with pidfds):
 * - The server is spawned on first use: fork()+execve() of /proc/self/exe with
 *   CAROM_FORKSERVER_FD set, so it starts from a fresh image with one thread,
 *   whatever threads the parent runs. It reads a list of preload entries from
 *   its command socket, calls them, then serves requests.
 * - A request is one byte on the command socket carrying, as SCM_RIGHTS, one
 *   end `b` of a fresh socketpair (the parent keeps `a`). The server forks; the
 *   child reads its boot message from `b` (sent by the parent after it got the
 *   pid) and runs the target. The server sends the child's pid and a pidfd of
 *   it (SCM_RIGHTS; the server is the real parent, so that pidfd is exact) on
 *   `b`; the parent uses the pidfd for terminate/kill.
 * - The server polls its command socket and one death sentinel per child (a
 *   pidfd, or a pipe the child holds open). When a child ends it reaps it and
 *   writes the exit code (Python convention: status or -signal, int32) on `b`,
 *   then closes `b`. So `a` is the Process's sentinel: readable once the
 *   exit code (or EOF, if the server died: code 255) is there.
 * - Parent death: the server sees EOF on the command socket and exits; its
 *   daemonic children have PR_SET_PDEATHSIG(SIGKILL) relative to the server and
 *   die with it; non-daemonic ones live on, as with Python. Normal exit of the
 *   parent: the exit handler joins every child first, then stops the server.
 * - Fork children of the parent close their copy of the command socket, so
 *   only the parent keeps the server alive; a child that uses forkserver starts
 *   its own.
 */
#include "proc/internal.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* ------------------------------------------------------------ client ---- */

static pthread_mutex_t fs_mu = PTHREAD_MUTEX_INITIALIZER;
static int fs_cmd = -1, fs_pidfd = -1, fs_sentinel = -1;
static pid_t fs_pid;
static pid_t fs_owner; /* the process whose server fs_* describe */
static char **fs_preload;
/* How long a request may wait for the server's reply (its fork): a server
 * that is alive but does not answer (stopped, wedged) is killed after this,
 * and the start fails with -ETIMEDOUT instead of hanging. Tests shorten it. */
static _Atomic uint64_t fs_reply_ns = 30ull * 1000000000ull;

void carom__forkserver_set_reply_timeout(double seconds) {
  atomic_store(&fs_reply_ns, (uint64_t)(seconds * 1e9));
}

/* A raw fork() (not through carom) copies fs_* into a child that does not own
 * the server: forget it there (closing the copies) instead of sharing it. */
static void forget_if_forked_locked(void) {
  if (fs_owner == getpid()) return;
  if (fs_cmd >= 0) close(fs_cmd);
  if (fs_sentinel >= 0 && fs_sentinel != fs_pidfd) close(fs_sentinel);
  if (fs_pidfd >= 0) close(fs_pidfd);
  fs_cmd = fs_pidfd = fs_sentinel = -1;
  fs_pid = 0;
  fs_owner = getpid();
}

pid_t carom__forkserver_pid(void) {
  pthread_mutex_lock(&fs_mu);
  forget_if_forked_locked();
  pid_t p = fs_pid;
  pthread_mutex_unlock(&fs_mu);
  return p;
}

int carom_set_forkserver_preload(const char *const *names) {
  size_t n = 0;
  while (names && names[n]) n++;
  char **c = calloc(n + 1, sizeof *c);
  if (!c) return -ENOMEM;
  for (size_t i = 0; i < n; i++)
    if (!(c[i] = strdup(names[i]))) {
      while (i--) free(c[i]);
      free(c);
      return -ENOMEM;
    }
  pthread_mutex_lock(&fs_mu);
  char **old = fs_preload;
  fs_preload = c;
  pthread_mutex_unlock(&fs_mu);
  for (size_t i = 0; old && old[i]; i++) free(old[i]);
  free(old);
  return 0;
}

static void server_reap_locked(void) {
  forget_if_forked_locked();
  if (fs_cmd >= 0) close(fs_cmd);
  fs_cmd = -1;
  if (fs_pid > 0) {
    /* Every child we care about was joined (or we are giving up on a dead
     * server): no need to wait for the server to notice EOF. */
    if (fs_pidfd >= 0) syscall(SYS_pidfd_send_signal, fs_pidfd, SIGKILL, NULL, 0);
    else kill(fs_pid, SIGKILL);
    while (waitpid(fs_pid, NULL, 0) < 0 && errno == EINTR) {
    }
  }
  if (fs_sentinel >= 0 && fs_sentinel != fs_pidfd) close(fs_sentinel);
  if (fs_pidfd >= 0) close(fs_pidfd);
  fs_pidfd = fs_sentinel = -1;
  fs_pid = 0;
}

static int server_start_locked(void) {
  /* Init message: u32 length, then the preload names, each NUL-terminated. */
  size_t len = 0;
  for (size_t i = 0; fs_preload && fs_preload[i]; i++) len += strlen(fs_preload[i]) + 1;
  unsigned char *msg = malloc(4 + len);
  if (!msg) return -ENOMEM;
  uint32_t l32 = (uint32_t)len;
  memcpy(msg, &l32, 4);
  size_t at = 4;
  for (size_t i = 0; fs_preload && fs_preload[i]; i++) {
    size_t k = strlen(fs_preload[i]) + 1;
    memcpy(msg + at, fs_preload[i], k);
    at += k;
  }
  pid_t pid = carom__spawn_exec("CAROM_FORKSERVER_FD", msg, 4 + len, NULL, false, &fs_cmd,
                                &fs_pidfd, &fs_sentinel);
  free(msg);
  if (pid < 0) return pid;
  fs_pid = pid;
  return 0;
}

pid_t carom__forkserver_start_child(const unsigned char *msg, size_t msg_len, int *pidfd,
                                    int *chan) {
  *pidfd = *chan = -1;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
  int rc = 0;
  pthread_mutex_lock(&fs_mu);
  forget_if_forked_locked();
  for (int attempt = 0; attempt < 2; attempt++) {
    if (fs_cmd < 0 && (rc = server_start_locked())) break;
    rc = carom__send_fds(fs_cmd, "F", 1, &sv[1], 1);
    if (rc != -EPIPE && rc != -ECONNRESET) break;
    server_reap_locked(); /* the server died: start a new one once */
  }
  pid_t server = fs_pid;
  pthread_mutex_unlock(&fs_mu);
  close(sv[1]);
  int32_t pid = 0;
  int fd = -1;
  if (rc == 0) {
    struct timespec dl;
    int r = carom__poll_fd(sv[0], POLLIN, carom__deadline_cap(NULL, atomic_load(&fs_reply_ns), &dl));
    rc = r > 0 ? 0 : r == 0 ? -ETIMEDOUT : r;
    if (rc == -ETIMEDOUT) {
      carom_log(CAROM_LOG_ERROR, "forkserver: server %d did not answer a start request in "
                "%.1f s; killing it (the next start runs a new one)", (int)server,
                atomic_load(&fs_reply_ns) / 1e9);
      pthread_mutex_lock(&fs_mu);
      if (fs_pid == server) server_reap_locked();
      pthread_mutex_unlock(&fs_mu);
    }
  }
  if (rc == 0) rc = carom__recv_fds(sv[0], &pid, sizeof pid, &fd, 1);
  if (rc == CAROM_EEOF) rc = -EPIPE; /* the server died after our request */
  if (rc == 0 && pid < 0) rc = pid;  /* its fork() failed */
  if (rc == 0) {
    /* EPIPE: the child died before reading; join() reports how. */
    (void)carom__send_all(sv[0], msg, msg_len);
    *pidfd = fd;
    *chan = sv[0];
    return pid;
  }
  if (fd >= 0) close(fd);
  close(sv[0]);
  return rc;
}

void carom__forkserver_stop(void) {
  pthread_mutex_lock(&fs_mu);
  server_reap_locked();
  pthread_mutex_unlock(&fs_mu);
}

void carom__forkserver_after_fork_child(void) {
  /* Single-threaded now; another thread may have held fs_mu at fork(). */
  pthread_mutex_init(&fs_mu, NULL);
  if (fs_cmd >= 0) close(fs_cmd);
  if (fs_sentinel >= 0 && fs_sentinel != fs_pidfd) close(fs_sentinel);
  if (fs_pidfd >= 0) close(fs_pidfd);
  fs_cmd = fs_pidfd = fs_sentinel = -1;
  fs_pid = 0; /* not our child: never reap it */
  fs_owner = getpid();
}

/* ------------------------------------------------------------ server ---- */

typedef struct {
  pid_t pid;
  int chan;     /* `b`: status goes here */
  int sentinel; /* pidfd or death-pipe read end */
  bool is_pidfd;
} fs_child_t;

__attribute__((noreturn)) void carom__boot_from_fd(int fd, pid_t expect_parent);

static void server_fork(int cmd, int chan, fs_child_t **kids, size_t *n, size_t *cap) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    fs_child_t *k = realloc(*kids, c * sizeof *k);
    if (!k) {
      int32_t err = -ENOMEM;
      carom__send_fds(chan, &err, sizeof err, NULL, 0);
      close(chan);
      return;
    }
    *kids = k;
    *cap = c;
  }
  int dp[2] = {-1, -1};
  bool use_pidfd = carom__use_pidfd();
  if (!use_pidfd && pipe2(dp, O_CLOEXEC) != 0) {
    int32_t err = -errno;
    carom__send_fds(chan, &err, sizeof err, NULL, 0);
    close(chan);
    return;
  }
  pid_t self = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    close(cmd);
    for (size_t i = 0; i < *n; i++) {
      close((*kids)[i].chan);
      close((*kids)[i].sentinel);
    }
    if (dp[0] >= 0) close(dp[0]);
    carom_after_fork_child();
    carom__boot_from_fd(chan, self);
  }
  if (dp[1] >= 0) close(dp[1]);
  if (pid < 0) {
    int32_t err = -errno;
    if (dp[0] >= 0) close(dp[0]);
    carom__send_fds(chan, &err, sizeof err, NULL, 0);
    close(chan);
    return;
  }
  int sentinel = dp[0];
  if (use_pidfd) sentinel = carom__pidfd_open(pid); /* our child: not reaped yet, exact */
  if (sentinel < 0) {
    /* Cannot watch it (e.g. out of fds): undo the start and say why, rather
     * than wait for the child here while every other client waits on us. */
    int32_t err = sentinel; /* -errno of pidfd_open (only a pidfd can fail here) */
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    carom__send_fds(chan, &err, sizeof err, NULL, 0);
    close(chan);
    return;
  }
  int32_t p32 = pid;
  int pass = use_pidfd ? sentinel : -1;
  carom__send_fds(chan, &p32, sizeof p32, &pass, pass >= 0);
  (*kids)[(*n)++] = (fs_child_t){pid, chan, sentinel, use_pidfd};
}

static void server_reap(fs_child_t *k) {
  siginfo_t si;
  int r;
  do {
    memset(&si, 0, sizeof si);
    r = k->is_pidfd ? waitid((idtype_t)P_PIDFD, (id_t)k->sentinel, &si, WEXITED)
                    : waitid(P_PID, (id_t)k->pid, &si, WEXITED);
  } while (r < 0 && errno == EINTR);
  int32_t code = r < 0 ? 255 : si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
  carom__send_all(k->chan, &code, sizeof code); /* EPIPE: parent gone, fine */
  close(k->chan);
  close(k->sentinel);
}

void carom__forkserver_main(int cmd) {
  carom__signals_reset(false);
  /* Preload: entries to run once, so children inherit their effects. */
  uint32_t len;
  if (carom__recv_all(cmd, &len, 4)) _exit(0);
  char *names = malloc((size_t)len + 1);
  if (!names || carom__recv_all(cmd, names, len)) _exit(0);
  names[len] = 0;
  for (size_t at = 0; at < len; at += strlen(names + at) + 1) {
    carom_process_fn fn = carom_entry_lookup(names + at);
    if (fn) fn(NULL, 0);
  }
  free(names);
  fs_child_t *kids = NULL;
  size_t n = 0, cap = 0;
  struct pollfd *pf = NULL;
  size_t pfcap = 0;
  for (;;) {
    if (pfcap < n + 1) {
      pfcap = (n + 1) * 2;
      pf = realloc(pf, pfcap * sizeof *pf);
      if (!pf) _exit(70);
    }
    pf[0] = (struct pollfd){.fd = cmd, .events = POLLIN};
    for (size_t i = 0; i < n; i++) pf[i + 1] = (struct pollfd){.fd = kids[i].sentinel, .events = POLLIN};
    int r = poll(pf, n + 1, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      _exit(70);
    }
    /* Deaths first, so their slots are free before new forks. */
    for (size_t i = n; i-- > 0;) {
      if (!pf[i + 1].revents) continue;
      server_reap(&kids[i]);
      kids[i] = kids[--n];
    }
    if (pf[0].revents) {
      char c;
      int chan;
      int rc = carom__recv_fds(cmd, &c, 1, &chan, 1);
      if (rc) _exit(0); /* EOF: the parent is gone or done with us */
      if (chan >= 0) server_fork(cmd, chan, &kids, &n, &cap);
    }
  }
}
