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

#define CAROM_BENCH(group, name, fn)                                        \
  __attribute__((constructor)) static void bench_reg_##fn(void) {           \
    bench_register(group, name, fn);                                        \
  }

#endif
