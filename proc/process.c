/* proc/process.c — Process objects (multiprocessing.Process), the children
 * list, contexts and start methods, the identity of the calling process and
 * the exit handler.
 *
 * Invariants:
 * - A started Process stays in the children list until its exit status is
 *   collected (join, is_alive, exitcode, active_children or the exit handler);
 *   a handle freed before that is "detached" and freed when it is reaped, so a
 *   child never stays a zombie and its status is never lost to a double wait.
 * - Reaping happens only under the Process's mutex and only when the sentinel
 *   says the process ended (or with WNOHANG), so blocking waits sleep in
 *   ppoll() on the sentinel without holding a lock, and two threads joining the
 *   same Process cannot both wait for it.
 * - Lock order: list lock, then a Process's mutex. Never the other way.
 * - Signals go through the pidfd (pidfd_send_signal) while the process is not
 *   reaped, so a recycled pid is never hit; kill(pid) is the no-pidfd fallback.
 * - carom's fork() calls hold carom__fork_mu and the list lock across fork(),
 *   so the child's copy of the list is consistent and no fd meant for one child
 *   (exec-failure pipe, death pipe) leaks into a sibling created by carom.
 *
 * Which calls may overlap on one Process: join/is_alive/exitcode/terminate/
 * kill/sentinel/pid/name — any, from any threads. start — once, before the
 * others matter. close/free — not concurrently with any other call on it.
 */
#include "proc/internal.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

pthread_mutex_t carom__fork_mu = PTHREAD_MUTEX_INITIALIZER;

/* --------------------------------------------------- current process ---- */

static char *cur_name, *cur_identity, *parent_name;
static bool cur_daemon;
static pid_t parent_pid;
static _Atomic unsigned child_counter = 1;

static char *xstrdup_or_null(const char *s) { return s ? strdup(s) : NULL; }

void carom__current_set(const char *name, const char *identity, bool daemon, pid_t ppid,
                        const char *pname) {
  /* Runs in a new child only (single-threaded); the old strings belong to the
   * parent's copy and are simply replaced. */
  cur_name = xstrdup_or_null(name);
  cur_identity = xstrdup_or_null(identity);
  parent_name = xstrdup_or_null(pname);
  cur_daemon = daemon;
  parent_pid = ppid;
  atomic_store(&child_counter, 1);
}

const char *carom_current_process_name(void) { return cur_name ? cur_name : "MainProcess"; }
const char *carom_current_process_identity(void) { return cur_identity ? cur_identity : ""; }
bool carom_current_process_daemon(void) { return cur_daemon; }
pid_t carom_parent_process_pid(void) { return parent_pid; }
const char *carom_parent_process_name(void) { return parent_pid ? parent_name : NULL; }

/* ---------------------------------------------------------- contexts ---- */

struct carom_context {
  int method;
  const char *name;
};

static carom_context_t contexts[3] = {
    {CAROM__FORK, "fork"}, {CAROM__SPAWN, "spawn"}, {CAROM__FORKSERVER, "forkserver"}};
static pthread_mutex_t ctx_mu = PTHREAD_MUTEX_INITIALIZER;
static int default_method = -1; /* -1: not fixed yet */

static int method_of(const char *name) {
  for (int i = 0; i < 3; i++)
    if (!strcmp(contexts[i].name, name)) return i;
  return -1;
}

static int default_fix(void) {
  pthread_mutex_lock(&ctx_mu);
  if (default_method < 0) default_method = CAROM__FORK;
  int m = default_method;
  pthread_mutex_unlock(&ctx_mu);
  return m;
}

int carom_get_context(const char *method, carom_context_t **out) {
  int m = method ? method_of(method) : default_fix();
  if (m < 0) return -EINVAL;
  *out = &contexts[m];
  return 0;
}

const char *carom_context_start_method(const carom_context_t *ctx) { return ctx->name; }

int carom_set_start_method(const char *method, bool force) {
  int m = -1;
  if (method && (m = method_of(method)) < 0) return -EINVAL;
  if (!method && !force) return -EINVAL;
  pthread_mutex_lock(&ctx_mu);
  int rc = 0;
  if (default_method >= 0 && !force) rc = -EBUSY;
  else default_method = m;
  pthread_mutex_unlock(&ctx_mu);
  return rc;
}

const char *carom_get_start_method(bool allow_none) {
  if (!allow_none) return contexts[default_fix()].name;
  pthread_mutex_lock(&ctx_mu);
  int m = default_method;
  pthread_mutex_unlock(&ctx_mu);
  return m < 0 ? NULL : contexts[m].name;
}

