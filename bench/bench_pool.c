/* bench/bench_pool.c — the Pool's throughput and latency figures (issue: pool
 * benchmarks), with this machine's raw fork+_exit+waitpid rate measured in the
 * same run as the bound for worker recycling. Python peers (multiprocessing,
 * billiard) doing the same work come from bench/peers (peer.* figures). */
#include "bench.h"
#include "carom/pool.h"

#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int trivial(carom_task_ctx_t *ctx, const void *arg, size_t len) {
  int64_t x;
  memcpy(&x, arg, sizeof x);
  x = x * 2 + 1;
  return carom_task_return(ctx, &x, sizeof x);
}

/* Give memory freed by earlier benchmarks of this process back to the kernel:
 * fork copies the page tables of everything mapped, so a pool created by a
 * bloated bench process would measure the bench, not the pool. */
static void slim(void) { malloc_trim(0); }

static carom_pool_t *pool_new_method(unsigned maxtasks, const char *method) {
  slim();
  carom_pool_opts_t o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.processes = 2;
  o.maxtasksperchild = maxtasks;
  o.start_method = method;
  carom_pool_t *p;
  if (carom_pool_create(&o, &p) != 0) {
    fprintf(stderr, "bench pool: create failed\n");
    exit(1);
  }
  return p;
}

static carom_pool_t *pool_new(unsigned maxtasks) { return pool_new_method(maxtasks, NULL); }

/* A new pool as the Python peers time it (bench/peers/mp_peer.py, _pool):
 * created, then one task run to its result ("workers up") before the clock
 * starts. Python's Pool() forks its workers before it returns; carom_pool_create
 * returns while the template still forks them. */
static carom_pool_t *pool_up(void) {
  carom_pool_t *p = pool_new(0);
  int64_t x = 0;
  void *res;
  size_t len;
  if (carom_pool_apply(p, trivial, &x, sizeof x, &res, &len) != 0) exit(1);
  free(res);
  return p;
}

static struct iovec *make_items(size_t n, int64_t **store) {
  *store = malloc(n * sizeof **store);
  struct iovec *it = malloc(n * sizeof *it);
  if (!*store || !it) abort();
  for (size_t i = 0; i < n; i++) {
    (*store)[i] = (int64_t)i;
    it[i] = (struct iovec){&(*store)[i], sizeof(int64_t)};
  }
  return it;
}

/* Item i of job j must be trivial(x) = 2x + 1. */
static void check_item(carom_job_t *j, size_t i, int64_t x) {
  const void *d;
  size_t n;
  int64_t v = 0;
  if (carom_job_item(j, i, &d, &n) == 0 && n == sizeof v) memcpy(&v, d, sizeof v);
  if (v != x * 2 + 1) {
    fprintf(stderr, "bench pool: wrong result for item %zu\n", i);
    exit(1);
  }
}

/* One map on a fresh pool (the peers' shape), then `warm` more on the same
 * pool, reported as <figure>.warm (the steady state of a long-lived pool). */
static void map_run(bench_ctx_t *ctx, const char *figure, size_t n, size_t chunksize, int warm) {
  carom_pool_t *p = pool_up();
  int64_t *store;
  struct iovec *items = make_items(n, &store);
  char params[96], warm_name[128];
  snprintf(params, sizeof params, "{\"items\": %zu, \"chunksize\": %zu, \"processes\": 2}", n, chunksize);
  snprintf(warm_name, sizeof warm_name, "%s.warm", figure);
  double best = 0;
  for (int r = 0; r <= warm; r++) {
    carom_job_t *j;
    uint64_t t0 = bench_now_ns();
    if (carom_pool_map(p, trivial, items, n, chunksize, &j) != 0) exit(1);
    uint64_t t1 = bench_now_ns();
    for (size_t i = 0; i < n; i++) check_item(j, i, (int64_t)i);
    carom_job_release(j);
    double rate = (double)n / ((double)(t1 - t0) / 1e9);
    if (r == 0) bench_report(ctx, figure, rate, "items/s", params);
    else if (rate > best) best = rate;
  }
  if (warm) bench_report(ctx, warm_name, best, "items/s", params);
  carom_pool_free(p);
  free(items);
  free(store);
}

