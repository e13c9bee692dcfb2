/* bench/runner.c — carom-bench: runs registered benchmarks, repeats them, and
 * prints a table (default) or one JSON object per figure (--json):
 *   {"name": ..., "value": <median>, "min": ..., "max": ..., "unit": ...,
 *    "reps": n, "params": {...}}
 * preceded by one {"machine": {...}} line saying where the figures come from
 * and followed by {"ratio": ...} lines.
 *
 * Usage: carom-bench [--quick] [--json] [--reps N] [--group G]... [--threads N]
 *                    [--budget S] [--json-out FILE] [--list] [PATTERN...]
 *   --group G    run only benchmarks whose group is exactly G (repeatable)
 *   PATTERN      run only benchmarks whose group or name contains PATTERN
 *   --threads N  largest thread/process count benchmarks scale to (default nproc)
 *   --json-out F also write the JSON lines to file F (the table still prints)
 *   --budget S   seconds one benchmark may take over all its repetitions; the
 *                runner stops repeating it once spent (default 3 under --quick,
 *                unbounded otherwise). At least one repetition always runs.
 *
 * Invariants: figure, ratio and sample tables grow on demand (no silent
 * truncation); every string printed inside JSON is escaped, control characters
 * included; params text a benchmark passes is printed as given, so it must be
 * a JSON object (the runner checks its braces balance and replaces it with {}
 * plus a warning otherwise).
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <limits.h>
#include <poll.h>
#include <sys/syscall.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

typedef struct {
  const char *group, *name;
  bench_fn fn;
} entry_t;

typedef struct {
  char *name;
  const char *group; /* of the benchmark that first reported it */
  char *unit;
  char *params;
  char *skip;
  double *v;
  int n, cap;
} figure_t;

typedef struct {
  char *label, *num, *den;
} ratio_t;

static entry_t *entries;
static int n_entries, cap_entries;
static figure_t *figures;
static int n_figures, cap_figures;
static ratio_t *ratios;
static int n_ratios, cap_ratios;

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (!q) {
    fprintf(stderr, "carom-bench: out of memory\n");
    abort();
  }
  return q;
}

static char *xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(xrealloc(NULL, n), s, n);
}

/* Grow *arr (of elem-size items, *cap slots) so that one more fits. */
static void *grow(void *arr, int n, int *cap, size_t elem) {
  if (n < *cap) return arr;
  *cap = *cap ? *cap * 2 : 32;
  return xrealloc(arr, (size_t)*cap * elem);
}

void bench_register(const char *group, const char *name, bench_fn fn) {
  entries = grow(entries, n_entries, &cap_entries, sizeof *entries);
  entries[n_entries++] = (entry_t){group, name, fn};
}

static figure_t *figure_find(const char *name) {
  for (int i = 0; i < n_figures; i++)
    if (!strcmp(figures[i].name, name)) return &figures[i];
  return NULL;
}

static figure_t *figure(const char *name) {
  figure_t *f = figure_find(name);
  if (f) return f;
  figures = grow(figures, n_figures, &cap_figures, sizeof *figures);
  f = &figures[n_figures++];
  memset(f, 0, sizeof *f);
  f->name = xstrdup(name);
  return f;
}

static void set_str(char **dst, const char *s) {
  free(*dst);
  *dst = xstrdup(s);
}

/* Cheap sanity check of caller-supplied params: an object whose braces and
 * brackets balance outside strings. Not a parser, but catches truncation. */
static bool params_ok(const char *p) {
  while (*p == ' ') p++;
  if (*p != '{') return false;
  int depth = 0;
  bool str = false;
  for (; *p; p++) {
    if (str) {
      if (*p == '\\' && p[1]) p++;
      else if (*p == '"') str = false;
      else if ((unsigned char)*p < 0x20) return false;
      continue;
    }
    if (*p == '"') str = true;
    else if (*p == '{' || *p == '[') depth++;
    else if (*p == '}' || *p == ']') {
      if (--depth < 0) return false;
    }
  }
  return depth == 0 && !str;
}

void bench_report(bench_ctx_t *ctx, const char *name, double value, const char *unit,
                  const char *params) {
  (void)ctx;
  figure_t *f = figure(name);
  set_str(&f->unit, unit ? unit : "");
  if (params && !params_ok(params)) {
    fprintf(stderr, "carom-bench: %s: params are not a JSON object, dropped: %s\n", name, params);
    params = NULL;
  }
  set_str(&f->params, params ? params : "{}");
  f->v = grow(f->v, f->n, &f->cap, sizeof *f->v);
  f->v[f->n++] = value;
}

void bench_skip(bench_ctx_t *ctx, const char *name, const char *why) {
  (void)ctx;
  set_str(&figure(name)->skip, why ? why : "skipped");
}

