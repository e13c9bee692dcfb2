/* bench/runner.c — carom-bench: runs registered benchmarks, repeats them, and
 * prints a table (default) or one JSON object per figure (--json):
 *   {"name": ..., "value": <median>, "min": ..., "max": ..., "unit": ...,
 *    "reps": n, "params": {...}}
 * plus a first {"machine": {...}} line saying where the figures come from.
 *
 * Usage: carom-bench [--quick] [--json] [--reps N] [--list] [PATTERN...]
 * A PATTERN selects benchmarks whose group or name contains it. */
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  const char *group, *name;
  bench_fn fn;
} entry_t;

typedef struct {
  char name[128];
  char unit[32];
  char params[256];
  char skip[128];
  double v[64];
  int n;
} figure_t;

typedef struct {
  char label[128], num[128], den[128];
} ratio_t;

static entry_t entries[256];
static int n_entries;
static figure_t figures[1024];
static int n_figures;
static ratio_t ratios[256];
static int n_ratios;

void bench_register(const char *group, const char *name, bench_fn fn) {
  if (n_entries < (int)(sizeof entries / sizeof entries[0]))
    entries[n_entries++] = (entry_t){group, name, fn};
}

static figure_t *figure(const char *name) {
  for (int i = 0; i < n_figures; i++)
    if (!strcmp(figures[i].name, name)) return &figures[i];
  if (n_figures == (int)(sizeof figures / sizeof figures[0])) return NULL;
  figure_t *f = &figures[n_figures++];
  memset(f, 0, sizeof *f);
  snprintf(f->name, sizeof f->name, "%s", name);
  return f;
}

void bench_report(bench_ctx_t *ctx, const char *name, double value, const char *unit,
                  const char *params) {
  (void)ctx;
  figure_t *f = figure(name);
  if (!f) return;
  snprintf(f->unit, sizeof f->unit, "%s", unit);
  snprintf(f->params, sizeof f->params, "%s", params ? params : "{}");
  if (f->n < (int)(sizeof f->v / sizeof f->v[0])) f->v[f->n++] = value;
}

void bench_skip(bench_ctx_t *ctx, const char *name, const char *why) {
  (void)ctx;
  figure_t *f = figure(name);
  if (f) snprintf(f->skip, sizeof f->skip, "%s", why);
}

void bench_ratio(const char *label, const char *num, const char *den) {
  for (int i = 0; i < n_ratios; i++)
    if (!strcmp(ratios[i].label, label)) return;
  if (n_ratios == (int)(sizeof ratios / sizeof ratios[0])) return;
  ratio_t *r = &ratios[n_ratios++];
  snprintf(r->label, sizeof r->label, "%s", label);
  snprintf(r->num, sizeof r->num, "%s", num);
  snprintf(r->den, sizeof r->den, "%s", den);
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

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(figure_t *f) {
  double s[64];
  memcpy(s, f->v, sizeof(double) * (size_t)f->n);
  qsort(s, (size_t)f->n, sizeof s[0], cmp_double);
  return f->n % 2 ? s[f->n / 2] : (s[f->n / 2 - 1] + s[f->n / 2]) / 2;
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
        c += 2;
        c[strcspn(c, "\n")] = 0;
        snprintf(out, n, "%s", c);
      }
      break;
    }
  }
  fclose(f);
}

static bool selected(const entry_t *e, int npat, char **pat) {
  if (npat == 0) return true;
  for (int i = 0; i < npat; i++)
    if (strstr(e->group, pat[i]) || strstr(e->name, pat[i])) return true;
  return false;
}

static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') putchar('\\');
    putchar(*s);
  }
  putchar('"');
}