static void pool_map(bench_ctx_t *ctx) {
  map_run(ctx, "pool.map.1M.default_chunks", bench_scale(ctx, 1000000), 0, 4);
  map_run(ctx, "pool.map.100k.chunksize1", bench_scale(ctx, 100000), 1, 0);
}

static void pool_apply_async(bench_ctx_t *ctx) {
  carom_pool_t *p = pool_up();
  size_t n = bench_scale(ctx, 50000);
  carom_job_t **jobs = malloc(n * sizeof *jobs);
  uint64_t t0 = bench_now_ns();
  for (size_t i = 0; i < n; i++) {
    int64_t x = (int64_t)i;
    if (carom_pool_apply_async(p, trivial, &x, sizeof x, NULL, &jobs[i]) != 0) exit(1);
  }
  for (size_t i = 0; i < n; i++) {
    if (carom_job_wait(jobs[i], NULL) != 0) exit(1);
  }
  uint64_t t1 = bench_now_ns();
  for (size_t i = 0; i < n; i++) {
    check_item(jobs[i], 0, (int64_t)i);
    carom_job_release(jobs[i]);
  }
  free(jobs);
  char params[64];
  snprintf(params, sizeof params, "{\"tasks\": %zu, \"processes\": 2}", n);
  bench_report(ctx, "pool.apply_async.pipelined", (double)n / ((double)(t1 - t0) / 1e9), "tasks/s", params);
  carom_pool_free(p);
}

/* Round trips: apply_async(...).get() one at a time (the Python peer's loop). */
static void pool_apply_rtt(bench_ctx_t *ctx) {
  carom_pool_t *p = pool_up();
  size_t n = bench_scale(ctx, 20000);
  uint64_t t0 = bench_now_ns();
  for (size_t i = 0; i < n; i++) {
    int64_t x = (int64_t)i;
    carom_job_t *j;
    if (carom_pool_apply_async(p, trivial, &x, sizeof x, NULL, &j) != 0) exit(1);
    if (carom_job_wait(j, NULL) != 0) exit(1);
    check_item(j, 0, x);
    carom_job_release(j);
  }
  uint64_t t1 = bench_now_ns();
  char params[64];
  snprintf(params, sizeof params, "{\"tasks\": %zu, \"processes\": 2}", n);
  bench_report(ctx, "pool.apply_async.rtt", (double)n / ((double)(t1 - t0) / 1e9), "tasks/s", params);
  carom_pool_free(p);
}