int carom_get_all_start_methods(const char **out, int cap) {
  /* The default first, as multiprocessing lists them. */
  int d = carom_get_start_method(true) ? method_of(carom_get_start_method(true)) : CAROM__FORK;
  int n = 0;
  if (n < cap) out[n] = contexts[d].name;
  n++;
  for (int i = 0; i < 3; i++) {
    if (i == d) continue;
    if (n < cap) out[n] = contexts[i].name;
    n++;
  }
  return n;
}

/* ----------------------------------------------------- children list ---- */

static pthread_mutex_t list_mu = PTHREAD_MUTEX_INITIALIZER;
static carom_process_t *children;
static pthread_once_t atexit_once = PTHREAD_ONCE_INIT;
static pid_t list_owner; /* the pid whose children the list holds */

static void exit_handler(void) {
  if (list_owner == getpid()) carom__proc_exit_handlers();
}
static void register_atexit(void) { atexit(exit_handler); }

static void forget_children_locked(void);

/* A raw fork() (not through carom) copies the parent's list into a child that
 * does not own those processes: forget them there. */
static void check_forked_locked(void) {
  if (list_owner != 0 && list_owner != getpid()) forget_children_locked();
}

static void list_add_locked(carom_process_t *p) {
  check_forked_locked();
  p->listed = true;
  p->next = children;
  children = p;
  list_owner = getpid();
}

static void list_remove_locked(carom_process_t *p) {
  for (carom_process_t **pp = &children; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  p->listed = false;
  p->next = NULL;
}

static void process_destroy(carom_process_t *p);

/* Drop p from the list after its status was collected by a user call. */
static void unlist(carom_process_t *p) {
  pthread_mutex_lock(&list_mu);
  if (p->listed) list_remove_locked(p);
  pthread_mutex_unlock(&list_mu);
}

/* ------------------------------------------------------------ reaping ---- */

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Collect the exit status if the process ended (block: it is known to have
 * ended, so the wait is short). Caller holds p->mu and state == STARTED.
 * Returns true when the process is now ENDED. */
static bool reap_locked(carom_process_t *p, bool block) {
  if (p->method == CAROM__FORKSERVER) {
    if (!block && carom__fd_revents(p->sentinel, POLLIN) == 0) return false;
    int32_t code;
    /* The server writes the exit code, then closes; EOF without a code means
     * the server died: the status is lost (Python reports 255). */
    p->exitcode = carom__recv_all(p->sentinel, &code, sizeof code) == 0 ? code : 255;
    /* The server closes its end right after the code: wait for that EOF, so
     * the sentinel stays readable from now on, as a pidfd does. Bounded: a
     * server that stops after the code must not hang join(); the sentinel is
     * then replaced (same number) by an fd that is always readable. */
    struct timespec dl;
    carom__deadline_cap(NULL, 1000000000ull, &dl);
    for (;;) {
      if (carom__poll_fd(p->sentinel, POLLIN, &dl) <= 0) {
        int e = eventfd(1, EFD_CLOEXEC);
        if (e >= 0) {
          dup3(e, p->sentinel, O_CLOEXEC);
          close(e);
        }
        break;
      }
      char c;
      ssize_t r = read(p->sentinel, &c, 1);
      if (r > 0 || (r < 0 && errno == EINTR)) continue;
      break;
    }
    p->state = CAROM__ENDED;
    return true;
  }
  for (;;) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int opts = WEXITED | (block ? 0 : WNOHANG);
    int r = p->pidfd >= 0 ? waitid((idtype_t)P_PIDFD, (id_t)p->pidfd, &si, opts)
                          : waitid(P_PID, (id_t)p->pid, &si, opts);
    if (r < 0) {
      if (errno == EINTR) continue;
      /* ECHILD: someone else (a waitpid(-1) in user code) reaped it. */
      p->exitcode = 255;
      p->state = CAROM__ENDED;
      return true;
    }
    if (si.si_pid == 0) return false;
    p->exitcode = si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
    p->state = CAROM__ENDED;
    return true;
  }
}

/* Non-blocking status check; returns true when ended. Unlists if so. */
static bool poll_ended(carom_process_t *p) {
  pthread_mutex_lock(&p->mu);
  bool ended = p->state != CAROM__STARTED || reap_locked(p, false);
  pthread_mutex_unlock(&p->mu);
  if (ended) unlist(p);
  return ended;
}

/* ------------------------------------------------------------ Process ---- */

