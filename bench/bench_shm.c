/* bench/bench_shm.c — shared counters: 2 processes incrementing one Value.
 *   value.counter2.locked   carom Value 'q' with its own RLock: acquire,
 *                           get_locked, +1, set_locked, release (what Python's
 *                           `with v.get_lock(): v.value += 1` does)
 *   value.counter2.atomic   carom_value_fetch_add on the same kind of Value
 *   value.counter2.python   multiprocessing.Value('q') with get_lock() and
 *                           value += 1, run by /usr/bin/python3 as a
 *                           subprocess that prints its own rate
 * Each figure is increments/s summed over both processes, timed from a start
 * signal to the last worker's exit; counts are checked exactly. */
#include "bench.h"
#include "carom/shm.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

enum { KIND_LOCKED, KIND_ATOMIC };

static double counter2(carom_heap_t *h, int kind, uint64_t per_proc) {
  carom_value_opts_t o = {.size = sizeof o, .heap = h};
  carom_value_t *v = NULL, *go = NULL;
  if (carom_value_create('q', NULL, &o, &v) != 0 || carom_rawvalue_create('i', NULL, h, &go) != 0)
    abort();
  pid_t kids[2];
  for (int k = 0; k < 2; k++) {
    kids[k] = fork();
    if (kids[k] < 0) abort();
    if (kids[k] == 0) {
      int64_t g = 0;
      while (carom_value_atomic_load(go, &g) == 0 && g == 0) {
      }
      for (uint64_t i = 0; i < per_proc; i++) {
        if (kind == KIND_ATOMIC) {
          carom_value_fetch_add(v, 1, NULL);
        } else {
          int64_t x;
          carom_value_acquire(v, NULL);
          carom_value_get_locked(v, &x);
          x++;
          carom_value_set_locked(v, &x);
          carom_value_release(v);
        }
      }
      _exit(0);
    }
  }
  uint64_t t0 = bench_now_ns();
  carom_value_atomic_store(go, 1);
  for (int k = 0; k < 2; k++) waitpid(kids[k], NULL, 0);
  uint64_t t1 = bench_now_ns();
  int64_t total = 0;
  carom_value_atomic_load(v, &total);
  if ((uint64_t)total != 2 * per_proc) {
    fprintf(stderr, "bench shm: lost increments (%lld of %llu)\n", (long long)total,
            (unsigned long long)(2 * per_proc));
    exit(1);
  }
  carom_value_free(v);
  carom_value_free(go);
  return (double)(2 * per_proc) / ((double)(t1 - t0) / 1e9);
}

static const char py_script[] =
    "import multiprocessing as mp, sys, time\n"
    "def work(v, go, n):\n"
    "    go.wait()\n"
    "    for _ in range(n):\n"
    "        with v.get_lock():\n"
    "            v.value += 1\n"
    "if __name__ == '__main__':\n"
    "    n = int(sys.argv[1])\n"
    "    ctx = mp.get_context('fork')\n"
    "    v = ctx.Value('q', 0); go = ctx.Event()\n"
    "    ps = [ctx.Process(target=work, args=(v, go, n)) for _ in range(2)]\n"
    "    for p in ps: p.start()\n"
    "    t0 = time.perf_counter(); go.set()\n"
    "    for p in ps: p.join()\n"
    "    t = time.perf_counter() - t0\n"
    "    assert v.value == 2 * n, v.value\n"
    "    print(2 * n / t)\n";

/* Rate printed by the Python peer, or < 0 (and *why) if it could not run. The
 * run is bounded: a wedged peer is killed with its process group. */
static double python_counter2(uint64_t per_proc, double timeout_s, const char **why) {
  *why = "python3 multiprocessing run failed";
  char path[] = "/tmp/carom-bench-shm-XXXXXX.py";
  int fd = mkstemps(path, 3);
  if (fd < 0) return -1;
  if (write(fd, py_script, sizeof py_script - 1) != (ssize_t)(sizeof py_script - 1)) {
    close(fd);
    unlink(path);
    return -1;
  }
  close(fd);
  char n[24], out[256];
  snprintf(n, sizeof n, "%llu", (unsigned long long)per_proc);
  char *argv[] = {"/usr/bin/python3", path, n, NULL};
  int rc = bench_run_capture(argv, timeout_s, out, sizeof out);
  unlink(path);
  double rate = -1;
  if (rc == -ETIMEDOUT) *why = "peer timed out";
  else if (rc != 0 || sscanf(out, "%lf", &rate) != 1) rate = -1;
  return rate;
}

static void shm_counter2(bench_ctx_t *ctx) {
  carom_heap_t *h = NULL;
  if (carom_heap_create(1 << 20, &h) != 0) abort();
  const uint64_t n = bench_scale(ctx, 2000000);
  char params[80];
  snprintf(params, sizeof params, "{\"procs\": 2, \"per_proc\": %llu}", (unsigned long long)n);
  bench_report(ctx, "value.counter2.locked", counter2(h, KIND_LOCKED, n), "incr/s", params);
  bench_report(ctx, "value.counter2.atomic", counter2(h, KIND_ATOMIC, n), "incr/s", params);
  bench_ratio("value.counter2 atomic/locked (higher is better)", "value.counter2.atomic",
              "value.counter2.locked");
  carom_heap_destroy(h);

  if (access("/usr/bin/python3", X_OK) != 0) {
    bench_skip(ctx, "value.counter2.python", "peer not installed (/usr/bin/python3)");
    return;
  }
  /* Python is ~100x slower per increment: a smaller count, same shape. */
  const uint64_t pn = bench_scale(ctx, 100000);
  const char *why;
  double r = python_counter2(pn, ctx->quick ? 30 : 120, &why);
  if (r < 0) {
    bench_skip(ctx, "value.counter2.python", why);
    return;
  }
  snprintf(params, sizeof params, "{\"procs\": 2, \"per_proc\": %llu}", (unsigned long long)pn);
  bench_report(ctx, "value.counter2.python", r, "incr/s", params);
  bench_ratio("value.counter2 carom locked/python (higher is better)", "value.counter2.locked",
              "value.counter2.python");
  bench_ratio("value.counter2 carom atomic/python (higher is better)", "value.counter2.atomic",
              "value.counter2.python");
}

CAROM_BENCH("shm", "value.counter2", shm_counter2)