static int sleeper(carom_task_ctx_t *ctx, const void *arg, size_t len) {
  (void)ctx, (void)arg, (void)len;
  for (;;) pause();
  return 0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* How late a hard time limit is enforced: from the moment the worker started
 * the task + the limit, to the failure reaching the caller's wait(). */
static void pool_timeout_latency(bench_ctx_t *ctx) {
  slim();
  carom_pool_opts_t o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.processes = 1;
  o.timeout = 0.05;
  carom_pool_t *p;
  if (carom_pool_create(&o, &p) != 0) exit(1);
  size_t n = ctx->quick ? 10 : 100;
  uint64_t *late = malloc(n * sizeof *late);
  for (size_t i = 0; i < n; i++) {
    carom_job_t *j;
    if (carom_pool_apply_async(p, sleeper, NULL, 0, NULL, &j) != 0) exit(1);
    int rc = carom_job_wait(j, NULL);
    uint64_t acc = carom_job_start_time(j); /* the worker's own start stamp */
    if (rc != CAROM_ETIMELIMIT || acc == 0) {
      fprintf(stderr, "bench pool: a task past its limit did not fail with ETIMELIMIT\n");
      exit(1);
    }
    uint64_t end = bench_now_ns();
    late[i] = end - acc - 50000000ull;
    carom_job_release(j);
  }
  qsort(late, n, sizeof *late, cmp_u64);
  char params[80];
  snprintf(params, sizeof params, "{\"timeouts\": %zu, \"limit_s\": 0.05}", n);
  bench_report(ctx, "pool.timeout_latency", late[n / 2] / 1e6, "ms", params);
  bench_report(ctx, "pool.timeout_latency.max", late[n - 1] / 1e6, "ms", params);
  free(late);
  carom_pool_free(p);
}

/* imap_unordered on a fresh pool (the peers' shape), then 4 more on the same
 * pool: the best of those is pool.imap_unordered.warm. Every item is taken
 * through carom_job_next and counted. */
static void pool_imap_unordered(bench_ctx_t *ctx) {
  carom_pool_t *p = pool_up();
  size_t n = bench_scale(ctx, 200000);
  int64_t *store;
  struct iovec *items = make_items(n, &store);
  char params[80];
  snprintf(params, sizeof params, "{\"items\": %zu, \"chunksize\": 100, \"processes\": 2}", n);
  double best = 0;
  for (int r = 0; r <= 4; r++) {
    carom_job_t *j;
    uint64_t t0 = bench_now_ns();
    if (carom_pool_imap(p, trivial, items, n, 100, false, &j) != 0) exit(1);
    size_t got = 0, idx;
    const void *d;
    size_t len;
    while (carom_job_next(j, NULL, &idx, &d, &len) == 0) got++;
    uint64_t t1 = bench_now_ns();
    if (got != n) {
      fprintf(stderr, "bench pool: imap delivered %zu of %zu\n", got, n);
      exit(1);
    }
    carom_job_release(j);
    double rate = (double)n / ((double)(t1 - t0) / 1e9);
    if (r == 0) bench_report(ctx, "pool.imap_unordered", rate, "items/s", params);
    else if (rate > best) best = rate;
  }
  bench_report(ctx, "pool.imap_unordered.warm", best, "items/s", params);
  carom_pool_free(p);
  free(items);
  free(store);
}

/* n tasks on a maxtasksperchild=1 pool: tasks/s. */
static double recycle_rate(size_t n, const char *method) {
  carom_pool_t *p = pool_new_method(1, method);
  carom_job_t **jobs = malloc(n * sizeof *jobs);
  uint64_t t0 = bench_now_ns();
  for (size_t i = 0; i < n; i++) {
    int64_t x = 0;
    if (carom_pool_apply_async(p, trivial, &x, sizeof x, NULL, &jobs[i]) != 0) exit(1);
  }
  for (size_t i = 0; i < n; i++) {
    if (carom_job_wait(jobs[i], NULL) != 0) exit(1);
    carom_job_release(jobs[i]);
  }
  uint64_t t1 = bench_now_ns();
  free(jobs);
  carom_pool_free(p);
  return (double)n / ((double)(t1 - t0) / 1e9);
}

static void pool_maxtasks1(bench_ctx_t *ctx) {
  size_t n = bench_scale(ctx, 2000);
  double fork_rate = recycle_rate(n, NULL);
  double fs_rate = recycle_rate(n, "forkserver");
  /* The floor: fork + _exit + waitpid, one at a time, same run. */
  slim();
  uint64_t t2 = bench_now_ns();
  for (size_t i = 0; i < n; i++) {
    pid_t c = fork();
    if (c == 0) _exit(0);
    waitpid(c, NULL, 0);
  }
  uint64_t t3 = bench_now_ns();
  char params[64];
  snprintf(params, sizeof params, "{\"tasks\": %zu, \"processes\": 2}", n);
  bench_report(ctx, "pool.maxtasksperchild1", fork_rate, "tasks/s", params);
  char fs_params[96];
  snprintf(fs_params, sizeof fs_params,
           "{\"tasks\": %zu, \"processes\": 2, \"start_method\": \"forkserver\"}", n);
  bench_report(ctx, "pool.maxtasksperchild1.forkserver", fs_rate, "tasks/s", fs_params);
  bench_report(ctx, "raw.fork_exit_wait", (double)n / ((double)(t3 - t2) / 1e9), "forks/s", params);
  bench_ratio("pool.maxtasksperchild1 / raw fork+exit+wait (target >= 0.7)",
              "pool.maxtasksperchild1", "raw.fork_exit_wait");
  bench_ratio("pool.maxtasksperchild1.forkserver / raw fork+exit+wait (target >= 0.7)",
              "pool.maxtasksperchild1.forkserver", "raw.fork_exit_wait");
}

static double start_stop_ms(int reps, const char *method) {
  uint64_t t0 = bench_now_ns();
  for (int r = 0; r < reps; r++) {
    carom_pool_t *p = pool_new_method(0, method);
    int64_t x = 1;
    void *res;
    size_t len;
    if (carom_pool_apply(p, trivial, &x, sizeof x, &res, &len) != 0) exit(1);
    free(res);
    carom_pool_close(p);
    carom_pool_join(p, NULL);
    carom_pool_free(p);
  }
  uint64_t t1 = bench_now_ns();
  return (double)(t1 - t0) / 1e6 / reps;
}

static void pool_start_stop(bench_ctx_t *ctx) {
  int reps = ctx->quick ? 20 : 100;
  bench_report(ctx, "pool.start_task_shutdown", start_stop_ms(reps, NULL), "ms",
               "{\"processes\": 2}");
  bench_report(ctx, "pool.start_task_shutdown.forkserver", start_stop_ms(reps, "forkserver"),
               "ms", "{\"processes\": 2, \"start_method\": \"forkserver\"}");
}

CAROM_BENCH("pool", "pool.start_task_shutdown", pool_start_stop)
CAROM_BENCH("pool", "pool.maxtasksperchild1", pool_maxtasks1)
CAROM_BENCH("pool", "pool.map", pool_map)
CAROM_BENCH("pool", "pool.apply_async.pipelined", pool_apply_async)
CAROM_BENCH("pool", "pool.apply_async.rtt", pool_apply_rtt)
CAROM_BENCH("pool", "pool.timeout_latency", pool_timeout_latency)
CAROM_BENCH("pool", "pool.imap_unordered", pool_imap_unordered)

/* carom vs the Python peers measured in the same run (bench/bench_peers.c).
 * Rates: carom / peer; times: peer / carom. Both read "how many times faster". */
__attribute__((constructor)) static void pool_ratios(void) {
  static const char *libs[] = {"mp", "billiard"};
  char label[128], peer[96];
  for (int i = 0; i < 2; i++) {
    const char *l = libs[i];
#define RATIO(fig, pname, what)                                                       \
  snprintf(peer, sizeof peer, "peer.%s.pool.%s", l, pname);                           \
  snprintf(label, sizeof label, "speedup vs %s: %s", l, what);                        \
  bench_ratio(label, fig, peer);
    RATIO("pool.map.1M.default_chunks", "map", "pool.map (target >= 20)")
    RATIO("pool.map.100k.chunksize1", "map.chunksize1", "pool.map chunksize 1 (target >= 20)")
    RATIO("pool.apply_async.rtt", "apply_async", "pool.apply_async round trips (target >= 20)")
    RATIO("pool.imap_unordered", "imap_unordered", "pool.imap_unordered (target >= 20)")
    RATIO("pool.maxtasksperchild1", "maxtasks1", "maxtasksperchild=1 (target >= 10)")
#undef RATIO
    snprintf(peer, sizeof peer, "peer.%s.pool.lifecycle", l);
    snprintf(label, sizeof label, "speedup vs %s: pool start+task+shutdown (target >= 10)", l);
    bench_ratio(label, peer, "pool.start_task_shutdown");
  }
  bench_ratio("timeout latency: billiard / carom (median)", "peer.billiard.pool.timeout_latency",
              "pool.timeout_latency");
}