void bench_ratio(const char *label, const char *num, const char *den) {
  for (int i = 0; i < n_ratios; i++)
    if (!strcmp(ratios[i].label, label)) return;
  ratios = grow(ratios, n_ratios, &cap_ratios, sizeof *ratios);
  ratios[n_ratios++] = (ratio_t){xstrdup(label), xstrdup(num), xstrdup(den)};
}

uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t bench_scale(const bench_ctx_t *ctx, uint64_t n) {
  if (!ctx->quick) return n;
  return n / 10 ? n / 10 : 1;
}

uint64_t bench_budget_left(const bench_ctx_t *ctx) {
  if (!ctx->budget_ns) return UINT64_MAX;
  uint64_t used = bench_now_ns() - ctx->start_ns;
  return used >= ctx->budget_ns ? 0 : ctx->budget_ns - used;
}

/* ---- subprocesses ---- */

int bench_run_capture(char *const argv[], double timeout_s, char *out, size_t n) {
  if (n) out[0] = 0;
  if (access(argv[0], X_OK) != 0) return -ENOENT;
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -errno;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  /* A peer's stderr is noise in the table (billiard logs every worker it
   * stops); failures come back in its JSON. CAROM_BENCH_PEER_STDERR=1 keeps it. */
  if (!getenv("CAROM_BENCH_PEER_STDERR"))
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawnattr_init(&at);
  /* Own process group, so a timeout kills the peer's children too. */
  posix_spawnattr_setpgroup(&at, 0);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, &at, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  close(p[1]);
  if (rc != 0) {
    close(p[0]);
    return -rc;
  }
  uint64_t deadline = bench_now_ns() + (uint64_t)(timeout_s * 1e9);
  size_t len = 0;
  bool timed_out = false, exited = false;
  /* The peer's own exit ends the capture, not EOF: a Python pool can leave
   * worker processes behind that hold the pipe open (billiard does, after a
   * hard time limit), and they are killed with the group below. */
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  for (;;) {
    uint64_t now = bench_now_ns();
    if (now >= deadline) {
      timed_out = true;
      break;
    }
    struct pollfd pfd[2] = {{.fd = p[0], .events = POLLIN}, {.fd = pidfd, .events = POLLIN}};
    int ms = (int)((deadline - now) / 1000000) + 1;
    int r = exited ? 1 : poll(pfd, pidfd >= 0 ? 2 : 1, ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    if (!exited && pidfd >= 0 && (pfd[1].revents & POLLIN)) {
      exited = true; /* read what is left without blocking, then stop */
      fcntl(p[0], F_SETFL, O_NONBLOCK);
    }
    if (!exited && !(pfd[0].revents & (POLLIN | POLLHUP))) continue;
    char buf[4096];
    ssize_t got = read(p[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break; /* EOF (or, after the exit, nothing more): done */
    size_t room = n ? n - 1 - len : 0;
    size_t take = (size_t)got < room ? (size_t)got : room;
    memcpy(out + len, buf, take);
    len += take;
    if (n) out[len] = 0;
  }
  close(p[0]);
  /* Wait (bounded) for the peer's exit without reaping it, so that its pid,
   * and so its process group id, cannot be reused; then kill what is left in
   * the group (the peer itself on a timeout, its leftovers otherwise) and
   * reap. */
  while (!exited && !timed_out) {
    siginfo_t si = {0};
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid) {
      exited = true;
    } else if (bench_now_ns() >= deadline) {
      timed_out = true;
    } else {
      /* Sleep on the pidfd until the exit or the deadline (a spurious or
       * EINTR return just loops); without a pidfd, look every ms. */
      uint64_t left_ms = (deadline - bench_now_ns()) / 1000000 + 1;
      struct pollfd pf = {.fd = pidfd, .events = POLLIN};
      if (pidfd < 0 || poll(&pf, 1, left_ms > INT_MAX ? INT_MAX : (int)left_ms) < 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
      }
    }
  }
  if (pidfd >= 0) close(pidfd);
  kill(-pid, SIGKILL);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) return -ETIMEDOUT;
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* ---- statistics and output ---- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(const figure_t *f) {
  double *s = xrealloc(NULL, sizeof(double) * (size_t)f->n);
  memcpy(s, f->v, sizeof(double) * (size_t)f->n);
  qsort(s, (size_t)f->n, sizeof s[0], cmp_double);
  double m = f->n % 2 ? s[f->n / 2] : (s[f->n / 2 - 1] + s[f->n / 2]) / 2;
  free(s);
  return m;
}

static double vmin(const figure_t *f) {
  double m = INFINITY;
  for (int i = 0; i < f->n; i++) m = f->v[i] < m ? f->v[i] : m;
  return m;
}

static double vmax(const figure_t *f) {
  double m = -INFINITY;
  for (int i = 0; i < f->n; i++) m = f->v[i] > m ? f->v[i] : m;
  return m;
}

static void cpu_model(char *out, size_t n) {
  snprintf(out, n, "unknown");
  FILE *f = fopen("/proc/cpuinfo", "re");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, "model name", 10)) {
      char *c = strchr(line, ':');
      if (c) {
        c += 1 + (c[1] == ' ');
        c[strcspn(c, "\n")] = 0;
        snprintf(out, n, "%s", c);
      }
      break;
    }
  }
  fclose(f);
}

