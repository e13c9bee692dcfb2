/* carom/pool.h — a fault-tolerant process pool (billiard's Pool, in C).
 *
 * A task is a C function run in a worker process:
 *
 *   static int square(carom_task_ctx_t *ctx, const void *arg, size_t len) {
 *     int64_t x; memcpy(&x, arg, sizeof x); x *= x;
 *     return carom_task_return(ctx, &x, sizeof x);   // 0, or a negative error
 *   }
 *
 * Arguments and results are byte strings. A task fails by returning a negative
 * code (optionally after carom_task_fail() with a message); its error reaches
 * the caller as that code plus the message.
 *
 * Workers are forked from a single-threaded template process that the pool
 * forks at creation, before any pool thread starts, so replacements are never
 * forked from a multi-threaded process. Function pointers are therefore valid
 * in workers (same program image). One supervisor thread in the parent moves
 * tasks to workers and results back through shared-memory channels, watches
 * worker deaths and runs callbacks.
 *
 * Faults: a worker that dies while running a task (any signal, exit(), the
 * OOM killer) fails that task with CAROM_EWORKERLOST (exit status in the job),
 * tasks dispatched to it but not started are re-dispatched, the worker is
 * replaced, and the pool keeps serving: it has no "broken" state.
 *
 * Thread safety: every carom_pool_* and carom_job_* call may be made from any
 * thread of the process that created the pool. A pool used in a forked child
 * fails with CAROM_EFORKED. Callbacks run on the pool's supervisor thread:
 * they must be short and must not wait on this pool (no carom_job_get of an
 * unfinished job, no carom_pool_join/free); they may submit new work.
 */
#ifndef CAROM_POOL_H
#define CAROM_POOL_H

#include "carom/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct carom_pool carom_pool_t;
typedef struct carom_job carom_job_t;
typedef struct carom_task_ctx carom_task_ctx_t;

/* ------------------------------------------------------------ worker side */

/* A task. Returns 0 on success or a negative code on failure. */
typedef int (*carom_task_fn)(carom_task_ctx_t *ctx, const void *arg, size_t len);

/* Append bytes to the task's result (may be called several times). 0 or
 * -ENOMEM. */
CAROM_EXTERN int carom_task_return(carom_task_ctx_t *ctx, const void *data, size_t len);
/* Record an error message for the failing task and return `code` (so a task
 * can `return carom_task_fail(ctx, -EINVAL, "bad input %d", x);`). code must
 * be negative. */
CAROM_EXTERN int carom_task_fail(carom_task_ctx_t *ctx, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* True once the running task's soft time limit has expired. Cheap (one load
 * from shared memory): poll it in long loops and finish early. A task that
 * then fails (returns a negative code) fails with CAROM_ESOFTTIMELIMIT; one
 * that returns 0 succeeds with what it returned. */
CAROM_EXTERN bool carom_task_soft_expired(carom_task_ctx_t *ctx);
/* Register a hook run when the soft limit expires (from the worker's SIGUSR1
 * handler: it must be async-signal-safe, e.g. set a flag or write to a pipe).
 * Valid for the running task only. The signal also interrupts blocking system
 * calls with EINTR. */
CAROM_EXTERN void carom_task_on_soft_timeout(carom_task_ctx_t *ctx, void (*hook)(void *arg),
                                             void *arg);

/* ------------------------------------------------------------------ pool */

/* Why a worker ended (reported to on_process_down / on_process_exit). */
typedef enum {
  CAROM_WORKER_EXITED = 1,    /* exited on its own (exit code in `exitcode`; 158: it had
                                 just finished a message the pool was killing it for (time
                                 limit, job terminate) and stopped before running the next) */
  CAROM_WORKER_SIGNALED,      /* killed by a signal (exitcode = -signal) */
  CAROM_WORKER_RECYCLED,      /* planned: maxtasksperchild reached */
  CAROM_WORKER_INIT_FAILED,   /* its initializer failed */
  CAROM_WORKER_SHUTDOWN,      /* stopped by close/join/terminate (after close, an idle
                                 worker exits 0 when told; one still starting gets SIGTERM,
                                 one that does not leave within 1 s SIGKILL; terminate:
                                 SIGKILL) */
} carom_worker_end_t;

typedef struct {
  pid_t pid;
  carom_worker_end_t how;
  int exitcode;      /* exit status, or minus the signal number (Python's convention) */
  uint64_t job_id;   /* job it was running when it ended, 0 if none */
} carom_worker_exit_t;

