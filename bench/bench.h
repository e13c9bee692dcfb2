/* bench/bench.h — how a benchmark plugs into carom-bench.
 *
 * A benchmark is a function that runs its workload once and reports one or
 * more figures with bench_report(). The runner calls it `reps` times and prints,
 * per figure name, the median with min and max over the repetitions.
 *
 *   static void lock_uncontended(bench_ctx_t *ctx) {
 *     ... bench_report(ctx, "lock.uncontended.carom", ns, "ns", "{\"ops\":1000000}");
 *   }
 *   CAROM_BENCH("lock", "lock.uncontended", lock_uncontended)
 *
 * Figures of a peer (pthread, a pipe, Python) measured in the same run are
 * reported like any other; bench_ratio() declares "a / b" pairs that the
 * runner prints as ratios of medians after the table.
 *
 * Command line (see runner.c): carom-bench [--quick] [--json] [--reps N]
 *   [--group G]... [--threads N] [--budget S] [--list] [PATTERN...]
 *
 * ---- Figure names other benchmarks can compare against -------------------
 *
 * Python peers (bench/bench_peers.c runs bench/peers/mp_peer.py with
 * /usr/bin/python3; <lib> is "mp" for multiprocessing or "billiard"). Each is
 * skipped with "peer not installed" when Python or the module is missing, and
 * with "peer failed"/"peer timed out" when the script misbehaves:
 *
 *   peer.<lib>.queue.64B.1to1        Queue put/get, 64 B bytes, 1 producer
 *                                    process → 1 consumer process      items/s
 *   peer.<lib>.pipe.64B.rtt          Pipe(duplex) 64 B round trip         µs
 *   peer.<lib>.pipe.64B.stream       Pipe 64 B send_bytes stream        msgs/s
 *   peer.<lib>.lock.pair             Lock acquire+release, uncontended   ns/pair
 *   peer.<lib>.value.incr2           Value('q') += 1 under get_lock(),
 *                                    2 processes                        incr/s
 *   peer.<lib>.pool.map              Pool(2).map(trivial, range(N))     items/s
 *   peer.<lib>.pool.apply_async      apply_async(...).get() round trips tasks/s
 *   peer.<lib>.pool.imap_unordered   imap_unordered(chunksize=100)      items/s
 *   peer.<lib>.pool.maxtasks1        Pool(2, maxtasksperchild=1), trivial
 *                                    tasks via apply_async              tasks/s
 *   peer.<lib>.pool.lifecycle        Pool(2) start + one task + close/join  ms
 *
 * Lock-free queue shoot-out (bench/shootout.h, bench/bench_queue_peers.c):
 *
 *   shootout.<queue>.<threads|procs>.<P>to<C>.<8|64>B    items/s
 *   shootout.<queue>.<threads|procs>.<8|64>B.rtt.p50     ns per round trip
 *   shootout.<queue>.<threads|procs>.<8|64>B.rtt.p99     ns per round trip
 *
 * with <queue> one of ck_ring_spsc, ck_ring_mpmc, urcu_wfcq, urcu_lfq,
 * ao_stack (LIFO), pipe, socketpair, mq (POSIX message queue), or the name a
 * carom adapter gives itself (e.g. carom_ring_spsc). A queue that cannot run in
 * a mode reports bench_skip("shootout.<queue>.procs", why) once.
 */
#ifndef CAROM_BENCH_H
#define CAROM_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bench_ctx {
  bool quick;     /* --quick: smaller workloads, whole suite < 60 s */
  int rep;        /* which repetition this is (0-based) */
  int nproc;      /* online CPUs */
  void *internal; /* runner state */
  /* Added later; the runner fills them, benchmarks may read them. */
  int max_threads;    /* --threads N: largest thread/process count to scale to
                       * (default nproc, at least 2) */
  uint64_t budget_ns; /* time this benchmark may take over all repetitions
                       * (--budget; 0 = unbounded) */
  uint64_t start_ns;  /* bench_now_ns() when its first repetition began */
} bench_ctx_t;

typedef void (*bench_fn)(bench_ctx_t *ctx);

void bench_register(const char *group, const char *name, bench_fn fn);

/* Report one figure. params_json is a JSON object text or NULL. */
void bench_report(bench_ctx_t *ctx, const char *figure, double value, const char *unit,
                  const char *params_json);
/* Report that a figure could not be measured (e.g. "peer not installed"). */
void bench_skip(bench_ctx_t *ctx, const char *figure, const char *why);
/* Print "num / den" (ratio of medians of two figures) after the table.
 * Declaring the same label again is a no-op, so it may be called from a
 * benchmark function that runs once per repetition. */
void bench_ratio(const char *label, const char *num_figure, const char *den_figure);

/* Wall-clock nanoseconds (CLOCK_MONOTONIC). */
uint64_t bench_now_ns(void);
/* Choose a workload size: n, or n / 10 (at least 1) under --quick. */
uint64_t bench_scale(const bench_ctx_t *ctx, uint64_t n);
/* Nanoseconds left of this benchmark's budget (UINT64_MAX when unbounded,
 * 0 when spent). A benchmark that runs a matrix of cases may stop early; the
 * runner stops repeating a benchmark once its budget is spent (after at least
 * one repetition). */
uint64_t bench_budget_left(const bench_ctx_t *ctx);

/* Run argv (argv[0] a path, no shell) with stdout captured into out (NUL-
 * terminated, truncated to n-1 bytes) and stderr passed through. The child is
 * killed (SIGKILL to its process group) if it runs past timeout_s seconds.
 * Returns the exit status (0..255), -ETIMEDOUT if killed for time, -ENOENT if
 * argv[0] is missing, or another negative errno. */
int bench_run_capture(char *const argv[], double timeout_s, char *out, size_t n);

#define CAROM_BENCH(group, name, fn)                                        \
  __attribute__((constructor)) static void bench_reg_##fn(void) {           \
    bench_register(group, name, fn);                                        \
  }

#endif