static bool selected(const entry_t *e, int npat, char **pat, int ngroup, char **group) {
  if (ngroup) {
    bool in = false;
    for (int i = 0; i < ngroup; i++) in |= !strcmp(e->group, group[i]);
    if (!in) return false;
  }
  if (npat == 0) return true;
  for (int i = 0; i < npat; i++)
    if (strstr(e->group, pat[i]) || strstr(e->name, pat[i])) return true;
  return false;
}

/* JSON string: escapes quotes, backslashes and every control character. */
static void json_str(FILE *o, const char *s) {
  fputc('"', o);
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    switch (*c) {
    case '"': fputs("\\\"", o); break;
    case '\\': fputs("\\\\", o); break;
    case '\n': fputs("\\n", o); break;
    case '\r': fputs("\\r", o); break;
    case '\t': fputs("\\t", o); break;
    default:
      if (*c < 0x20 || *c == 0x7f) fprintf(o, "\\u%04x", *c);
      else fputc(*c, o);
    }
  }
  fputc('"', o);
}

/* JSON has no inf/nan: print null for them. */
static void json_num(FILE *o, double v) {
  if (isfinite(v)) fprintf(o, "%.6g", v);
  else fputs("null", o);
}

static void usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s [--quick] [--json] [--reps N] [--group G]... [--threads N]\n"
          "          [--budget SECONDS] [--json-out FILE] [--list] [PATTERN...]\n",
          argv0);
}

