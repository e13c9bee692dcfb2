/* proc/cpu.c — cpu_count: how many CPUs this process can actually use.
 *
 * Order (billiard's "cpu_count with fallback logic", made container-aware):
 * the affinity mask (what sched_setaffinity/taskset/cpuset allow), else the
 * online CPUs; then capped by the cgroup v2 CPU bandwidth limit, ceil(quota /
 * period) from cpu.max, taken as the minimum over the process's cgroup and its
 * ancestors (a parent's limit binds its children). cgroup v1 is not read.
 */
#include "proc/internal.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int affinity_count(void) {
  for (size_t ncpu = 1024; ncpu <= (1u << 20); ncpu *= 2) {
    cpu_set_t *set = CPU_ALLOC(ncpu);
    if (!set) return 0;
    size_t size = CPU_ALLOC_SIZE(ncpu);
    if (sched_getaffinity(0, size, set) == 0) {
      int n = CPU_COUNT_S(size, set);
      CPU_FREE(set);
      return n;
    }
    int e = errno;
    CPU_FREE(set);
    if (e != EINVAL) return 0; /* EINVAL: the mask is wider than ncpu */
  }
  return 0;
}

/* ceil(quota/period) of one cpu.max file; 0 for "max", missing or garbled. */
static int cpu_max_file(const char *file) {
  FILE *f = fopen(file, "re");
  if (!f) return 0;
  char q[32];
  unsigned long long period = 0;
  int got = fscanf(f, "%31s %llu", q, &period);
  fclose(f);
  if (got != 2 || !strcmp(q, "max") || period == 0) return 0;
  char *end;
  unsigned long long quota = strtoull(q, &end, 10);
  if (*end || quota == 0) return 0;
  unsigned long long n = (quota + period - 1) / period;
  return n > INT_MAX ? INT_MAX : (int)n;
}

int carom__cgroup_cpu_limit(const char *root, const char *path) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s", path);
  int lim = 0;
  for (;;) {
    char file[PATH_MAX + 64];
    size_t pl = strlen(p);
    /* the root cgroup has no cpu.max; "/" and "" both mean it */
    if (pl > 1 || (pl == 1 && p[0] != '/')) {
      snprintf(file, sizeof file, "%s%s%s/cpu.max", root, p[0] == '/' ? "" : "/", p);
      int l = cpu_max_file(file);
      if (l > 0 && (lim == 0 || l < lim)) lim = l;
    }
    char *slash = strrchr(p, '/');
    if (!slash || pl <= 1) break;
    if (slash == p) p[1] = 0; /* "/a" -> "/" */
    else *slash = 0;
    if (!strcmp(p, "/")) break;
  }
  return lim;
}

/* Mount point and mount root of the cgroup2 hierarchy, from mountinfo. */
static bool cgroup2_mount(char *mnt, size_t mlen, char *mroot, size_t rlen) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f) return false;
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    char *dash = strstr(line, " - cgroup2 ");
    if (!dash) continue;
    /* fields: id parent maj:min root mountpoint ... */
    char r[PATH_MAX], m[PATH_MAX];
    if (sscanf(line, "%*d %*d %*s %4095s %4095s", r, m) == 2) {
      snprintf(mnt, mlen, "%s", m);
      snprintf(mroot, rlen, "%s", r);
      found = true;
    }
  }
  fclose(f);
  return found;
}

int carom_cpu_count(void) {
  int n = affinity_count();
  if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (n <= 0) n = 1;
  char mnt[PATH_MAX], mroot[PATH_MAX], path[PATH_MAX] = "";
  if (!cgroup2_mount(mnt, sizeof mnt, mroot, sizeof mroot)) return n;
  FILE *f = fopen("/proc/self/cgroup", "re");
  if (!f) return n;
  char line[PATH_MAX];
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "0::", 3)) {
      line[strcspn(line, "\n")] = 0;
      memcpy(path, line + 3, strlen(line + 3) + 1);
      break;
    }
  fclose(f);
  if (!path[0]) return n;
  /* A bind-mounted sub-hierarchy: our path is relative to its root. */
  const char *rel = path;
  size_t rl = strlen(mroot);
  if (rl > 1 && !strncmp(path, mroot, rl)) rel = path + rl;
  int lim = carom__cgroup_cpu_limit(mnt, rel[0] ? rel : "/");
  return lim > 0 && lim < n ? lim : n;
}
