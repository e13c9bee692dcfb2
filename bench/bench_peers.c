/* bench/bench_peers.c — Python's multiprocessing and billiard measured in the
 * same run as carom: runs bench/peers/mp_peer.py under /usr/bin/python3 (not
 * the python3 on PATH, which may be a build without billiard) once per
 * repetition and library, and reports its figures under the names listed in
 * bench.h ("peer.<lib>.<what>").
 *
 * A missing interpreter or module makes every figure of that library say
 * "peer not installed" (bench_skip); a script that runs past its timeout is
 * killed with its whole process group and its figures say "peer timed out";
 * a workload that reports a wrong result says "peer failed: ...". None of
 * these fail the run.
 */
#include "bench.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CAROM_BENCH_PEERS_DIR
#define CAROM_BENCH_PEERS_DIR "bench/peers"
#endif
#define PEER_PYTHON "/usr/bin/python3"

typedef struct {
  const char *workload; /* mp_peer.py's name */
  const char *figure;   /* suffix after "peer.<lib>." */
} peer_fig_t;

static const peer_fig_t peer_figs[] = {
    {"queue", "queue.64B.1to1"},
    {"pipe_rtt", "pipe.64B.rtt"},
    {"pipe_stream", "pipe.64B.stream"},
    {"lock", "lock.pair"},
    {"value", "value.incr2"},
    {"pool_map", "pool.map"},
    {"pool_map_chunk1", "pool.map.chunksize1"},
    {"apply_async", "pool.apply_async"},
    {"imap_unordered", "pool.imap_unordered"},
    {"maxtasks1", "pool.maxtasks1"},
    {"lifecycle", "pool.lifecycle"},
    {"timeout_latency", "pool.timeout_latency"},
};
#define N_PEER_FIGS (sizeof peer_figs / sizeof peer_figs[0])

static void skip_all(bench_ctx_t *ctx, const char *lib, const char *why) {
  char name[128];
  for (size_t i = 0; i < N_PEER_FIGS; i++) {
    snprintf(name, sizeof name, "peer.%s.%s", lib, peer_figs[i].figure);
    bench_skip(ctx, name, why);
  }
}

/* Pull "key": value out of one JSON line written by mp_peer.py (flat object,
 * json.dumps spacing). Returns a pointer just past '"key": ' or NULL. */
static const char *json_field(const char *line, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\": ", key);
  const char *p = strstr(line, pat);
  return p ? p + strlen(pat) : NULL;
}

static void json_strval(const char *p, char *out, size_t n) {
  size_t k = 0;
  if (p && *p == '"')
    for (p++; *p && *p != '"' && k + 1 < n; p++) {
      if (*p == '\\' && p[1]) p++;
      out[k++] = *p;
    }
  out[k] = 0;
}

static void run_peer(bench_ctx_t *ctx, const char *lib) {
  static char out[16384];
  char script[512], scale[16];
  snprintf(script, sizeof script, "%s/mp_peer.py", CAROM_BENCH_PEERS_DIR);
  snprintf(scale, sizeof scale, "%s", ctx->quick ? "0.1" : "1");
  char *argv[] = {PEER_PYTHON, script, (char *)lib, "all", scale, NULL};
  double timeout = ctx->quick ? 40 : 300;
  int rc = bench_run_capture(argv, timeout, out, sizeof out);
  if (rc == -ENOENT || rc == 3) {
    skip_all(ctx, lib, "peer not installed");
    return;
  }
  if (rc == -ETIMEDOUT) {
    skip_all(ctx, lib, "peer timed out");
    /* Keep whatever it reported before the timeout. */
  } else if (rc < 0) {
    skip_all(ctx, lib, "peer could not be started");
    return;
  } else if (rc != 0 && rc != 1) {
    skip_all(ctx, lib, "peer failed");
  }
  for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
    char wl[64], unit[32], err[96], name[128];
    json_strval(json_field(line, "workload"), wl, sizeof wl);
    const peer_fig_t *pf = NULL;
    for (size_t i = 0; i < N_PEER_FIGS; i++)
      if (!strcmp(peer_figs[i].workload, wl)) pf = &peer_figs[i];
    if (!pf) continue;
    snprintf(name, sizeof name, "peer.%s.%s", lib, pf->figure);
    const char *e = json_field(line, "error");
    if (e) {
      char why[128];
      json_strval(e, err, sizeof err);
      snprintf(why, sizeof why, "peer failed: %.100s", err);
      for (char *c = why; *c; c++)
        if (*c == '\n') *c = ' ';
      bench_skip(ctx, name, why);
      continue;
    }
    const char *v = json_field(line, "value"), *n = json_field(line, "n");
    if (!v || !n) continue;
    json_strval(json_field(line, "unit"), unit, sizeof unit);
    char params[160];
    snprintf(params, sizeof params,
             "{\"peer\": \"%s\", \"python\": \"" PEER_PYTHON "\", \"n\": %lld, "
             "\"start_method\": \"fork\"}",
             strcmp(lib, "mp") ? "billiard" : "multiprocessing", atoll(n));
    bench_report(ctx, name, strtod(v, NULL), unit, params);
    const char *mx = json_field(line, "max");
    if (mx) { /* the timeout-latency workload also gives its worst case */
      char mname[160];
      snprintf(mname, sizeof mname, "%s.max", name);
      bench_report(ctx, mname, strtod(mx, NULL), unit, params);
    }
  }
}

static void peers_mp(bench_ctx_t *ctx) { run_peer(ctx, "mp"); }
static void peers_billiard(bench_ctx_t *ctx) { run_peer(ctx, "billiard"); }

CAROM_BENCH("peers", "peers.mp", peers_mp)
CAROM_BENCH("peers", "peers.billiard", peers_billiard)