static int check_owner(const carom_process_t *p) {
  return p->creator == carom__self_pid() ? 0 : CAROM_EFORKED;
}

static char **env_copy(const char *const *env) {
  size_t n = 0;
  while (env && env[n]) n++;
  char **c = calloc(n + 1, sizeof *c);
  if (!c) return NULL;
  for (size_t i = 0; i < n; i++)
    if (!(c[i] = strdup(env[i]))) {
      while (i--) free(c[i]);
      free(c);
      return NULL;
    }
  return c;
}

int carom_process_create(const carom_process_opts_t *opts, carom_process_t **out) {
  *out = NULL;
  if (!opts || opts->size < sizeof *opts) return -EINVAL;
  if (opts->target && opts->entry) return -EINVAL;
  if (opts->arg_len && !opts->arg) return -EINVAL;
  carom_process_fn fn = opts->target;
  if (opts->entry && !(fn = carom_entry_lookup(opts->entry))) return -ENOENT;
  carom_process_t *p = calloc(1, sizeof *p);
  if (!p) return -ENOMEM;
  pthread_mutex_init(&p->mu, NULL);
  p->pidfd = p->sentinel = -1;
  p->fn = fn;
  p->daemon = opts->daemon;
  p->ignore_sigint = opts->ignore_sigint;
  p->ctx = opts->ctx;
  p->creator = carom__self_pid();
  p->state = CAROM__CREATED;
  int rc = carom__target_ref_make(fn, opts->entry, &p->ref);
  unsigned n = atomic_fetch_add(&child_counter, 1);
  const char *pid_ = carom_current_process_identity();
  size_t il = strlen(pid_) + 16;
  p->identity = malloc(il);
  if (p->identity) snprintf(p->identity, il, "%s%s%u", pid_, pid_[0] ? ":" : "", n);
  if (opts->name) p->name = strdup(opts->name);
  else if (p->identity && (p->name = malloc(il + 8)))
    snprintf(p->name, il + 8, "Process-%s", p->identity);
  p->arg_len = opts->arg_len;
  p->arg = malloc(opts->arg_len ? opts->arg_len : 1);
  if (p->arg && opts->arg_len) memcpy(p->arg, opts->arg, opts->arg_len);
  p->env = env_copy(opts->env);
  if (rc == 0 && (!p->identity || !p->name || !p->arg || !p->env)) rc = -ENOMEM;
  if (rc) {
    process_destroy(p);
    return rc;
  }
  *out = p;
  return 0;
}

static void fill_boot(const carom_process_t *p, carom__boot_t *b) {
  memset(b, 0, sizeof *b);
  b->ref = p->ref;
  b->arg = p->arg;
  b->arg_len = p->arg_len;
  b->name = p->name;
  b->identity = p->identity;
  b->env = p->env;
  b->daemon = p->daemon;
  b->ignore_sigint = p->ignore_sigint;
  b->parent_pid = carom__self_pid();
  b->parent_name = carom_current_process_name();
}

/* fork method. Caller holds nothing. */
static int start_fork(carom_process_t *p) {
  int dp[2] = {-1, -1};
  pthread_mutex_lock(&carom__fork_mu);
  if (!carom__use_pidfd() && pipe2(dp, O_CLOEXEC) != 0) {
    int e = errno;
    pthread_mutex_unlock(&carom__fork_mu);
    return -e;
  }
  pid_t parent = carom__self_pid();
  carom__boot_t b;
  fill_boot(p, &b);
  pthread_mutex_lock(&list_mu);
  pid_t pid = fork();
  if (pid == 0) {
    carom__child_deathsig(p->daemon, parent);
    carom__signals_reset(p->ignore_sigint);
    if (dp[0] >= 0) close(dp[0]); /* dp[1] stays open until we exit */
    /* This thread held both locks at fork(); it is the only thread now. */
    pthread_mutex_unlock(&list_mu);
    pthread_mutex_unlock(&carom__fork_mu);
    carom__proc_after_fork_child();
    carom__child_run(&b, p->fn);
  }
  int e = errno;
  pthread_mutex_unlock(&list_mu);
  if (dp[1] >= 0) close(dp[1]);
  if (pid < 0) {
    close_fd(&dp[0]);
    pthread_mutex_unlock(&carom__fork_mu);
    return -e;
  }
  p->pid = pid;
  if (dp[0] >= 0) {
    p->sentinel = dp[0];
  } else {
    int fd = carom__pidfd_open(pid);
    if (fd >= 0) {
      p->pidfd = p->sentinel = fd;
    } else {
      /* pidfd vanished under us (seccomp?): the child is running without a
       * death pipe, so the only honest sentinel left is none; wait for it. */
      pthread_mutex_unlock(&carom__fork_mu);
      kill(pid, SIGKILL);
      while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
      }
      return fd;
    }
  }
  pthread_mutex_unlock(&carom__fork_mu);
  return 0;
}