typedef struct {
  size_t size;        /* sizeof(carom_pool_opts_t): set it (ABI growth) */
  int processes;      /* workers; 0 = carom_cpu_count() (carom/process.h: affinity and cgroup aware) */
  /* Run in every worker before its first task; nonzero = failure (message via
   * the buffer: write up to `msg_len` bytes, NUL-terminated). Failing workers
   * are respawned with exponential backoff (0.1 s doubling to 5 s); after
   * `init_retries` consecutive failures with no healthy worker, pending and new
   * tasks fail with CAROM_EINITIALIZER until a worker starts cleanly. */
  int (*initializer)(void *arg, char *msg, size_t msg_len);
  void *initarg;
  unsigned init_retries;        /* default 3 */
  unsigned maxtasksperchild;    /* 0 = unlimited */
  unsigned prefetch;            /* messages queued per worker beyond the running one; default 1,
                                   at most 31 (tasks under 20 µs get up to 32 queued anyway) */
  size_t channel_bytes;         /* shared-memory channel size per direction per worker; default
                                   256 KiB (a power of two, 16 KiB to 4 GiB); messages over a
                                   quarter of it are streamed in pieces. A channel uses (and
                                   faults in) only its first 64 KiB until a message over 16 KiB
                                   passes through it */
  bool catch_sigint;            /* false (default): workers ignore SIGINT */
  /* Time limits for every task, in seconds, counted from the moment a worker
   * starts the task (0 = none). Per-task values in carom_submit_opts_t win.
   * soft: the worker gets SIGUSR1 and carom_task_soft_expired() turns true.
   * hard: the worker and every process it started are SIGKILLed; the task
   * fails with CAROM_ETIMELIMIT; the worker is replaced. Both are enforced
   * within a few ms of expiry. For map/imap a limit applies to each chunk. */
  double soft_timeout;
  double timeout;
  /* How long to wait for a dead worker's exit status from the template before
   * accounting for it without one (default 0.2 s). Results a worker published
   * before dying are always delivered. */
  double lost_worker_timeout;
  /* Called on the supervisor thread when a started task has limits, and when
   * a task that had limits ends. */
  void (*on_timeout_set)(carom_job_t *job, double soft, double hard, void *arg);
  void (*on_timeout_cancel)(carom_job_t *job, void *arg);
  /* Owner signals (installed process-wide, only when asked):
   * CAROM_POOL_SIGINT_TERMINATE: SIGINT terminates the pool; jobs end -EINTR.
   * CAROM_POOL_SIGTERM_SHUTDOWN: SIGTERM shuts the pool down with
   * `sigterm_grace` seconds of grace (queued jobs cancelled). The previous
   * handlers are restored by carom_pool_free. */
  unsigned signals;
  double sigterm_grace;
  /* Events, called on the supervisor thread. */
  void (*on_process_up)(pid_t pid, void *arg);
  void (*on_process_down)(const carom_worker_exit_t *exit, void *arg);
  void (*on_process_exit)(const carom_worker_exit_t *exit, void *arg);
  void *event_arg;
  /* How workers are made (Python's start methods):
   * NULL or "fork": every worker is forked from the pool's single-threaded
   *   template process, itself forked from the creator at creation: workers
   *   see the creator's memory as it was then; worker forks cost what forking
   *   the creator costs (it grows with the creator's mapped memory).
   * "forkserver": the template is a fresh exec of the program (/proc/self/exe,
   *   taken over by libcarom's constructor before main() runs) and forks every
   *   worker: workers see the program's static state only, never the
   *   creator's; worker forks are cheap whatever the creator's size, and
   *   nothing is forked from a process with threads. Costs ~1 exec at create.
   * "spawn": as forkserver, and every worker is a fresh exec of its own.
   * Under forkserver and spawn, task and initializer functions must live in
   * the program or a library loaded at its start (they travel as object +
   * offset; a function elsewhere, e.g. in a library dlopen()ed later, fails
   * the submission with -ENOENT), and the initializer's argument must be
   * bytes (initarg_len). Other names: -EINVAL. */
  const char *start_method;
  /* Back-pressure (deadpool's max_backlog): at most this many jobs submitted
   * and not yet finished (0: no bound). A submission beyond it waits for one
   * to finish (or fails with -EAGAIN when carom_submit_opts_t.nowait is set,
   * and always when made from a callback, which must not block the pool);
   * CAROM_ECLOSED if the pool stops accepting meanwhile. */
  unsigned max_backlog;
  /* When nonzero, initarg points to initarg_len bytes, copied at creation and
   * handed to every worker's initializer (required for a non-NULL initarg
   * under forkserver and spawn, where pointers do not cross exec). */
  size_t initarg_len;
} carom_pool_opts_t;

/* Create a pool (opts may be NULL for defaults). Forks the template process
 * and starts the supervisor thread; workers start asynchronously. */