int main(int argc, char **argv) {
  bool quick = false, json = false, list = false;
  int reps = 0;
  char *pat[64];
  int npat = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) quick = true;
    else if (!strcmp(argv[i], "--json")) json = true;
    else if (!strcmp(argv[i], "--list")) list = true;
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (argv[i][0] == '-') {
      fprintf(stderr, "usage: %s [--quick] [--json] [--reps N] [--list] [PATTERN...]\n", argv[0]);
      return 2;
    } else if (npat < 64) pat[npat++] = argv[i];
  }
  if (reps <= 0) reps = quick ? 3 : 5;
  if (reps > 64) reps = 64;
  if (list) {
    for (int i = 0; i < n_entries; i++) printf("%-10s %s\n", entries[i].group, entries[i].name);
    return 0;
  }

  char cpu[256];
  cpu_model(cpu, sizeof cpu);
  struct utsname u;
  uname(&u);
  long nproc = sysconf(_SC_NPROCESSORS_ONLN);
  if (json) {
    printf("{\"machine\": {\"cpu\": ");
    json_str(cpu);
    printf(", \"nproc\": %ld, \"kernel\": ", nproc);
    json_str(u.release);
    printf(", \"reps\": %d, \"quick\": %s}}\n", reps, quick ? "true" : "false");
  } else {
    printf("carom-bench: %s, nproc %ld, Linux %s, %d repetitions%s\n", cpu, nproc, u.release,
           reps, quick ? " (quick)" : "");
  }
  fflush(stdout);

  for (int i = 0; i < n_entries; i++) {
    if (!selected(&entries[i], npat, pat)) continue;
    if (!json) fprintf(stderr, "running %s ...\n", entries[i].name);
    for (int r = 0; r < reps; r++) {
      bench_ctx_t ctx = {.quick = quick, .rep = r, .nproc = (int)nproc};
      entries[i].fn(&ctx);
    }
  }

  if (json) {
    for (int i = 0; i < n_figures; i++) {
      figure_t *f = &figures[i];
      printf("{\"name\": ");
      json_str(f->name);
      if (f->n == 0) {
        printf(", \"value\": null, \"skipped\": ");
        json_str(f->skip[0] ? f->skip : "not measured");
        printf("}\n");
        continue;
      }
      printf(", \"value\": %.6g, \"min\": %.6g, \"max\": %.6g, \"unit\": ", median(f), vmin(f),
             vmax(f));
      json_str(f->unit);
      printf(", \"reps\": %d, \"params\": %s}\n", f->n, f->params);
    }
  } else {
    printf("\n%-48s %14s %14s %14s  %s\n", "figure", "median", "min", "max", "unit");
    for (int i = 0; i < n_figures; i++) {
      figure_t *f = &figures[i];
      if (f->n == 0) {
        printf("%-48s %14s  (%s)\n", f->name, "-", f->skip[0] ? f->skip : "not measured");
        continue;
      }
      printf("%-48s %14.4g %14.4g %14.4g  %s\n", f->name, median(f), vmin(f), vmax(f), f->unit);
    }
  }
  int shown = 0;
  for (int i = 0; i < n_ratios; i++) {
    figure_t *a = NULL, *b = NULL;
    for (int k = 0; k < n_figures; k++) {
      if (!strcmp(figures[k].name, ratios[i].num)) a = &figures[k];
      if (!strcmp(figures[k].name, ratios[i].den)) b = &figures[k];
    }
    if (!a || !b) continue;
    if (a->n == 0 || b->n == 0) {
      if (!json) printf("%-48s %14s  (%s)\n", ratios[i].label, "-", "peer not measured");
      continue;
    }
    double q = median(a) / median(b);
    if (json) {
      printf("{\"ratio\": ");
      json_str(ratios[i].label);
      printf(", \"value\": %.4g, \"num\": ", q);
      json_str(ratios[i].num);
      printf(", \"den\": ");
      json_str(ratios[i].den);
      printf("}\n");
    } else {
      if (!shown++) printf("\n%-48s %14s\n", "ratio (medians)", "value");
      printf("%-48s %14.3f\n", ratios[i].label, q);
    }
  }
  return 0;
}