int main(int argc, char **argv) {
  bool quick = false, json = false, list = false;
  const char *json_out = NULL;
  int reps = 0, threads = 0;
  double budget = -1;
  char **pat = xrealloc(NULL, sizeof(char *) * (size_t)(argc + 1));
  char **grp = xrealloc(NULL, sizeof(char *) * (size_t)(argc + 1));
  int npat = 0, ngrp = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool has = i + 1 < argc;
    if (!strcmp(a, "--quick")) quick = true;
    else if (!strcmp(a, "--json")) json = true;
    else if (!strcmp(a, "--list")) list = true;
    else if (!strcmp(a, "--reps") && has) reps = atoi(argv[++i]);
    else if (!strcmp(a, "--threads") && has) threads = atoi(argv[++i]);
    else if (!strcmp(a, "--budget") && has) budget = atof(argv[++i]);
    else if (!strcmp(a, "--group") && has) grp[ngrp++] = argv[++i];
    else if (!strcmp(a, "--json-out") && has) json_out = argv[++i];
    else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(argv[0]);
      return 0;
    } else if (a[0] == '-') {
      usage(argv[0]);
      return 2;
    } else pat[npat++] = argv[i];
  }
  if (reps <= 0) reps = quick ? 3 : 5;
  if (budget < 0) budget = quick ? 3.0 : 0;
  long nproc = sysconf(_SC_NPROCESSORS_ONLN);
  if (nproc < 1) nproc = 1;
  if (threads <= 0) threads = nproc < 2 ? 2 : (int)nproc;
  if (list) {
    for (int i = 0; i < n_entries; i++)
      if (selected(&entries[i], npat, pat, ngrp, grp))
        printf("%-10s %s\n", entries[i].group, entries[i].name);
    return 0;
  }
  /* A peer that dies must not take the runner with it through SIGPIPE. */
  signal(SIGPIPE, SIG_IGN);

  FILE *jo = NULL; /* JSON goes here: stdout (--json) or --json-out FILE */
  if (json_out) {
    jo = fopen(json_out, "we");
    if (!jo) {
      fprintf(stderr, "carom-bench: %s: %s\n", json_out, strerror(errno));
      return 2;
    }
  } else if (json) {
    jo = stdout;
  }
  bool table = !json;

  char cpu[256];
  cpu_model(cpu, sizeof cpu);
  struct utsname u;
  uname(&u);
  if (jo) {
    fprintf(jo, "{\"machine\": {\"cpu\": ");
    json_str(jo, cpu);
    fprintf(jo, ", \"nproc\": %ld, \"kernel\": ", nproc);
    json_str(jo, u.release);
    fprintf(jo, ", \"reps\": %d, \"quick\": %s, \"threads\": %d, \"budget_s\": %g}}\n", reps,
            quick ? "true" : "false", threads, budget);
    fflush(jo);
  }
  if (table) {
    printf("carom-bench: %s, nproc %ld, Linux %s, %d repetitions%s, up to %d threads\n", cpu,
           nproc, u.release, reps, quick ? " (quick)" : "", threads);
    fflush(stdout);
  }

  uint64_t suite0 = bench_now_ns();
  for (int i = 0; i < n_entries; i++) {
    if (!selected(&entries[i], npat, pat, ngrp, grp)) continue;
    uint64_t t0 = bench_now_ns();
    bench_ctx_t ctx = {.quick = quick,
                       .nproc = (int)nproc,
                       .max_threads = threads,
                       .budget_ns = (uint64_t)(budget * 1e9),
                       .start_ns = t0};
    int first = n_figures;
    int r = 0;
    for (; r < reps; r++) {
      ctx.rep = r;
      entries[i].fn(&ctx);
      if (r + 1 < reps && bench_budget_left(&ctx) == 0) {
        r++;
        break;
      }
    }
    for (int k = first; k < n_figures; k++) figures[k].group = entries[i].group;
    fprintf(stderr, "  %-40s %d rep%s, %.2f s\n", entries[i].name, r, r == 1 ? "" : "s",
            (double)(bench_now_ns() - t0) / 1e9);
  }
  double suite_s = (double)(bench_now_ns() - suite0) / 1e9;

  if (jo) {
    for (int i = 0; i < n_figures; i++) {
      figure_t *f = &figures[i];
      fprintf(jo, "{\"name\": ");
      json_str(jo, f->name);
      if (f->n == 0) {
        fprintf(jo, ", \"value\": null, \"skipped\": ");
        json_str(jo, f->skip ? f->skip : "not measured");
        fprintf(jo, "}\n");
        continue;
      }
      fprintf(jo, ", \"value\": ");
      json_num(jo, median(f));
      fprintf(jo, ", \"min\": ");
      json_num(jo, vmin(f));
      fprintf(jo, ", \"max\": ");
      json_num(jo, vmax(f));
      fprintf(jo, ", \"unit\": ");
      json_str(jo, f->unit);
      fprintf(jo, ", \"reps\": %d, \"params\": %s}\n", f->n, f->params);
    }
    for (int i = 0; i < n_ratios; i++) {
      figure_t *a = figure_find(ratios[i].num), *b = figure_find(ratios[i].den);
      if (!a || !b) continue;
      fprintf(jo, "{\"ratio\": ");
      json_str(jo, ratios[i].label);
      fprintf(jo, ", \"value\": ");
      if (a->n && b->n) json_num(jo, median(a) / median(b));
      else fputs("null", jo);
      fprintf(jo, ", \"num\": ");
      json_str(jo, ratios[i].num);
      fprintf(jo, ", \"den\": ");
      json_str(jo, ratios[i].den);
      fprintf(jo, "}\n");
    }
    if (jo != stdout) fclose(jo);
  }
  if (!table) return 0;

  int w = 6;
  for (int i = 0; i < n_figures; i++) {
    int l = (int)strlen(figures[i].name);
    w = l > w ? l : w;
  }
  for (int i = 0; i < n_ratios; i++) {
    int l = (int)strlen(ratios[i].label);
    w = l > w ? l : w;
  }
  printf("\n%-*s %12s %12s %12s  %s\n", w, "figure", "median", "min", "max", "unit");
  const char *group = NULL;
  for (int i = 0; i < n_figures; i++) {
    figure_t *f = &figures[i];
    if (f->group && (!group || strcmp(group, f->group))) {
      group = f->group;
      printf("-- %s\n", group);
    }
    if (f->n == 0) {
      printf("%-*s %12s  (%s)\n", w, f->name, "-", f->skip ? f->skip : "not measured");
      continue;
    }
    printf("%-*s %12.4g %12.4g %12.4g  %s\n", w, f->name, median(f), vmin(f), vmax(f), f->unit);
  }
  int shown = 0;
  for (int i = 0; i < n_ratios; i++) {
    figure_t *a = figure_find(ratios[i].num), *b = figure_find(ratios[i].den);
    if (!a || !b) continue;
    if (!shown++) printf("\n%-*s %12s\n", w, "ratio (medians)", "value");
    if (a->n == 0 || b->n == 0) {
      const figure_t *m = a->n == 0 ? a : b;
      printf("%-*s %12s  (%s: %s)\n", w, ratios[i].label, "-", m->name,
             m->skip ? m->skip : "not measured");
      continue;
    }
    printf("%-*s %12.3f\n", w, ratios[i].label, median(a) / median(b));
  }
  printf("\nsuite time %.1f s\n", suite_s);
  return 0;
}