int carom_process_start(carom_process_t *p) {
  int rc = check_owner(p);
  if (rc) return rc;
  if (cur_daemon) return -EPERM;
  pthread_mutex_lock(&p->mu);
  if (p->state != CAROM__CREATED) {
    pthread_mutex_unlock(&p->mu);
    return -EINVAL;
  }
  /* STARTING keeps other calls out while we fork without holding p->mu (the
   * fork path takes the list lock, which ranks before p->mu). */
  p->state = CAROM__STARTING;
  pthread_mutex_unlock(&p->mu);
  carom_context_t *ctx = p->ctx;
  if (!ctx) carom_get_context(NULL, &ctx);
  p->method = ctx->method;
  pthread_once(&atexit_once, register_atexit);
  if (p->method != CAROM__FORK && p->fn && !p->ref.entry && !p->ref.has_offset) {
    rc = -EINVAL; /* a target that cannot be named across exec */
  } else if (p->method == CAROM__FORK) {
    rc = start_fork(p);
  } else {
    carom__boot_t b;
    fill_boot(p, &b);
    unsigned char *msg;
    size_t len;
    rc = carom__boot_encode(&b, &msg, &len);
    if (rc == 0) {
      pid_t pid = p->method == CAROM__SPAWN
                      ? carom__spawn_exec("CAROM_SPAWN_FD", msg, len, p->env, p->daemon, NULL,
                                          &p->pidfd, &p->sentinel)
                      : carom__forkserver_start_child(msg, len, &p->pidfd, &p->sentinel);
      free(msg);
      if (pid < 0) rc = pid;
      else p->pid = pid;
    }
  }
  pthread_mutex_lock(&list_mu);
  pthread_mutex_lock(&p->mu);
  if (rc == 0) list_add_locked(p);
  p->state = rc == 0 ? CAROM__STARTED : CAROM__CREATED;
  pthread_mutex_unlock(&p->mu);
  pthread_mutex_unlock(&list_mu);
  return rc;
}

static int started_check(const carom_process_t *p) {
  int rc = check_owner(p);
  if (rc) return rc;
  int st = p->state;
  if (st == CAROM__CREATED || st == CAROM__STARTING || st == CAROM__CLOSED) return -EINVAL;
  return 0;
}

int carom_process_join(carom_process_t *p, const struct timespec *deadline) {
  int rc = started_check(p);
  if (rc) return rc;
  for (;;) {
    if (poll_ended(p)) return 0;
    int r = carom__poll_fd(p->sentinel, POLLIN, deadline);
    if (r < 0) return r;
    if (r == 0) return -ETIMEDOUT;
    pthread_mutex_lock(&p->mu);
    if (p->state == CAROM__STARTED) reap_locked(p, true);
    pthread_mutex_unlock(&p->mu);
  }
}

bool carom_process_is_alive(carom_process_t *p) {
  if (started_check(p)) return false;
  return !poll_ended(p);
}

int carom_process_exitcode(carom_process_t *p, int *code) {
  int rc = check_owner(p);
  if (rc) return rc;
  if (p->state == CAROM__CLOSED) return -EINVAL;
  if (p->state < CAROM__STARTED || !poll_ended(p)) return CAROM_ENOTREADY;
  *code = p->exitcode;
  return 0;
}

pid_t carom_process_pid(const carom_process_t *p) {
  return p->state < CAROM__STARTED ? 0 : p->pid;
}

static int send_signal(carom_process_t *p, int sig) {
  int rc = started_check(p);
  if (rc) return rc;
  pthread_mutex_lock(&p->mu);
  if (p->state == CAROM__STARTED) {
    if (p->pidfd >= 0) syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0);
    else kill(p->pid, sig); /* not reaped yet (we hold mu), so pid is still its */
  }
  pthread_mutex_unlock(&p->mu);
  return 0;
}

int carom_process_terminate(carom_process_t *p) { return send_signal(p, SIGTERM); }
int carom_process_kill(carom_process_t *p) { return send_signal(p, SIGKILL); }

int carom_process_sentinel(const carom_process_t *p) {
  int st = p->state;
  if (st < CAROM__STARTED || st == CAROM__CLOSED) return -EINVAL;
  return p->sentinel;
}

