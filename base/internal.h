/* base/internal.h — private helpers shared by every layer (never installed).
 *
 * Futex wrappers (always shared, never FUTEX_PRIVATE: carom objects live in
 * MAP_SHARED memory), absolute CLOCK_MONOTONIC deadlines, the cached identity
 * of the calling process/thread, pidfd_open and liveness of another process,
 * waiting on an fd and whole-buffer fd transfers, and carom__die() for states
 * that cannot happen.
 */
#ifndef CAROM_BASE_INTERNAL_H
#define CAROM_BASE_INTERNAL_H

#include "carom/common.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define CAROM_LIKELY(x) __builtin_expect(!!(x), 1)
#define CAROM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define CAROM_CACHELINE 64

/* Log file:line and the message, then abort(). For impossible states only. */
#define carom__die(...) carom__die_at(__FILE__, __LINE__, __VA_ARGS__)
void carom__die_at(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

/* ---- futex ---- */

/* Sleep while *word == expected, until woken or the absolute CLOCK_MONOTONIC
 * deadline (NULL: no bound). Returns 0 when woken (or spuriously), -EAGAIN when
 * *word != expected on entry, -EINTR on a signal, -ETIMEDOUT at the deadline.
 * Callers re-check their word after every return (STYLE.md, futex code). */
static inline int carom__futex_wait(_Atomic uint32_t *word, uint32_t expected,
                                    const struct timespec *deadline) {
  /* FUTEX_WAIT_BITSET takes an absolute timeout on CLOCK_MONOTONIC, so a
   * retry never stretches the wait (musl __timedwait computes the same). */
  long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected,
                   deadline, NULL, FUTEX_BITSET_MATCH_ANY);
  if (r == 0) return 0;
  int e = errno;
  if (e == EAGAIN || e == EINTR || e == ETIMEDOUT) return -e;
  carom__die("futex wait: unexpected errno %d", e);
}

/* Wake up to n sleepers on word. Returns the number woken. */
static inline int carom__futex_wake(_Atomic uint32_t *word, int n) {
  long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
  if (r >= 0) return (int)r;
  carom__die("futex wake: unexpected errno %d", errno);
}

/* ---- time ---- */

