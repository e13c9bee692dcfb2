/* bench/bench_process.c — processes started and joined per second for each
 * start method (create + start + join + free of a target that returns 0),
 * beside the raw floors measured in the same run: fork()+_exit()+waitpid(),
 * and fork()+execve(/bin/true)+waitpid() for spawn. Exit codes are checked. */
#include "bench.h"
#include "carom/process.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int noop(const void *arg, size_t len) {
  (void)arg;
  return (int)len; /* 0: the benchmark passes no argument */
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench process: %s failed (%d)\n", what, rc);
  exit(1);
}

static double carom_rate(const char *method, uint64_t n) {
  carom_context_t *ctx;
  if (carom_get_context(method, &ctx)) die("get_context", -1);
  carom_process_opts_t o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.target = noop;
  o.ctx = ctx;
  /* One warm-up start: the forkserver is started on first use. */
  uint64_t t0 = 0;
  for (uint64_t i = 0; i <= n; i++) {
    if (i == 1) t0 = bench_now_ns();
    carom_process_t *p;
    int rc = carom_process_create(&o, &p);
    if (rc) die("create", rc);
    if ((rc = carom_process_start(p))) die("start", rc);
    if ((rc = carom_process_join(p, NULL))) die("join", rc);
    int code = -1;
    if (carom_process_exitcode(p, &code) || code != 0) die("exit code", code);
    carom_process_free(p);
  }
  return (double)n / ((double)(bench_now_ns() - t0) / 1e9);
}

static double raw_fork_rate(uint64_t n) {
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || st != 0) die("raw fork", pid);
  }
  return (double)n / ((double)(bench_now_ns() - t0) / 1e9);
}

static double raw_exec_rate(uint64_t n) {
  char *argv[] = {"true", NULL};
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid == 0) {
      execve("/bin/true", argv, environ);
      _exit(127);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || st != 0) die("raw exec", pid);
  }
  return (double)n / ((double)(bench_now_ns() - t0) / 1e9);
}

static void start_join(bench_ctx_t *ctx) {
  const uint64_t nf = bench_scale(ctx, 2000), ns = bench_scale(ctx, 500);
  char pf[64], ps[64];
  snprintf(pf, sizeof pf, "{\"cycles\": %llu}", (unsigned long long)nf);
  snprintf(ps, sizeof ps, "{\"cycles\": %llu}", (unsigned long long)ns);
  bench_report(ctx, "process.start_join.raw_fork", raw_fork_rate(nf), "procs/s", pf);
  bench_report(ctx, "process.start_join.fork", carom_rate("fork", nf), "procs/s", pf);
  bench_report(ctx, "process.start_join.forkserver", carom_rate("forkserver", nf), "procs/s", pf);
  bench_report(ctx, "process.start_join.raw_exec_true", raw_exec_rate(ns), "procs/s", ps);
  bench_report(ctx, "process.start_join.spawn", carom_rate("spawn", ns), "procs/s", ps);
  bench_ratio("process fork / raw fork+_exit+waitpid (higher is better)",
              "process.start_join.fork", "process.start_join.raw_fork");
  bench_ratio("process forkserver / raw fork+_exit+waitpid", "process.start_join.forkserver",
              "process.start_join.raw_fork");
  bench_ratio("process spawn / raw fork+exec(/bin/true)+waitpid", "process.start_join.spawn",
              "process.start_join.raw_exec_true");
}

CAROM_BENCH("process", "process.start_join", start_join)
