/* carom/common.h — what every carom module shares: export macro, error codes,
 * logging and the timeout convention.
 *
 * Errors: every function that can fail returns 0 (or a non-negative count, size
 * or fd) on success and a negative code on failure. Codes are either a negated
 * errno value (-ETIMEDOUT, -EOWNERDEAD, -EINVAL, ...) or one of carom's own
 * codes below -4000 (CAROM_EEMPTY, ...). carom_strerror() and carom_err_name()
 * describe any of them. The CAROM_E* names for errno-backed codes are aliases,
 * so `rc == CAROM_ETIMEDOUT` and `rc == -ETIMEDOUT` are the same test.
 *
 * Timeouts: blocking calls take `const struct timespec *deadline`, an absolute
 * CLOCK_MONOTONIC time. NULL blocks without bound; a deadline already in the
 * past means "try once, never block". carom_deadline() converts a relative
 * timeout in seconds (Python's convention) into a deadline, once, at the outer
 * call; the same deadline then flows unchanged through every layer, so retries
 * after EINTR or spurious wake-ups never extend the wait.
 */
#ifndef CAROM_COMMON_H
#define CAROM_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CAROM_BUILDING)
#define CAROM_EXTERN __attribute__((visibility("default")))
#else
#define CAROM_EXTERN
#endif

/* X(name, value, message). errno-backed codes first, then carom's own. */
#define CAROM_ERRNO_MAP(X)                                                     \
  X(ETIMEDOUT, -ETIMEDOUT, "timed out")                                        \
  X(EAGAIN, -EAGAIN, "resource temporarily unavailable (would block)")         \
  X(EINTR, -EINTR, "interrupted")                                              \
  X(EINVAL, -EINVAL, "invalid argument")                                       \
  X(ENOMEM, -ENOMEM, "out of memory")                                          \
  X(EPERM, -EPERM, "operation not permitted")                                  \
  X(EBUSY, -EBUSY, "resource busy")                                            \
  X(EOWNERDEAD, -EOWNERDEAD, "previous owner died holding the lock")           \
  X(ENOTRECOVERABLE, -ENOTRECOVERABLE,                                         \
    "lock not recoverable: owner died and state was never marked consistent")  \
  X(EMSGSIZE, -EMSGSIZE, "message too large")                                  \
  X(EPIPE, -EPIPE, "broken pipe")                                              \
  X(EOVERFLOW, -EOVERFLOW, "value too large (counter overflow)")               \
  X(ENOENT, -ENOENT, "no such file or name")                                   \
  X(EEXIST, -EEXIST, "name already exists")                                    \
  X(ENOSPC, -ENOSPC, "no space left")                                          \
  X(EBADF, -EBADF, "bad file descriptor or closed handle")                     \
  X(EEMPTY, -4001, "empty")                                                    \
  X(EFULL, -4002, "full")                                                      \
  X(ECLOSED, -4003, "closed")                                                  \
  X(EBROKEN, -4004, "broken barrier")                                          \
  X(EAUTH, -4005, "authentication failed")                                     \
  X(ETOOSHORT, -4006, "buffer too short")                                      \
  X(EEOF, -4007, "end of file: peer closed")                                   \
  X(ETIMELIMIT, -4008, "time limit exceeded")                                  \
  X(ESOFTTIMELIMIT, -4009, "soft time limit exceeded")                         \
  X(EWORKERLOST, -4010, "worker lost")                                         \
  X(ETERMINATED, -4011, "terminated")                                          \
  X(ERESTARTFREQ, -4012, "restart frequency exceeded")                         \
  X(ECANCELLED, -4013, "cancelled")                                            \
  X(ENOTREADY, -4014, "result not ready")                                      \
  X(EFORKED, -4015, "object used in a forked child; it belongs to the parent")  \
  X(ENOTOWNER, -4016, "not the owner (release of an unowned lock)")            \
  X(ENOTLOCKED, -4017, "release of an unlocked lock")                          \
  X(EOVERRELEASE, -4018, "semaphore released too many times")                  \
  X(ETASKDONE, -4019, "task_done() called more times than items were put")     \
  X(EREMOTE, -4020, "the task failed with an error of its own")              \
  X(EINITIALIZER, -4021, "worker initializer failed")

typedef enum {
#define CAROM__ERR_ENUM(name, value, msg) CAROM_##name = (value),
  CAROM_ERRNO_MAP(CAROM__ERR_ENUM)
#undef CAROM__ERR_ENUM
} carom_errno_t;

/* Human-readable description of a carom return code (negative errno or
 * CAROM_E*). Never NULL; unknown codes give "unknown error". Thread-safe,
 * async-signal-safe (returns a static string). */
CAROM_EXTERN const char *carom_strerror(int code);
/* The symbolic name ("ETIMEDOUT", "EWORKERLOST", ...). Never NULL. */
CAROM_EXTERN const char *carom_err_name(int code);

/* ---- timeouts ---- */

/* Fill *out with now + seconds on CLOCK_MONOTONIC and return out. seconds <= 0
 * or NaN gives a deadline in the past (try once). seconds = +inf returns NULL
 * (block without bound), so `carom_deadline(t, &ts)` can be passed straight to
 * any blocking call for any Python-style timeout. */
CAROM_EXTERN struct timespec *carom_deadline(double seconds, struct timespec *out);
/* Seconds left until the deadline (negative when passed); +inf for NULL. */
CAROM_EXTERN double carom_deadline_remaining(const struct timespec *deadline);
/* CLOCK_MONOTONIC now, in nanoseconds. */
CAROM_EXTERN uint64_t carom_now_ns(void);

/* ---- logging (billiard's get_logger / log_to_stderr) ---- */

typedef enum {
  CAROM_LOG_DEBUG = 10,
  CAROM_LOG_INFO = 20,
  CAROM_LOG_WARNING = 30,
  CAROM_LOG_ERROR = 40,
  CAROM_LOG_OFF = 100
} carom_log_level_t;

/* A log sink. Called from any thread of any carom process, possibly
 * concurrently; never from a signal handler. `msg` has no trailing newline. */
typedef void (*carom_log_fn)(carom_log_level_t level, const char *msg, void *arg);

/* Install a sink (NULL restores the default stderr sink) and its argument. */
CAROM_EXTERN void carom_log_set_handler(carom_log_fn fn, void *arg);
/* Messages below `level` are dropped. The initial level comes from the
 * environment variable CAROM_LOG (debug|info|warning|error|off), default off
 * for the stderr sink: a library is silent unless asked. */
CAROM_EXTERN void carom_log_set_level(carom_log_level_t level);
CAROM_EXTERN carom_log_level_t carom_log_get_level(void);
/* Shortcut for billiard's log_to_stderr(level). */
CAROM_EXTERN void carom_log_to_stderr(carom_log_level_t level);
/* Emit a message through the current sink (also used by carom itself). */
CAROM_EXTERN void carom_log(carom_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- fork bookkeeping ---- */

/* carom caches the calling process's pid and thread ids. It refreshes the
 * caches itself when fork() runs through the C library (pthread_atfork). A
 * program that creates processes with raw clone()/syscall(SYS_fork) must call
 * this in the child before using carom. async-signal-safe. */
CAROM_EXTERN void carom_after_fork_child(void);

#ifdef __cplusplus
}
#endif
#endif /* CAROM_COMMON_H */