static inline uint64_t carom__ts_ns(const struct timespec *ts) {
  return (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;
}
static inline void carom__ns_ts(uint64_t ns, struct timespec *ts) {
  ts->tv_sec = (time_t)(ns / 1000000000ull);
  ts->tv_nsec = (long)(ns % 1000000000ull);
}
/* True when the deadline has passed (never for NULL). */
bool carom__deadline_passed(const struct timespec *deadline);
/* The earlier of `deadline` and now + ns, written to *out; returns out.
 * Used to cap one sleep (e.g. to poll an owner's liveness) without changing
 * the caller's deadline. */
const struct timespec *carom__deadline_cap(const struct timespec *deadline, uint64_t ns,
                                           struct timespec *out);
/* ppoll's relative timeout for an absolute deadline (NULL for NULL), written
 * to *rel; returns rel. */
const struct timespec *carom__timeout_of(const struct timespec *deadline, struct timespec *rel);

/* ---- identity of the caller, cached (refreshed after fork) ---- */

/* pid of the calling process, without a syscall after the first call. */
pid_t carom__self_pid(void);
/* kernel thread id of the calling thread, cached per thread. */
pid_t carom__self_tid(void);

/* Liveness of another process: true while it exists and has not exited. A
 * zombie (exited, not yet reaped) counts as dead. Costs 2–3 syscalls; call it
 * only on slow paths. pid reuse: a pid is only reused after the zombie is
 * reaped and the kernel's pid counter wraps (pid_max), so a caller that polls
 * every few ms cannot mistake a new process for the dead owner in practice. */
bool carom__pid_alive(pid_t pid);

/* pidfd_open(pid, 0): the fd, or -errno. After ENOSYS or EPERM (old kernel,
 * seccomp) it fails with -ENOSYS without a syscall, and carom__use_pidfd()
 * turns false, so callers take their no-pidfd fallbacks. Every carom
 * pidfd_open goes through here, so the test switch below reaches them all. */
int carom__pidfd_open(pid_t pid);
bool carom__use_pidfd(void);
/* Test switch: behave as on a kernel without pidfds (true), or detect again
 * (false). Named for proc/'s tests, which use it. */
void carom__proc_force_no_pidfd(bool off);

/* membarrier(2) registration of this process, one per kind (private or
 * global expedited), keyed by pid: a fork()ed child has not registered. The
 * state is the registered pid, or its negation once the kernel refused. */
enum { CAROM__MB_PRIVATE = 0, CAROM__MB_GLOBAL = 1 };
extern _Atomic int carom__mb_state[2];
static inline bool carom__mb_registered(int kind) {
  return atomic_load_explicit(&carom__mb_state[kind], memory_order_relaxed) == carom__self_pid();
}
/* Register once (an attempt the kernel refused is not repeated in this
 * process): true when registered. With several threads registering costs an
 * RCU grace period (milliseconds). */
bool carom__mb_register(int kind);
/* 1 registered, -1 refused, 0 not tried in this process. */
int carom__mb_status(int kind);

/* ---- fds (base/io.c): EINTR retried, system calls only ---- */

/* Wait until fd has `events` (or POLLHUP/POLLERR) or the deadline (NULL:
 * forever; past: look once): 1 ready, 0 deadline, -EBADF, -errno. */
int carom__poll_fd(int fd, short events, const struct timespec *deadline);
/* What fd has ready now, without waiting: revents (> 0), 0 none, -errno. */
int carom__fd_revents(int fd, short events);
/* Write all len bytes: 0 or -errno. write_all uses write(2) (pipes; SIGPIPE
 * as usual), send_all send(2) with MSG_NOSIGNAL (sockets: -EPIPE, no signal). */
int carom__write_all(int fd, const void *buf, size_t len);
int carom__send_all(int fd, const void *buf, size_t len);
/* Read exactly len bytes with read(2) (any fd): 0, CAROM_EEOF at end of file
 * before len bytes, -errno. */
int carom__recv_all(int fd, void *buf, size_t len);

/* ---- logging shorthands ---- */
#define carom__debug(...) carom_log(CAROM_LOG_DEBUG, __VA_ARGS__)
#define carom__warn(...) carom_log(CAROM_LOG_WARNING, __VA_ARGS__)

/* Spin-wait hint. */
static inline void carom__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#else
  atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* ---- private wire formats and growable buffers (base/wire.c) ---- */
typedef struct {
  unsigned char *p;
  size_t len, cap;
  bool oom; /* an allocation failed: later puts do nothing */
} carom__wbuf_t;

typedef struct {
  unsigned char *p;
  size_t len, at;
  bool bad; /* a get went past the end */
} carom__rbuf_t;

/* Room for n more bytes at p + len (false once an allocation failed). */
bool carom__wreserve(carom__wbuf_t *w, size_t n);
void carom__wput(carom__wbuf_t *w, const void *d, size_t n);
void carom__wput_u32(carom__wbuf_t *w, uint32_t v);
void carom__wput_u64(carom__wbuf_t *w, uint64_t v);
/* u32 length, the bytes, a NUL. */
void carom__wput_bytes(carom__wbuf_t *w, const void *d, size_t n);
void carom__wput_str(carom__wbuf_t *w, const char *s); /* NULL as "" */
const void *carom__rget(carom__rbuf_t *r, size_t n);
uint32_t carom__rget_u32(carom__rbuf_t *r);
uint64_t carom__rget_u64(carom__rbuf_t *r);
/* Bytes written by carom__wput_bytes, in place (NUL-terminated); *n = length. */
const unsigned char *carom__rget_bytes(carom__rbuf_t *r, size_t *n);
char *carom__rget_str(carom__rbuf_t *r);

#endif /* CAROM_BASE_INTERNAL_H */