CAROM_EXTERN int carom_pool_create(const carom_pool_opts_t *opts, carom_pool_t **out);
/* No new submissions (CAROM_ECLOSED afterwards); queued work still runs and
 * workers exit when it is done. */
CAROM_EXTERN int carom_pool_close(carom_pool_t *pool);
/* Stop now: kill every worker (SIGKILL to its process group); queued jobs end
 * CAROM_ECANCELLED, running ones CAROM_ETERMINATED. Returns once all workers are
 * reaped. */
CAROM_EXTERN int carom_pool_terminate(carom_pool_t *pool);
/* Bounded shutdown: stop accepting; queued tasks end CAROM_ECANCELLED now
 * (cancel_pending) or when the grace ends; running tasks may finish until
 * `grace` (an absolute deadline; NULL: no bound; past: none), then their
 * workers are killed and they end CAROM_ETERMINATED. Returns once every worker
 * is reaped: within grace + about 1 s. The four cases of deadpool's
 * shutdown(wait, cancel_futures): (NULL, false) = close + join; (NULL, true)
 * = cancel queued, wait for running; (past, false) and (past, true) =
 * terminate now. */
CAROM_EXTERN int carom_pool_shutdown(carom_pool_t *pool, const struct timespec *grace,
                                     bool cancel_pending);
/* Wait until a closed or terminated pool has finished its work and its
 * workers have exited. -EINVAL if the pool is still open; -ETIMEDOUT. */
CAROM_EXTERN int carom_pool_join(carom_pool_t *pool, const struct timespec *deadline);
/* Terminate (if needed), join, release everything. Accepts NULL. Job handles
 * the caller still holds stay valid (their jobs ended) until released. */
CAROM_EXTERN void carom_pool_free(carom_pool_t *pool);
/* Kill the worker with this pid (signal sig) as carom_job_terminate does for
 * the job it runs (billiard's terminate_job). -ESRCH if it is not a worker. */
CAROM_EXTERN int carom_pool_terminate_job(carom_pool_t *pool, pid_t pid, int sig);
/* Worker pids currently alive; returns how many (up to max written). */
CAROM_EXTERN int carom_pool_workers(carom_pool_t *pool, pid_t *pids, int max);

/* ------------------------------------------------------------ submission */

typedef struct {
  size_t size;   /* sizeof(carom_submit_opts_t) */
  /* Called on the supervisor thread when the job succeeded / failed / was
   * accepted by a worker (pid). The job handle stays valid during the call. */
  void (*callback)(carom_job_t *job, void *arg);
  void (*error_callback)(carom_job_t *job, int code, void *arg);
  void (*accept_callback)(carom_job_t *job, pid_t pid, void *arg);
  void *arg;
  /* Per-task limits in seconds (0: the pool's); negative: no limit. */
  double soft_timeout;
  double timeout;
  /* Called on the supervisor thread when the hard limit kills this task. */
  void (*timeout_callback)(carom_job_t *job, double soft, double hard, void *arg);
  /* With max_backlog: fail with -EAGAIN instead of waiting for room. */
  bool nowait;
  /* on_worker_lost policy: 0 = FAIL (default); n = RETRY(n): an item whose
   * worker died while running it runs again, up to n more times, before it
   * fails with CAROM_EWORKERLOST ("attempt n+1 of n+1"). The other started
   * items of its chunk run again too. Time limits and terminations are never
   * retried. */
  unsigned worker_lost_retries;
} carom_submit_opts_t;

enum { CAROM_POOL_SIGINT_TERMINATE = 1, CAROM_POOL_SIGTERM_SHUTDOWN = 2 };

/* Run fn(arg) in a worker and wait for it. On success 0 and, when result is
 * not NULL, *result = malloc'd bytes (free() them) and *result_len. On
 * failure the task's negative code (or CAROM_EWORKERLOST, ...). */
CAROM_EXTERN int carom_pool_apply(carom_pool_t *pool, carom_task_fn fn, const void *arg,
                                  size_t len, void **result, size_t *result_len);
/* Submit fn(arg) (arg is copied); *job receives a handle to release with
 * carom_job_release(). opts may be NULL. An argument (or map item) over
 * 4 GiB - 4 KiB fails with -EMSGSIZE; results have the same bound. */
CAROM_EXTERN int carom_pool_apply_async(carom_pool_t *pool, carom_task_fn fn, const void *arg,
                                        size_t len, const carom_submit_opts_t *opts,
                                        carom_job_t **job);
