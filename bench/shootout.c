/* bench/shootout.c — the queue shoot-out harness (see shootout.h).
 *
 * Invariants: every item's first word is its tag, (producer + 1) << 48 | seq,
 * or STOP_TAG; a 64 B item's words 1..7 are tag * odd constants. Each consumer
 * owns one bitmap (producers × max_items bits) in the shared control mapping;
 * only it writes there, so recording costs no cache-line transfer between
 * consumers. Workers meet at a start flag; timing starts when the parent sets
 * it and ends when the last consumer has finished.
 */
#include "shootout.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STOP_TAG UINT64_MAX
#define SEQ_BITS 48
#define SEQ_MASK ((1ull << SEQ_BITS) - 1)
#define MAX_WORKERS 256

/* ---- items ---- */

static const uint64_t mix[8] = {0, 0x9e3779b97f4a7c15ull, 0xc2b2ae3d27d4eb4full,
                                0x165667b19e3779f9ull, 0xd6e8feb86659fd93ull,
                                0xff51afd7ed558ccdull, 0xc4ceb9fe1a85ec53ull,
                                0x27d4eb2f165667c5ull};

static void item_fill(uint64_t *w, size_t payload, uint64_t tag) {
  w[0] = tag;
  for (size_t i = 1; i < payload / 8; i++) w[i] = tag * mix[i];
}

static bool item_ok(const uint64_t *w, size_t payload) {
  for (size_t i = 1; i < payload / 8; i++)
    if (w[i] != w[0] * mix[i]) return false;
  return true;
}

/* ---- waiting ---- */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* Spin a little, then give the CPU away: with more workers than CPUs a pure
 * spin would starve the thread it waits for. */
static inline void backoff(unsigned *n) {
  if (++*n < 64) cpu_relax();
  else sched_yield();
}

/* ---- shared control block ---- */

typedef struct {
  _Atomic int ready, go, stop, done;
  _Atomic int errors;
  char err[256];
  uint64_t max_items;      /* per producer */
  uint64_t produced[MAX_WORKERS];
  uint64_t consumed[MAX_WORKERS];
  uint64_t t_end[MAX_WORKERS];
  uint64_t *bitmaps;       /* consumers × producers × words_per_producer (in this mapping) */
  size_t words_per_producer;
} ctl_t;

typedef struct {
  const shootout_queue_t *q;
  void *state;
  shootout_cfg_t cfg;
  ctl_t *ctl;
  int idx;
} worker_arg_t;

static void fail(ctl_t *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(ctl_t *ctl, const char *fmt, ...) {
  if (atomic_fetch_add(&ctl->errors, 1) == 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctl->err, sizeof ctl->err, fmt, ap);
    va_end(ap);
  }
}

static void *attach(const worker_arg_t *a, int role, int idx) {
  return a->q->attach ? a->q->attach(a->state, role, idx) : NULL;
}

static void detach(const worker_arg_t *a, void *local) {
  if (a->q->detach) a->q->detach(a->state, local);
}

static void wait_go(ctl_t *ctl) {
  atomic_fetch_add(&ctl->ready, 1);
  unsigned n = 0;
  while (!atomic_load_explicit(&ctl->go, memory_order_acquire)) backoff(&n);
}

static void *producer(void *p) {
  const worker_arg_t *a = p;
  ctl_t *ctl = a->ctl;
  void *local = attach(a, SHOOTOUT_PRODUCER, a->idx);
  uint64_t item[8];
  uint64_t seq = 0;
  const uint64_t base = (uint64_t)(a->idx + 1) << SEQ_BITS;
  wait_go(ctl);
  for (; seq < ctl->max_items; seq++) {
    if ((seq & 63) == 0 && atomic_load_explicit(&ctl->stop, memory_order_relaxed)) break;
    item_fill(item, a->cfg.payload, base | seq);
    unsigned n = 0;
    int rc;
    while ((rc = a->q->push(a->state, local, item)) == -EAGAIN) {
      if (atomic_load_explicit(&ctl->stop, memory_order_relaxed)) goto out;
      backoff(&n);
    }
    if (rc != 0) {
      fail(ctl, "producer %d: push returned %d", a->idx, rc);
      break;
    }
  }
out:
  ctl->produced[a->idx] = seq;
  detach(a, local);
  return NULL;
}

