#include "testutil.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <poll.h>
#include <sched.h>
#include <sys/syscall.h>

namespace carom_test {

void *shared_alloc(size_t size) {
  void *p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) abort();
  return p;
}

void shared_free(void *p, size_t size) { munmap(p, size); }

pid_t fork_child(const std::function<int()> &fn) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) abort();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(99);
    int rc = fn();
    _exit(rc);
  }
  return pid;
}

int reap(pid_t pid, double timeout_s) {
  timeout_s *= slow_factor();
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) {
    struct pollfd p = {fd, POLLIN, 0};
    int r;
    do r = poll(&p, 1, (int)(timeout_s * 1000));
    while (r < 0 && errno == EINTR);
    close(fd);
    int status = 0;
    if (r == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

void ChildGuard::reset(pid_t pid) {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  pid_ = pid;
}

bool wait_until(const std::function<bool()> &cond, double timeout_s) {
  uint64_t start = carom_now_ns();
  uint64_t limit = (uint64_t)(timeout_s * slow_factor() * 1e9);
  for (;;) {
    if (cond()) return true;
    uint64_t waited = carom_now_ns() - start;
    if (waited > limit) return false;
    // Yield for the first millisecond (the peer is usually about to set the
    // flag), then sleep briefly so a slow peer on a busy machine gets the CPU.
    if (waited < 1000000) sched_yield();
    else usleep(100);
  }
}

bool fd_readable(int fd, int timeout_ms) {
  struct pollfd p = {fd, POLLIN, 0};
  int r;
  do r = poll(&p, 1, timeout_ms);
  while (r < 0 && errno == EINTR);
  return r == 1;
}

const timespec *past_deadline() {
  static timespec ts;
  return carom_deadline(0, &ts);
}

int reap_code(pid_t pid, double timeout_s) {
  int st = reap(pid, timeout_s);
  if (st == -1) return -1;
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 1000 + WTERMSIG(st);
  return -1;
}

bool wait_until_sleeping(pid_t id, double timeout_s) {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double end = now.tv_sec + now.tv_nsec / 1e9 + timeout_s * slow_factor();
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)id);
  for (;;) {
    if (FILE *f = fopen(path, "re")) {
      char buf[512];
      size_t n = fread(buf, 1, sizeof buf - 1, f);
      fclose(f);
      buf[n] = 0;
      const char *rp = strrchr(buf, ')');
      if (rp && rp[1] == ' ' && rp[2] == 'S') return true;
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec + now.tv_nsec / 1e9 > end) return false;
    usleep(200);
  }
}

int count_fds() {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  while (struct dirent *e = readdir(d))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1;  // the DIR's own fd
}

double slow_factor() {
  const char *s = getenv("CAROM_TEST_SLOW");
  double f = s ? atof(s) : 1.0;
  return f > 0 ? f : 1.0;
}

}  // namespace carom_test
