/* pool/template.c — the template process: forked once at pool creation while
 * the creator has no pool threads, it forks every worker on request, reaps
 * them and reports each exit status to the supervisor. It is single-threaded
 * by construction, so workers are never forked from a multi-threaded process.
 *
 * Lifetime: it watches the owner through a pidfd (not PDEATHSIG, which fires
 * when the *thread* that forked it exits) and its request socket; when the
 * owner dies or closes the socket it SIGKILLs every worker's process group,
 * reaps them and exits. A closed pool whose work is done sends TPL_QUIT: the
 * template exits once its last worker is reaped and reported, without killing
 * any (so its exit overlaps join's return). Before it exits it kills and
 * reaps every child left (see leave()). Workers die with it (PDEATHSIG; the
 * template's only thread lives as long as the template). When any worker
 * ends, the template kills the worker's process group, so nothing the worker
 * started outlives it.
 */
#include "pool/internal.h"
#include "proc/internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

enum { TPL_MAX_KIDS = 4096 };

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* Close every fd above 2 but those in keep. close_range() needs no memory:
 * the template runs right after a fork from a process that may have threads,
 * so it avoids malloc (opendir) when it can. */
static void close_other_fds(const int *keep_in, int nkeep) {
  int keep[8];
  int nk = 0;
  for (int i = 0; i < nkeep && nk < 8; i++)
    if (keep_in[i] > 2) keep[nk++] = keep_in[i];
  qsort(keep, (size_t)nk, sizeof keep[0], cmp_int);
  unsigned lo = 3;
  bool ok = true;
  for (int i = 0; i <= nk && ok; i++) {
    unsigned hi = i < nk ? (unsigned)keep[i] - 1 : ~0u;
    if (i < nk && (unsigned)keep[i] < lo) continue; /* duplicate */
    if (hi >= lo) ok = syscall(SYS_close_range, lo, hi, 0) == 0;
    if (i < nk) lo = (unsigned)keep[i] + 1;
  }
  if (ok) return;
  /* Old kernel: walk /proc/self/fd. */
  const int *keepfds = keep_in;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  int dfd = dirfd(d);
  int fds[1024], n = 0;
  struct dirent *e;
  while ((e = readdir(d)) && n < 1024) {
    int fd = atoi(e->d_name);
    if (e->d_name[0] == '.' || fd <= 2 || fd == dfd) continue;
    bool k = false;
    for (int i = 0; i < nkeep; i++) k |= keepfds[i] == fd;
    if (!k) fds[n++] = fd;
  }
  closedir(d);
  for (int i = 0; i < n; i++) close(fds[i]);
}

static void send_rep(int sock, uint32_t op, uint32_t slot, pid_t pid, int status) {
  tpl_rep_t r = {op, slot, pid, status};
  while (send(sock, &r, sizeof r, MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

static pid_t kids[TPL_MAX_KIDS];
static uint32_t kid_slot[TPL_MAX_KIDS];
static int nkids;

static void kill_all(void) {
  for (int i = 0; i < nkids; i++) {
    kill(-kids[i], SIGKILL);
    kill(kids[i], SIGKILL);
  }
}

/* Kill every child that is not a worker: with the workers as subreapers, such
 * a child can only be a descendant of a worker that has ended, re-parented to
 * us (we are a subreaper too). */
static void kill_orphans(void) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return;
  buf[n] = 0;
  for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
    pid_t pid = (pid_t)atoi(tok);
    bool worker = false;
    for (int i = 0; i < nkids; i++) worker |= kids[i] == pid;
    if (!worker && pid > 0) {
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
    }
  }
}

/* Reap every exited child: peek without reaping, kill a worker's group while
 * its pid cannot be reused, then reap and report workers. */
static void reap(int sock, bool report, void *shm) {
  bool any = false; /* a child that may have left descendants to us */
  for (;;) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) break;
    pid_t pid = info.si_pid;
    kill(-pid, SIGKILL);
    int st;
    if (waitpid(pid, &st, 0) != pid) break;
    bool worker = false;
    for (int i = 0; i < nkids; i++) {
      if (kids[i] != pid) continue;
      worker = true;
      /* It left on its own with no child: nothing of it re-parented to us. */
      uint64_t w = atomic_load_explicit(&pool_slot(shm, kid_slot[i])->last_words,
                                        memory_order_acquire);
      any |= !(w >> 32 == (uint32_t)pid && (w & BYE_NO_KIDS));
      if (report) send_rep(sock, TPL_EXITED, kid_slot[i], pid, st);
      kids[i] = kids[--nkids];
      kid_slot[i] = kid_slot[nkids];
      break;
    }
    any |= !worker; /* an adopted orphan: its own descendants are ours now */
  }
  /* A worker or an adopted orphan ended: its descendants are ours now. Once
   * per batch, after the reports (reading /proc is the slow part of a reap). */
  if (any) kill_orphans();
}

