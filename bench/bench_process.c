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

__attribute__((noreturn)) static void die(const char *what, int rc) {
  fprintf(stderr, "bench process: %s failed (%d)\n", what, rc);
  exit(1);
}

/* Each function runs n cycles and returns the nanoseconds they took. */
static uint64_t carom_ns(carom_context_t *ctx, uint64_t n) {
  carom_process_opts_t o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.target = noop;
  o.ctx = ctx;
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    carom_process_t *p;
    int rc = carom_process_create(&o, &p);
    if (rc) die("create", rc);
    if ((rc = carom_process_start(p))) die("start", rc);
    if ((rc = carom_process_join(p, NULL))) die("join", rc);
    int code = -1;
    if (carom_process_exitcode(p, &code) || code != 0) die("exit code", code);
    carom_process_free(p);
  }
  return bench_now_ns() - t0;
}

static uint64_t raw_fork_ns(uint64_t n) {
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || st != 0) die("raw fork", pid);
  }
  return bench_now_ns() - t0;
}

static uint64_t raw_exec_ns(uint64_t n) {
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
  return bench_now_ns() - t0;
}

static double rate(uint64_t n, uint64_t ns) { return (double)n / ((double)ns / 1e9); }

/* The contenders run interleaved in batches of `batch`, so load that comes
 * and goes on a shared machine hits all of them alike. */
static void start_join(bench_ctx_t *ctx) {
  const uint64_t batch = 50, nf = bench_scale(ctx, 2000), ns = bench_scale(ctx, 400);
  carom_context_t *cf = NULL, *cs = NULL, *cfs = NULL;
  if (carom_get_context("fork", &cf) || carom_get_context("spawn", &cs) ||
      carom_get_context("forkserver", &cfs))
    die("get_context", -1);
  carom_ns(cfs, 1); /* start the forkserver outside the timing */
  uint64_t t_raw = 0, t_fork = 0, t_fs = 0, t_exec = 0, t_spawn = 0;
  for (uint64_t done = 0; done < nf; done += batch) {
    uint64_t k = nf - done < batch ? nf - done : batch;
    t_raw += raw_fork_ns(k);
    t_fork += carom_ns(cf, k);
    t_fs += carom_ns(cfs, k);
  }
  for (uint64_t done = 0; done < ns; done += batch) {
    uint64_t k = ns - done < batch ? ns - done : batch;
    t_exec += raw_exec_ns(k);
    t_spawn += carom_ns(cs, k);
  }
  char pf[64], ps[64];
  snprintf(pf, sizeof pf, "{\"cycles\": %llu}", (unsigned long long)nf);
  snprintf(ps, sizeof ps, "{\"cycles\": %llu}", (unsigned long long)ns);
  bench_report(ctx, "process.start_join.raw_fork", rate(nf, t_raw), "procs/s", pf);
  bench_report(ctx, "process.start_join.fork", rate(nf, t_fork), "procs/s", pf);
  bench_report(ctx, "process.start_join.forkserver", rate(nf, t_fs), "procs/s", pf);
  bench_report(ctx, "process.start_join.raw_exec_true", rate(ns, t_exec), "procs/s", ps);
  bench_report(ctx, "process.start_join.spawn", rate(ns, t_spawn), "procs/s", ps);
  bench_ratio("process fork / raw fork+_exit+waitpid (higher is better)",
              "process.start_join.fork", "process.start_join.raw_fork");
  bench_ratio("process forkserver / raw fork+_exit+waitpid", "process.start_join.forkserver",
              "process.start_join.raw_fork");
  bench_ratio("process spawn / raw fork+exec(/bin/true)+waitpid", "process.start_join.spawn",
              "process.start_join.raw_exec_true");
}

CAROM_BENCH("process", "process.start_join", start_join)
