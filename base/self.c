/* base/self.c — the caller's identity (pid, tid), cached so lock fast paths
 * make no syscall, pidfd_open with its no-pidfd switch, and the liveness test
 * for another process.
 *
 * Invariant: self_pid equals getpid() in every process. fork() through the C
 * library runs the atfork child handler, which resets the caches; raw clone()
 * users call carom_after_fork_child(). */
#include "base/internal.h"

#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>

static _Atomic pid_t self_pid;
static _Thread_local pid_t self_tid;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

void carom_after_fork_child(void) {
  atomic_store_explicit(&self_pid, (pid_t)syscall(SYS_getpid), memory_order_relaxed);
  /* After fork only the forking thread exists; its tid is the new pid. */
  self_tid = 0;
}

static void register_atfork(void) { pthread_atfork(NULL, NULL, carom_after_fork_child); }

pid_t carom__self_pid(void) {
  pid_t p = atomic_load_explicit(&self_pid, memory_order_relaxed);
  if (CAROM_LIKELY(p != 0)) return p;
  pthread_once(&atfork_once, register_atfork);
  p = (pid_t)syscall(SYS_getpid);
  atomic_store_explicit(&self_pid, p, memory_order_relaxed);
  return p;
}

pid_t carom__self_tid(void) {
  if (CAROM_LIKELY(self_tid != 0)) return self_tid;
  pthread_once(&atfork_once, register_atfork);
  self_tid = (pid_t)syscall(SYS_gettid);
  return self_tid;
}

/* ----------------------------------------------------------- pidfd ---- */

static _Atomic int pidfd_mode; /* 0 unknown, 1 works, 2 off */

int carom__pidfd_open(pid_t pid) {
  if (atomic_load_explicit(&pidfd_mode, memory_order_relaxed) == 2) return -ENOSYS;
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) return fd;
  int e = errno;
  if (e == ENOSYS || e == EPERM) atomic_store_explicit(&pidfd_mode, 2, memory_order_relaxed);
  return -e;
}

/* Callers decide before they fork whether the child gets a pidfd or another
 * sentinel, so "unknown" must be settled here, not by the first failure after
 * the fork: open (and close) a pidfd of ourselves once. */
bool carom__use_pidfd(void) {
  int mode = atomic_load_explicit(&pidfd_mode, memory_order_relaxed);
  if (mode == 0) {
    int fd = carom__pidfd_open(getpid());
    if (fd >= 0) {
      close(fd);
      int unknown = 0;
      atomic_compare_exchange_strong_explicit(&pidfd_mode, &unknown, 1, memory_order_relaxed,
                                              memory_order_relaxed);
    }
    mode = atomic_load_explicit(&pidfd_mode, memory_order_relaxed);
  }
  return mode != 2;
}
void carom__proc_force_no_pidfd(bool off) {
  atomic_store_explicit(&pidfd_mode, off ? 2 : 0, memory_order_relaxed);
}

/* ------------------------------------------------------ membarrier ---- */

_Atomic int carom__mb_state[2];

int carom__mb_status(int kind) {
  pid_t me = carom__self_pid();
  int s = atomic_load_explicit(&carom__mb_state[kind], memory_order_relaxed);
  return s == me ? 1 : s == -me ? -1 : 0;
}

bool carom__mb_register(int kind) {
  int st = carom__mb_status(kind);
  if (st) return st > 0;
  int cmd = kind == CAROM__MB_GLOBAL ? MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED
                                     : MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED;
  bool ok = syscall(SYS_membarrier, cmd, 0, 0) == 0;
  pid_t me = carom__self_pid();
  atomic_store_explicit(&carom__mb_state[kind], ok ? me : -me, memory_order_relaxed);
  return ok;
}

/* -------------------------------------------------------- liveness ---- */

bool carom__pid_alive(pid_t pid) {
  if (pid <= 0) return false;
  if (pid == carom__self_pid()) return true;
  /* A pidfd reports POLLIN once the process has exited, zombie or not; kill(0)
   * would call a zombie alive and wedge a parent waiting on its own child. */
  int fd = carom__pidfd_open(pid);
  if (fd >= 0) {
    int r = carom__fd_revents(fd, POLLIN);
    close(fd);
    return r == 0;
  }
  if (fd == -ESRCH) return false;
  /* No pidfd (old kernel, seccomp): fall back to kill(0) plus /proc state. */
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "re");
  if (!f) return errno != ENOENT;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *rp = strrchr(buf, ')');
  return !(rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'));
}