static void *consumer(void *p) {
  const worker_arg_t *a = p;
  ctl_t *ctl = a->ctl;
  const int np = a->cfg.producers;
  const bool fifo = !(a->q->flags & SHOOTOUT_LIFO);
  uint64_t *bm = ctl->bitmaps + (size_t)a->idx * (size_t)np * ctl->words_per_producer;
  uint64_t last[MAX_WORKERS];
  for (int i = 0; i < np; i++) last[i] = UINT64_MAX;
  void *local = attach(a, SHOOTOUT_CONSUMER, a->idx);
  uint64_t item[8], got = 0;
  wait_go(ctl);
  unsigned n = 0;
  for (;;) {
    int rc = a->q->pop(a->state, local, item);
    if (rc == -EAGAIN) {
      if (atomic_load_explicit(&ctl->done, memory_order_acquire)) {
        /* Every push completed before done was set: empty now means empty. */
        if ((rc = a->q->pop(a->state, local, item)) == -EAGAIN) break;
      } else {
        backoff(&n);
        continue;
      }
    }
    if (rc != 0) {
      fail(ctl, "consumer %d: pop returned %d", a->idx, rc);
      break;
    }
    n = 0;
    uint64_t tag = item[0];
    if (tag == STOP_TAG) break;
    uint64_t prod = (tag >> SEQ_BITS) - 1, seq = tag & SEQ_MASK;
    if (prod >= (uint64_t)np || seq >= ctl->max_items) {
      fail(ctl, "consumer %d: item with a tag no producer made: %#llx", a->idx,
           (unsigned long long)tag);
      break;
    }
    if (!item_ok(item, a->cfg.payload)) {
      fail(ctl, "consumer %d: payload of producer %llu item %llu corrupted", a->idx,
           (unsigned long long)prod, (unsigned long long)seq);
      break;
    }
    uint64_t *w = &bm[prod * ctl->words_per_producer + seq / 64];
    uint64_t bit = 1ull << (seq % 64);
    if (*w & bit) {
      fail(ctl, "consumer %d: producer %llu item %llu delivered twice", a->idx,
           (unsigned long long)prod, (unsigned long long)seq);
      break;
    }
    *w |= bit;
    if (fifo && last[prod] != UINT64_MAX && seq <= last[prod]) {
      fail(ctl, "consumer %d: producer %llu item %llu after item %llu (FIFO order broken)",
           a->idx, (unsigned long long)prod, (unsigned long long)seq,
           (unsigned long long)last[prod]);
      break;
    }
    last[prod] = seq;
    got++;
  }
  ctl->consumed[a->idx] = got;
  ctl->t_end[a->idx] = bench_now_ns();
  detach(a, local);
  return NULL;
}

/* ---- workers as threads or processes ---- */

typedef struct {
  pthread_t th;
  pid_t pid;
} worker_t;

static int worker_start(worker_t *w, bool procs, void *(*fn)(void *), void *arg) {
  if (!procs) return -pthread_create(&w->th, NULL, fn, arg);
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return -errno;
  if (pid == 0) {
    fn(arg);
    _exit(0);
  }
  w->pid = pid;
  return 0;
}