/* Exit once no child is left: every one is SIGKILLed, and an orphan dying
 * now re-parents its own children to us (we are a subreaper), which are
 * killed in turn, so nothing a task started reaches init. Bounded (2 s): a
 * process can hold off a SIGKILL only while stuck in the kernel. */
static _Noreturn void leave(int sfd) {
  uint64_t until = carom_now_ns() + 2000000000ull;
  for (;;) {
    pid_t r;
    while ((r = waitpid(-1, NULL, WNOHANG)) > 0) {
    }
    if (r < 0 && errno == ECHILD) break; /* none left */
    kill_orphans(); /* no worker is left: every child is one */
    if (carom_now_ns() > until) break;
    struct pollfd p = {sfd, POLLIN, 0};
    poll(&p, 1, 10);
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) > 0) {
    }
  }
  _exit(0);
}

void carom__pool_template_main(int sock, pid_t owner, const struct pool_worker_cfg *cfg) {
  prctl(PR_SET_NAME, "carom-template");
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  setpgid(0, 0);
  /* Every disposition back to default once, here, so that a worker only
   * undoes the three changes below (carom__pool_worker_main). */
  carom__signals_reset(true);
  signal(SIGPIPE, SIG_IGN);
  int ownerfd = carom__pidfd_open(owner);
  if (ownerfd < 0) {
    ownerfd = -1;
    /* No pidfd: fall back to PDEATHSIG, closing the race with getppid. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != owner) _exit(0);
  }
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) _exit(EX_SETUP); /* without it, exits would go unnoticed: fail the pool */
  int keep[] = {sock, ownerfd, sfd, cfg->evfd, cfg->shmfd};
  close_other_fds(keep, 5);

  bool stopping = false, quitting = false;
  const pid_t self = getpid();
  for (;;) {
    struct pollfd p[3] = {{sock, POLLIN, 0}, {sfd, POLLIN, 0}, {ownerfd, POLLIN, 0}};
    nfds_t np = ownerfd >= 0 ? 3 : 2;
    if (quitting && nkids == 0) leave(sfd); /* every exit reported */
    if (stopping) {
      if (nkids == 0) leave(sfd);
      p[0].fd = -1;
      p[2].fd = -1;
    }
    int r = poll(p, np, stopping ? 100 : -1);
    if (r < 0 && errno != EINTR) _exit(EX_SETUP);
    if (!stopping && ((p[0].revents & (POLLHUP | POLLERR)) || (np == 3 && p[2].revents))) {
      stopping = true; /* owner gone or pool freed */
      kill_all();
    }
    if (!stopping && (p[0].revents & POLLIN)) {
      tpl_req_t q;
      ssize_t n = recv(sock, &q, sizeof q, 0);
      if (n == 0) {
        stopping = true;
        kill_all();
      } else if (n == (ssize_t)sizeof q && q.op == TPL_QUIT) {
        quitting = true;
      } else if (n == (ssize_t)sizeof q && q.op == TPL_SPAWN) {
        if (nkids == TPL_MAX_KIDS || quitting) {
          send_rep(sock, TPL_SPAWNED, q.slot, 0, -EAGAIN);
          continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
          close(sock);
          if (ownerfd >= 0) close(ownerfd);
          close(sfd);
          prctl(PR_SET_PDEATHSIG, SIGKILL);
          if (getppid() != self) _exit(EX_SETUP);
          if (cfg->method == POOL_METHOD_SPAWN) carom__pool_exec_worker(q.slot, cfg);
          carom__pool_worker_main(q.slot, cfg);
        }
        if (pid < 0) {
          send_rep(sock, TPL_SPAWNED, q.slot, 0, -errno);
        } else {
          /* Set the group from here too, so a group kill can never miss a
           * worker that has not run setpgid itself yet. */
          setpgid(pid, pid);
          kids[nkids] = pid;
          kid_slot[nkids++] = q.slot;
          send_rep(sock, TPL_SPAWNED, q.slot, pid, 0);
        }
      } else if (n == (ssize_t)sizeof q && q.op == TPL_KILL) {
        for (int i = 0; i < nkids; i++)
          if (kids[i] == q.pid) {
            kill(-q.pid, q.sig);
            kill(q.pid, q.sig);
          }
      }
    }
    /* The signalfd only says "something changed"; waitid says what. */
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) > 0) {
    }
    reap(sock, !stopping, cfg->shm);
  }
}