int carom_process_close(carom_process_t *p) {
  int rc = check_owner(p);
  if (rc) return rc;
  if (p->state == CAROM__STARTING) return -EBUSY;
  if (p->state == CAROM__STARTED && !poll_ended(p)) return -EBUSY;
  pthread_mutex_lock(&p->mu);
  if (p->sentinel != p->pidfd) close_fd(&p->sentinel);
  close_fd(&p->pidfd);
  p->sentinel = -1;
  p->state = CAROM__CLOSED;
  pthread_mutex_unlock(&p->mu);
  return 0;
}

static void process_destroy(carom_process_t *p) {
  if (p->sentinel != p->pidfd) close_fd(&p->sentinel);
  close_fd(&p->pidfd);
  carom__target_ref_free(&p->ref);
  free(p->arg);
  free(p->name);
  free(p->identity);
  for (size_t i = 0; p->env && p->env[i]; i++) free(p->env[i]);
  free(p->env);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

void carom_process_free(carom_process_t *p) {
  if (!p) return;
  if (p->creator != carom__self_pid()) {
    /* A handle inherited over fork: not our child; close our copies. */
    process_destroy(p);
    return;
  }
  pthread_mutex_lock(&list_mu);
  if (p->listed) {
    p->detached = true; /* reaped later by active_children / exit handler */
    pthread_mutex_unlock(&list_mu);
    return;
  }
  pthread_mutex_unlock(&list_mu);
  process_destroy(p);
}

const char *carom_process_name(const carom_process_t *p) { return p->name; }
const char *carom_process_identity(const carom_process_t *p) { return p->identity; }
bool carom_process_daemon(const carom_process_t *p) { return p->daemon; }

int carom_active_children(carom_process_t **out, int cap) {
  int n = 0;
  pthread_mutex_lock(&list_mu);
  check_forked_locked();
  carom_process_t **pp = &children;
  while (*pp) {
    carom_process_t *p = *pp;
    pthread_mutex_lock(&p->mu);
    bool ended = p->state != CAROM__STARTED || reap_locked(p, false);
    pthread_mutex_unlock(&p->mu);
    if (ended) {
      *pp = p->next;
      p->listed = false;
      if (p->detached) process_destroy(p);
      continue;
    }
    if (!p->detached) {
      if (n < cap) out[n] = p;
      n++;
    }
    pp = &p->next;
  }
  pthread_mutex_unlock(&list_mu);
  return n;
}

/* ------------------------------------------------------ exit and fork ---- */

void carom__proc_exit_handlers(void) {
  pthread_mutex_lock(&list_mu);
  check_forked_locked();
  /* Python's _exit_function: terminate the daemonic children still running,
   * then join every child. */
  for (carom_process_t *p = children; p; p = p->next) {
    if (!p->daemon) continue;
    pthread_mutex_lock(&p->mu);
    if (p->state == CAROM__STARTED && !reap_locked(p, false)) {
      if (p->pidfd >= 0) syscall(SYS_pidfd_send_signal, p->pidfd, SIGTERM, NULL, 0);
      else kill(p->pid, SIGTERM);
    }
    pthread_mutex_unlock(&p->mu);
  }
  while (children) {
    carom_process_t *p = children;
    pthread_mutex_lock(&p->mu);
    while (p->state == CAROM__STARTED && !reap_locked(p, false)) {
      pthread_mutex_unlock(&p->mu);
      int r = carom__poll_fd(p->sentinel, POLLIN, NULL);
      pthread_mutex_lock(&p->mu);
      if (r > 0 && p->state == CAROM__STARTED) reap_locked(p, true);
    }
    pthread_mutex_unlock(&p->mu);
    children = p->next;
    p->listed = false;
    p->next = NULL;
    if (p->detached) process_destroy(p);
  }
  pthread_mutex_unlock(&list_mu);
  carom__forkserver_stop();
}

static void forget_children_locked(void) {
  /* The parent's children are not ours: close our copies of their fds (the
   * handles stay valid memory and answer CAROM_EFORKED). */
  for (carom_process_t *p = children; p; p = p->next) {
    if (p->sentinel != p->pidfd) close_fd(&p->sentinel);
    close_fd(&p->pidfd);
    p->sentinel = -1;
    p->listed = false;
  }
  children = NULL;
  list_owner = 0;
}

void carom__proc_after_fork_child(void) {
  forget_children_locked();
  carom__forkserver_after_fork_child();
}