static void worker_join(worker_t *w, bool procs, ctl_t *ctl) {
  if (!procs) {
    pthread_join(w->th, NULL);
    return;
  }
  int st;
  while (waitpid(w->pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail(ctl, "worker process %d died (status %#x)", (int)w->pid, st);
}

/* ---- one stream run ---- */

static void *map_shared(size_t n) {
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("shootout: mmap");
    exit(1);
  }
  return p;
}

static void die_wrong(const shootout_queue_t *q, const char *what, ctl_t *ctl) {
  fprintf(stderr, "shootout %s %s: WRONG RESULT: %s\n", q->name, what, ctl->err);
  exit(1);
}

/* Returns items/s, or a negative errno when init refused the configuration. */
static double stream_run(const shootout_queue_t *q, const shootout_cfg_t *cfg, uint64_t run_ns,
                         uint64_t max_items, const char *what, uint64_t *items_out) {
  const int np = cfg->producers, nc = cfg->consumers;
  size_t wpp = (size_t)(max_items + 63) / 64;
  size_t ctl_bytes = sizeof(ctl_t) + (size_t)nc * (size_t)np * wpp * 8;
  ctl_t *ctl = map_shared(ctl_bytes);
  ctl->max_items = max_items;
  ctl->words_per_producer = wpp;
  ctl->bitmaps = (uint64_t *)(ctl + 1);
  void *state = map_shared(q->state_size ? q->state_size : 1);
  int rc = q->init ? q->init(state, cfg) : 0;
  if (rc < 0) {
    munmap(state, q->state_size ? q->state_size : 1);
    munmap(ctl, ctl_bytes);
    return rc;
  }
  worker_arg_t args[2 * MAX_WORKERS];
  worker_t ws[2 * MAX_WORKERS];
  bool procs = cfg->procs;
  int started = 0;
  for (int i = 0; i < np + nc; i++) {
    args[i] = (worker_arg_t){q, state, *cfg, ctl, i < np ? i : i - np};
    rc = worker_start(&ws[i], procs, i < np ? producer : consumer, &args[i]);
    if (rc < 0) {
      fprintf(stderr, "shootout %s %s: cannot start worker: %s\n", q->name, what, strerror(-rc));
      exit(1);
    }
    started++;
  }
  unsigned n = 0;
  while (atomic_load(&ctl->ready) < np + nc) backoff(&n);
  uint64_t t0 = bench_now_ns();
  atomic_store_explicit(&ctl->go, 1, memory_order_release);
  struct timespec ts = {(time_t)(run_ns / 1000000000u), (long)(run_ns % 1000000000u)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  atomic_store(&ctl->stop, 1);
  for (int i = 0; i < np; i++) worker_join(&ws[i], procs, ctl);
  if (q->flags & SHOOTOUT_BLOCKING) {
    worker_arg_t self = {q, state, *cfg, ctl, np};
    void *local = attach(&self, SHOOTOUT_PRODUCER, np);
    uint64_t stop[8];
    item_fill(stop, cfg->payload, STOP_TAG);
    for (int i = 0; i < nc; i++) {
      unsigned k = 0;
      int r;
      while ((r = q->push(state, local, stop)) == -EAGAIN) backoff(&k);
      if (r != 0) fail(ctl, "parent: push of a stop item returned %d", r);
    }
    detach(&self, local);
  }
  atomic_store_explicit(&ctl->done, 1, memory_order_release);
  for (int i = np; i < started; i++) worker_join(&ws[i], procs, ctl);
  uint64_t t1 = t0;
  for (int i = 0; i < nc; i++) t1 = ctl->t_end[i] > t1 ? ctl->t_end[i] : t1;
  if (q->destroy) q->destroy(state);
  if (atomic_load(&ctl->errors)) die_wrong(q, what, ctl);

  /* Exactly once: each pushed item in exactly one consumer's bitmap, nothing else. */
  uint64_t total = 0, got = 0;
  for (int c = 0; c < nc; c++) got += ctl->consumed[c];
  for (int p = 0; p < np; p++) {
    uint64_t made = ctl->produced[p];
    total += made;
    for (size_t w = 0; w < wpp; w++) {
      uint64_t expect;
      if ((uint64_t)(w + 1) * 64 <= made) expect = UINT64_MAX;
      else if ((uint64_t)w * 64 >= made) expect = 0;
      else expect = (1ull << (made - (uint64_t)w * 64)) - 1;
      uint64_t seen = 0, twice = 0;
      for (int c = 0; c < nc; c++) {
        uint64_t b = ctl->bitmaps[((size_t)c * (size_t)np + (size_t)p) * wpp + w];
        twice |= seen & b;
        seen |= b;
      }
      if (seen != expect || twice) {
        snprintf(ctl->err, sizeof ctl->err,
                 "producer %d items %zu..%zu: expected mask %#llx, delivered %#llx, "
                 "duplicated %#llx",
                 p, w * 64, w * 64 + 63, (unsigned long long)expect, (unsigned long long)seen,
                 (unsigned long long)twice);
        die_wrong(q, what, ctl);
      }
    }
  }
  if (got != total) {
    snprintf(ctl->err, sizeof ctl->err, "consumers counted %llu items, producers pushed %llu",
             (unsigned long long)got, (unsigned long long)total);
    die_wrong(q, what, ctl);
  }
  munmap(state, q->state_size ? q->state_size : 1);
  munmap(ctl, ctl_bytes);
  *items_out = total;
  return t1 > t0 ? (double)total / ((double)(t1 - t0) / 1e9) : 0;
}

/* ---- latency: ping-pong over two queues ---- */

typedef struct {
  const shootout_queue_t *q;
  void *qa, *qb; /* ping goes qa → ponger, pong comes back on qb */
  shootout_cfg_t cfg;
  ctl_t *ctl;
} pp_arg_t;

static void *ponger(void *p) {
  pp_arg_t *a = p;
  worker_arg_t wa = {a->q, a->qa, a->cfg, a->ctl, 0}, wb = {a->q, a->qb, a->cfg, a->ctl, 0};
  void *la = attach(&wa, SHOOTOUT_CONSUMER, 0), *lb = attach(&wb, SHOOTOUT_PRODUCER, 0);
  wait_go(a->ctl);
  uint64_t item[8];
  for (;;) {
    unsigned n = 0;
    int rc;
    while ((rc = a->q->pop(a->qa, la, item)) == -EAGAIN) backoff(&n);
    if (rc != 0) {
      fail(a->ctl, "ponger: pop returned %d", rc);
      break;
    }
    if (item[0] == STOP_TAG) break;
    n = 0;
    while ((rc = a->q->push(a->qb, lb, item)) == -EAGAIN) backoff(&n);
    if (rc != 0) {
      fail(a->ctl, "ponger: push returned %d", rc);
      break;
    }
  }
  detach(&wa, la);
  detach(&wb, lb);
  return NULL;
}

static int cmp_u64(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return (a > b) - (a < b);
}

/* Fills p50/p99 (ns per round trip) over up to `rounds` round trips, fewer
 * (at least 100) when max_ns runs out first: on an oversubscribed machine a
 * round trip can cost a scheduler time slice. *rounds_out says how many.
 * Returns 0 or init's negative errno. */
static int latency_run(const shootout_queue_t *q, const shootout_cfg_t *cfg, int rounds,
                       uint64_t max_ns, const char *what, double *p50, double *p99,
                       int *rounds_out) {
  ctl_t *ctl = map_shared(sizeof(ctl_t));
  void *qa = map_shared(q->state_size ? q->state_size : 1);
  void *qb = map_shared(q->state_size ? q->state_size : 1);
  int rc = q->init ? q->init(qa, cfg) : 0;
  if (rc == 0 && q->init && (rc = q->init(qb, cfg)) < 0 && q->destroy) q->destroy(qa);
  if (rc < 0) {
    munmap(qa, q->state_size ? q->state_size : 1);
    munmap(qb, q->state_size ? q->state_size : 1);
    munmap(ctl, sizeof(ctl_t));
    return rc;
  }
  pp_arg_t pa = {q, qa, qb, *cfg, ctl};
  worker_t w;
  if ((rc = worker_start(&w, cfg->procs, ponger, &pa)) < 0) {
    fprintf(stderr, "shootout %s %s: cannot start ponger: %s\n", q->name, what, strerror(-rc));
    exit(1);
  }
  worker_arg_t wa = {q, qa, *cfg, ctl, 0}, wb = {q, qb, *cfg, ctl, 0};
  void *la = attach(&wa, SHOOTOUT_PRODUCER, 0), *lb = attach(&wb, SHOOTOUT_CONSUMER, 0);
  unsigned n = 0;
  while (atomic_load(&ctl->ready) < 1) backoff(&n);
  atomic_store_explicit(&ctl->go, 1, memory_order_release);
  const int warm = rounds / 10 + 10;
  uint64_t *rtt = malloc(sizeof(uint64_t) * (size_t)rounds);
  if (!rtt) abort();
  uint64_t item[8], back[8];
  const uint64_t until = bench_now_ns() + max_ns;
  int done = 0;
  for (int i = 0; i < warm + rounds && !atomic_load(&ctl->errors); i++) {
    if (done >= 100 && bench_now_ns() > until) break;
    item_fill(item, cfg->payload, (1ull << SEQ_BITS) | (uint64_t)i);
    uint64_t t0 = bench_now_ns();
    n = 0;
    while ((rc = q->push(qa, la, item)) == -EAGAIN) backoff(&n);
    if (rc != 0) fail(ctl, "pinger: push returned %d", rc);
    n = 0;
    while ((rc = q->pop(qb, lb, back)) == -EAGAIN) backoff(&n);
    if (rc != 0) fail(ctl, "pinger: pop returned %d", rc);
    uint64_t t1 = bench_now_ns();
    if (back[0] != item[0] || !item_ok(back, cfg->payload))
      fail(ctl, "pinger: sent item %d, got back tag %#llx", i, (unsigned long long)back[0]);
    if (i >= warm) rtt[done++] = t1 - t0;
  }
  item_fill(item, cfg->payload, STOP_TAG);
  n = 0;
  while ((rc = q->push(qa, la, item)) == -EAGAIN) backoff(&n);
  detach(&wa, la);
  detach(&wb, lb);
  worker_join(&w, cfg->procs, ctl);
  if (q->destroy) {
    q->destroy(qa);
    q->destroy(qb);
  }
  if (atomic_load(&ctl->errors)) die_wrong(q, what, ctl);
  qsort(rtt, (size_t)done, sizeof rtt[0], cmp_u64);
  *p50 = (double)rtt[done / 2];
  *p99 = (double)rtt[(size_t)done * 99 / 100];
  *rounds_out = done;
  free(rtt);
  munmap(qa, q->state_size ? q->state_size : 1);
  munmap(qb, q->state_size ? q->state_size : 1);
  munmap(ctl, sizeof(ctl_t));
  return 0;
}

/* ---- the matrix ---- */

static void params(char *out, size_t n, const shootout_queue_t *q, const shootout_cfg_t *cfg,
                   const char *extra) {
  int k = snprintf(out, n,
                   "{\"queue\": \"%s\", \"mode\": \"%s\", \"producers\": %d, \"consumers\": %d, "
                   "\"payload\": %zu, \"order\": \"%s\"%s",
                   q->name, cfg->procs ? "procs" : "threads", cfg->producers, cfg->consumers,
                   cfg->payload, (q->flags & SHOOTOUT_LIFO) ? "LIFO" : "FIFO", extra);
  if (q->note && k > 0 && (size_t)k < n) k += snprintf(out + k, n - (size_t)k, ", \"note\": \"%s\"", q->note);
  if (k > 0 && (size_t)k < n) snprintf(out + k, n - (size_t)k, "}");
}

static void report_rc(bench_ctx_t *ctx, const char *fig, int rc) {
  char why[128];
  snprintf(why, sizeof why, "queue refused this configuration: %s", strerror(-rc));
  bench_skip(ctx, fig, why);
}

void shootout_run(bench_ctx_t *ctx, const shootout_queue_t *q) {
  char fig[160], par[512];
  if (q->skip_why) {
    snprintf(fig, sizeof fig, "shootout.%s", q->name);
    bench_skip(ctx, fig, q->skip_why);
    return;
  }
  if (!(q->flags & SHOOTOUT_PROCS)) {
    snprintf(fig, sizeof fig, "shootout.%s.procs", q->name);
    bench_skip(ctx, fig, q->procs_why ? q->procs_why : "threads only");
  }
  int maxn = ctx->max_threads > 1 ? ctx->max_threads : 2;
  if (maxn > MAX_WORKERS) maxn = MAX_WORKERS;
  /* N = 2, 4, 8, ... and maxn itself. */
  int ns[16], nn = 0;
  for (int v = 2; v < maxn && nn < 15; v *= 2) ns[nn++] = v;
  ns[nn++] = maxn;
  if (ctx->quick) {
    ns[0] = 2;
    nn = 1;
  }
  /* (P, C) pairs. */
  int tp[64][2], nt = 0;
  tp[nt][0] = 1, tp[nt][1] = 1, nt++;
  for (int i = 0; i < nn; i++) {
    if (!ctx->quick) {
      tp[nt][0] = 1, tp[nt][1] = ns[i], nt++;
      tp[nt][0] = ns[i], tp[nt][1] = 1, nt++;
    }
    tp[nt][0] = ns[i], tp[nt][1] = ns[i], nt++;
  }
  const size_t payloads[2] = {8, 64};
  const uint64_t run_ns = ctx->quick ? 20000000ull : 100000000ull;
  const uint64_t items_cap = ctx->quick ? (1ull << 22) : (1ull << 25);
  const int rounds = ctx->quick ? 2000 : 20000;
  for (int mode = 0; mode < 2; mode++) {
    if (mode == 0 && !(q->flags & SHOOTOUT_THREADS)) continue;
    if (mode == 1 && !(q->flags & SHOOTOUT_PROCS)) continue;
    for (int pi = ctx->quick ? 1 : 0; pi < 2; pi++) {
      for (int t = 0; t < nt; t++) {
        if (ctx->rep > 0 && bench_budget_left(ctx) == 0) return;
        shootout_cfg_t cfg = {tp[t][0], tp[t][1], payloads[pi], mode};
        if ((q->flags & SHOOTOUT_SP) && cfg.producers > 1) continue;
        if ((q->flags & SHOOTOUT_SC) && cfg.consumers > 1) continue;
        snprintf(fig, sizeof fig, "shootout.%s.%s.%dto%d.%zuB", q->name,
                 mode ? "procs" : "threads", cfg.producers, cfg.consumers, cfg.payload);
        /* Bitmaps take consumers × producers × max_items bits: keep them
         * under 2^31 bits (256 MiB) however many workers run. */
        uint64_t max_items = items_cap, pairs = (uint64_t)cfg.producers * (uint64_t)cfg.consumers;
        while (max_items > 4096 && max_items * pairs > (1ull << 31)) max_items /= 2;
        uint64_t items = 0;
        double rate = stream_run(q, &cfg, run_ns, max_items, fig, &items);
        if (rate < 0) {
          report_rc(ctx, fig, (int)rate);
          continue;
        }
        char extra[96];
        snprintf(extra, sizeof extra, ", \"items\": %llu, \"run_ms\": %llu",
                 (unsigned long long)items, (unsigned long long)(run_ns / 1000000));
        params(par, sizeof par, q, &cfg, extra);
        bench_report(ctx, fig, rate, "items/s", par);
      }
      if (ctx->rep > 0 && bench_budget_left(ctx) == 0) return;
      shootout_cfg_t cfg = {1, 1, payloads[pi], mode};
      double p50, p99;
      char base[120];
      snprintf(base, sizeof base, "shootout.%s.%s.%zuB.rtt", q->name, mode ? "procs" : "threads",
               cfg.payload);
      int done = 0;
      int rc = latency_run(q, &cfg, rounds, ctx->quick ? 100000000ull : 1000000000ull, base, &p50,
                           &p99, &done);
      snprintf(fig, sizeof fig, "%s.p50", base);
      if (rc < 0) {
        report_rc(ctx, fig, rc);
        continue;
      }
      char extra[64];
      snprintf(extra, sizeof extra, ", \"round_trips\": %d", done);
      params(par, sizeof par, q, &cfg, extra);
      bench_report(ctx, fig, p50, "ns", par);
      snprintf(fig, sizeof fig, "%s.p99", base);
      bench_report(ctx, fig, p99, "ns", par);
    }
  }
}