/* map_async: fn over n items (copied at submission), sent to workers in chunks
 * of `chunksize` items (0: Python's default, ceil(n / (4 * processes)),
 * capped so that one chunk's message fits a single channel frame, a quarter
 * of channel_bytes, which keeps chunks zero-copy).
 * Results keep item order: carom_job_item(job, i, ...). A worker lost in the
 * middle of a chunk fails the items of that chunk that had started (their
 * results died with it) with CAROM_EWORKERLOST; the chunk's unstarted items
 * run elsewhere. starmap is map: pack several arguments into one item. */
CAROM_EXTERN int carom_pool_map_async(carom_pool_t *pool, carom_task_fn fn,
                                      const struct iovec *items, size_t n, size_t chunksize,
                                      const carom_submit_opts_t *opts, carom_job_t **job);
/* map: map_async + wait. Returns 0 when every item succeeded, else the first
 * failed item's code; *job holds the per-item results either way. */
CAROM_EXTERN int carom_pool_map(carom_pool_t *pool, carom_task_fn fn, const struct iovec *items,
                                size_t n, size_t chunksize, carom_job_t **job);
/* imap / imap_unordered: like map_async, consumed with carom_job_next().
 * map_async and imap copy the items before returning (the caller may reuse
 * them at once); from 128 KiB of items on, the job is queued first and
 * workers start on the chunks already copied while the rest is copied. */
CAROM_EXTERN int carom_pool_imap(carom_pool_t *pool, carom_task_fn fn, const struct iovec *items,
                                 size_t n, size_t chunksize, bool ordered, carom_job_t **job);

/* ------------------------------------------------------------ job handles */

/* Wait for the whole job. 0 if it succeeded, else its (first) error code;
 * -ETIMEDOUT if the deadline passed first (the job keeps running). */
CAROM_EXTERN int carom_job_wait(carom_job_t *job, const struct timespec *deadline);
/* Wait, then give the result of a single-task job (data owned by the job,
 * valid until release). Returns the task's code. */
CAROM_EXTERN int carom_job_get(carom_job_t *job, const struct timespec *deadline,
                               const void **data, size_t *len);
CAROM_EXTERN bool carom_job_ready(carom_job_t *job);
/* 1 succeeded, 0 failed, CAROM_ENOTREADY while not ready (Python raises). */
CAROM_EXTERN int carom_job_successful(carom_job_t *job);
/* True once a worker has started (any part of) the job and the supervisor has
 * seen it: at once while the pool is busy; when the pool idles (its
 * supervisor sleeps between events) within 100 ms, unless the job has an
 * accept_callback or time limits, which make the worker wake the supervisor
 * as the job starts. */
CAROM_EXTERN bool carom_job_accepted(carom_job_t *job);
/* When a worker first started the job, on carom_now_ns()'s clock (read by the
 * worker itself, so exact); 0 before that. Time limits count from here. */
CAROM_EXTERN uint64_t carom_job_start_time(carom_job_t *job);
/* Items in the job (1 for apply). */
CAROM_EXTERN size_t carom_job_count(carom_job_t *job);
/* Result of item i of a finished job: its code; data and len receive the result bytes on
 * success, the error message (NUL-terminated) on failure. */
CAROM_EXTERN int carom_job_item(carom_job_t *job, size_t i, const void **data, size_t *len);
/* imap iteration: the next result in order (ordered) or completion order.
 * Returns the item's code and sets *index; CAROM_EEOF when all were returned;
 * -ETIMEDOUT when none arrived by the deadline. Several threads may call it on
 * one job: each item goes to exactly one of them. The first thread to call it
 * takes items without atomic read-modify-writes; when a second one joins, the
 * job switches (once, with a membarrier(2)) to a CAS per item. */
CAROM_EXTERN int carom_job_next(carom_job_t *job, const struct timespec *deadline, size_t *index,
                                const void **data, size_t *len);
/* Pids of workers that ran (part of) the job; returns how many (<= max). */
CAROM_EXTERN int carom_job_pids(carom_job_t *job, pid_t *pids, int max);
/* The job's id (also in carom_worker_exit_t.job_id). */
CAROM_EXTERN uint64_t carom_job_id(carom_job_t *job);
/* Cancel: items not yet started end CAROM_ECANCELLED. 0, or -EBUSY when
 * every item had already started or ended. */
CAROM_EXTERN int carom_job_cancel(carom_job_t *job);
/* Send `signum` to the worker(s) running the job; the job's running items end
 * CAROM_ETERMINATED (the workers are replaced); unstarted items are cancelled. */
CAROM_EXTERN int carom_job_terminate(carom_job_t *job, int signum);
/* Drop the caller's reference. Accepts NULL. */
CAROM_EXTERN void carom_job_release(carom_job_t *job);


#ifdef __cplusplus
}
#endif
#endif /* CAROM_POOL_H */
