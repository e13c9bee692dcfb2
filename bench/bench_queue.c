/* bench/bench_queue.c — items/s through carom's Queue, SimpleQueue and rings
 * between processes (1 producer -> 1 consumer at 64 B and 4 KiB; 2 -> 2 at
 * 64 B), beside a minimal raw shared-memory SPSC ring that only spins (the
 * ceiling a queue with blocking, crash recovery and a size limit is compared
 * with). Every run checks that each item arrived exactly once, in order per
 * producer, and aborts otherwise.
 *
 * Python's multiprocessing.Queue peer figure ("peer.mp.queue.64B.1to1") comes
 * from the shoot-out harness of the bench branch; ratios against it are
 * declared here and print once that figure is reported in the same run. */
#include "bench.h"
#include "carom/queue.h"
#include "carom/ring.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the raw baseline: SPSC ring that spins (yielding the CPU after a
 * while, so it is not starved on a shared machine), no futex, no checks ---- */

static inline void raw_backoff(unsigned *spins) {
  if (++*spins % 1024 == 0) sched_yield();
}

typedef struct {
  _Atomic uint64_t tail;
  char pad0[56];
  _Atomic uint64_t head;
  char pad1[56];
  uint64_t nslots, stride;
  char pad2[48];
  unsigned char slots[];
} raw_ring_t;

static void raw_put(raw_ring_t *r, const void *p, size_t len) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  unsigned spins = 0;
  while (t - atomic_load_explicit(&r->head, memory_order_acquire) >= r->nslots)
    raw_backoff(&spins);
  unsigned char *s = r->slots + (t & (r->nslots - 1)) * r->stride;
  memcpy(s, &len, sizeof len);
  memcpy(s + 8, p, len);
  atomic_store_explicit(&r->tail, t + 1, memory_order_release);
}

static size_t raw_get(raw_ring_t *r, void *p) {
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  unsigned spins = 0;
  while (atomic_load_explicit(&r->tail, memory_order_acquire) == h) raw_backoff(&spins);
  unsigned char *s = r->slots + (h & (r->nslots - 1)) * r->stride;
  size_t len;
  memcpy(&len, s, sizeof len);
  memcpy(p, s + 8, len);
  atomic_store_explicit(&r->head, h + 1, memory_order_release);
  return len;
}

/* ---- one transport under test ---- */

enum kind { K_RAW, K_SPSC, K_MPMC, K_QUEUE, K_SIMPLE };

typedef struct {
  enum kind kind;
  void *mem;
  size_t mem_size;
  carom_ring_t *ring;
  carom_queue_t *q;
  carom_simplequeue_t *sq;
  raw_ring_t *raw;
} transport_t;

static void *map_shared(size_t n) {
  void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) abort();
  return m;
}

enum { SLOTS = 1024 };

static void t_open(transport_t *t, enum kind k, size_t item) {
  memset(t, 0, sizeof *t);
  t->kind = k;
  if (k == K_RAW) {
    size_t stride = (item + 8 + 15) & ~(size_t)15;
    t->mem_size = sizeof(raw_ring_t) + SLOTS * stride;
    t->raw = t->mem = map_shared(t->mem_size);
    t->raw->nslots = SLOTS;
    t->raw->stride = stride;
  } else if (k == K_SPSC || k == K_MPMC) {
    t->mem_size = carom_ring_size(SLOTS, item);
    t->mem = map_shared(t->mem_size);
    if (carom_ring_init(t->mem, t->mem_size, k == K_SPSC ? CAROM_RING_SPSC : CAROM_RING_MPMC,
                        SLOTS, item, &t->ring))
      abort();
  } else if (k == K_QUEUE) {
    carom_queue_opts_t o = {sizeof o, SLOTS, item, 0, 0};
    if (carom_queue_create(&o, &t->q)) abort();
  } else {
    if (carom_simplequeue_create(item, &t->sq)) abort();
  }
}

static void t_close(transport_t *t) {
  if (t->mem) munmap(t->mem, t->mem_size);
  carom_queue_free(t->q);
  carom_simplequeue_free(t->sq);
}

static void t_put(transport_t *t, const void *p, size_t len) {
  int rc = 0;
  switch (t->kind) {
  case K_RAW: raw_put(t->raw, p, len); break;
  case K_SPSC:
  case K_MPMC: rc = carom_ring_put(t->ring, p, len, NULL); break;
  case K_QUEUE: rc = carom_queue_put(t->q, p, len, NULL); break;
  case K_SIMPLE: rc = carom_simplequeue_put(t->sq, p, len); break;
  }
  if (rc) {
    fprintf(stderr, "bench queue: put failed: %s\n", carom_strerror(rc));
    exit(1);
  }
}

/* Length, or -1 at the end of the stream (closed, or SimpleQueue's marker). */
static ssize_t t_get(transport_t *t, void *p, size_t cap) {
  ssize_t n = 0;
  switch (t->kind) {
  case K_RAW: return (ssize_t)raw_get(t->raw, p);
  case K_SPSC:
  case K_MPMC: n = carom_ring_get(t->ring, p, cap, NULL); break;
  case K_QUEUE: n = carom_queue_get(t->q, p, cap, NULL); break;
  case K_SIMPLE:
    n = carom_simplequeue_get(t->sq, p, cap);
    if (n == 1) return -1; /* the end marker: real items are >= 16 bytes */
    break;
  }
  if (n == CAROM_ECLOSED) return -1;
  if (n < 0) {
    fprintf(stderr, "bench queue: get failed: %s\n", carom_strerror((int)n));
    exit(1);
  }
  return n;
}

static void t_end(transport_t *t, int consumers) {
  switch (t->kind) {
  case K_SPSC:
  case K_MPMC: carom_ring_close(t->ring); break;
  case K_QUEUE: carom_queue_close(t->q); break;
  case K_SIMPLE:
    for (int i = 0; i < consumers; i++) t_put(t, "!", 1);
    break;
  case K_RAW: break; /* 1 -> 1 only: the consumer counts */
  }
}

/* ---- the run: P producers, C consumers, n items in all ---- */

typedef struct {
  _Atomic int go;
  _Atomic uint64_t received;
  _Atomic int bad;
} ctl_t;

static double run(enum kind k, size_t item, int np, int nc, uint64_t n) {
  transport_t t;
  t_open(&t, k, item);
  ctl_t *ctl = map_shared(sizeof *ctl);
  pid_t kids[8];
  int nk = 0;
  const uint64_t per = n / (uint64_t)np;
  for (int c = 0; c < nc; c++) {
    pid_t pid = fork();
    if (pid == 0) {
      unsigned char *buf = malloc(item);
      uint64_t last[8];
      memset(last, 0xff, sizeof last);
      uint64_t got = 0;
      for (;;) {
        if (k == K_RAW && got == n) break;
        ssize_t len = t_get(&t, buf, item);
        if (len < 0) break;
        uint64_t hdr[2];
        memcpy(hdr, buf, sizeof hdr);
        if ((size_t)len != item || hdr[0] >= (uint64_t)np ||
            (last[hdr[0]] != UINT64_MAX && hdr[1] <= last[hdr[0]]))
          atomic_fetch_add(&ctl->bad, 1);
        last[hdr[0]] = hdr[1];
        got++;
      }
      atomic_fetch_add(&ctl->received, got);
      _exit(0);
    }
    kids[nk++] = pid;
  }
  pid_t prods[8];
  for (int p = 0; p < np; p++) {
    pid_t pid = fork();
    if (pid == 0) {
      unsigned char *buf = calloc(1, item);
      while (!atomic_load(&ctl->go)) {
      }
      for (uint64_t i = 0; i < per; i++) {
        uint64_t hdr[2] = {(uint64_t)p, i};
        memcpy(buf, hdr, sizeof hdr);
        t_put(&t, buf, item);
      }
      _exit(0);
    }
    prods[p] = pid;
  }
  uint64_t t0 = bench_now_ns();
  atomic_store(&ctl->go, 1);
  for (int p = 0; p < np; p++) waitpid(prods[p], NULL, 0);
  t_end(&t, nc);
  for (int c = 0; c < nk; c++) waitpid(kids[c], NULL, 0);
  uint64_t t1 = bench_now_ns();
  if (atomic_load(&ctl->received) != per * (uint64_t)np || atomic_load(&ctl->bad)) {
    fprintf(stderr, "bench queue: kind %d: received %llu of %llu, %d bad\n", (int)k,
            (unsigned long long)atomic_load(&ctl->received),
            (unsigned long long)(per * (uint64_t)np), atomic_load(&ctl->bad));
    exit(1);
  }
  munmap(ctl, sizeof *ctl);
  t_close(&t);
  return (double)(per * (uint64_t)np) / ((double)(t1 - t0) / 1e9);
}

static void report(bench_ctx_t *ctx, const char *name, enum kind k, size_t item, int np, int nc,
                   uint64_t n) {
  char params[128];
  snprintf(params, sizeof params,
           "{\"item_bytes\": %zu, \"producers\": %d, \"consumers\": %d, \"items\": %llu}", item,
           np, nc, (unsigned long long)n);
  bench_report(ctx, name, run(k, item, np, nc, n), "items/s", params);
}

static void queue_1to1_64(bench_ctx_t *ctx) {
  uint64_t n = bench_scale(ctx, 4000000);
  report(ctx, "queue.raw_spsc.64B.1to1", K_RAW, 64, 1, 1, n);
  report(ctx, "queue.ring_spsc.64B.1to1", K_SPSC, 64, 1, 1, n);
  report(ctx, "queue.ring_mpmc.64B.1to1", K_MPMC, 64, 1, 1, n);
  report(ctx, "queue.queue.64B.1to1", K_QUEUE, 64, 1, 1, n);
  report(ctx, "queue.simplequeue.64B.1to1", K_SIMPLE, 64, 1, 1, n / 4);
  bench_ratio("queue.64B.1to1 Queue/raw SPSC ceiling (target >= 0.5)", "queue.queue.64B.1to1",
              "queue.raw_spsc.64B.1to1");
  bench_ratio("queue.64B.1to1 ring SPSC/raw SPSC ceiling", "queue.ring_spsc.64B.1to1",
              "queue.raw_spsc.64B.1to1");
  bench_ratio("queue.64B.1to1 Queue/SimpleQueue", "queue.queue.64B.1to1",
              "queue.simplequeue.64B.1to1");
  bench_ratio("queue.64B.1to1 Queue/Python mp.Queue (target >= 50)", "queue.queue.64B.1to1",
              "peer.mp.queue.64B.1to1");
}

static void queue_1to1_4k(bench_ctx_t *ctx) {
  uint64_t n = bench_scale(ctx, 400000);
  report(ctx, "queue.raw_spsc.4K.1to1", K_RAW, 4096, 1, 1, n);
  report(ctx, "queue.ring_spsc.4K.1to1", K_SPSC, 4096, 1, 1, n);
  report(ctx, "queue.ring_mpmc.4K.1to1", K_MPMC, 4096, 1, 1, n);
  report(ctx, "queue.queue.4K.1to1", K_QUEUE, 4096, 1, 1, n);
  report(ctx, "queue.simplequeue.4K.1to1", K_SIMPLE, 4096, 1, 1, n);
  bench_ratio("queue.4K.1to1 Queue/raw SPSC ceiling", "queue.queue.4K.1to1",
              "queue.raw_spsc.4K.1to1");
  bench_ratio("queue.4K.1to1 Queue/SimpleQueue", "queue.queue.4K.1to1",
              "queue.simplequeue.4K.1to1");
}

static void queue_2to2_64(bench_ctx_t *ctx) {
  uint64_t n = bench_scale(ctx, 2000000);
  report(ctx, "queue.ring_mpmc.64B.2to2", K_MPMC, 64, 2, 2, n);
  report(ctx, "queue.queue.64B.2to2", K_QUEUE, 64, 2, 2, n);
  report(ctx, "queue.simplequeue.64B.2to2", K_SIMPLE, 64, 2, 2, n / 4);
  bench_ratio("queue.64B.2to2 Queue/SimpleQueue", "queue.queue.64B.2to2",
              "queue.simplequeue.64B.2to2");
}

CAROM_BENCH("queue", "queue.1to1.64B", queue_1to1_64)
CAROM_BENCH("queue", "queue.1to1.4K", queue_1to1_4k)
CAROM_BENCH("queue", "queue.2to2.64B", queue_2to2_64)

/* ---- the shoot-out adapter (bench/shootout.h): carom's rings and Queue in
 * the same harness as ck_ring, liburcu, pipes, ... ---- */
#include "shootout.h"

enum { SO_SLOTS = 1024, SO_SLOT = 64, SO_HDR = 64 };

typedef struct {
  size_t payload;
  char pad[SO_HDR - sizeof(size_t)];
} so_hdr_t;

#define SO_RING_BYTES (SO_HDR + (1024 * 80 + 6 * 64))
#define SO_QUEUE_BYTES (SO_HDR + 128 + (1024 * 80 + 6 * 64))

static void *so_body(void *state) { return (unsigned char *)state + SO_HDR; }

static int so_ring_init(void *state, const shootout_cfg_t *cfg, carom_ring_kind_t kind) {
  ((so_hdr_t *)state)->payload = cfg->payload;
  return carom_ring_init(so_body(state), SO_RING_BYTES - SO_HDR, kind, SO_SLOTS, SO_SLOT, NULL);
}
static int so_spsc_init(void *s, const shootout_cfg_t *c) { return so_ring_init(s, c, CAROM_RING_SPSC); }
static int so_mpmc_init(void *s, const shootout_cfg_t *c) { return so_ring_init(s, c, CAROM_RING_MPMC); }
static int so_ring_push(void *state, void *local, const void *item) {
  (void)local;
  int rc = carom_ring_tryput(so_body(state), item, ((so_hdr_t *)state)->payload);
  return rc == -EAGAIN ? -EAGAIN : rc;
}
static int so_ring_pop(void *state, void *local, void *item) {
  (void)local;
  ssize_t n = carom_ring_tryget(so_body(state), item, SO_SLOT);
  return n >= 0 ? 0 : (int)n;
}

static int so_queue_init(void *state, const shootout_cfg_t *cfg) {
  ((so_hdr_t *)state)->payload = cfg->payload;
  carom_queue_opts_t o = {sizeof o, SO_SLOTS, SO_SLOT, 0, 0};
  carom_queue_t *q;
  if (carom_queue_footprint(&o) > SO_QUEUE_BYTES - SO_HDR) return -EINVAL;
  return carom_queue_init(so_body(state), SO_QUEUE_BYTES - SO_HDR, &o, &q);
}
static int so_queue_push(void *state, void *local, const void *item) {
  (void)local;
  return carom_queue_put(so_body(state), item, ((so_hdr_t *)state)->payload, NULL);
}
static int so_queue_pop(void *state, void *local, void *item) {
  (void)local;
  ssize_t n = carom_queue_get(so_body(state), item, SO_SLOT, NULL);
  return n >= 0 ? 0 : (int)n;
}

static const shootout_queue_t so_spsc = {
    .name = "carom_ring_spsc",
    .flags = SHOOTOUT_THREADS | SHOOTOUT_PROCS | SHOOTOUT_SP | SHOOTOUT_SC,
    .note = "carom SPSC ring, 1024 slots of 64 B, tryput/tryget",
    .state_size = SO_RING_BYTES,
    .init = so_spsc_init,
    .push = so_ring_push,
    .pop = so_ring_pop,
};
static const shootout_queue_t so_mpmc = {
    .name = "carom_ring_mpmc",
    .flags = SHOOTOUT_THREADS | SHOOTOUT_PROCS,
    .note = "carom crash-safe MPMC ring, 1024 slots of 64 B, tryput/tryget",
    .state_size = SO_RING_BYTES,
    .init = so_mpmc_init,
    .push = so_ring_push,
    .pop = so_ring_pop,
};
static const shootout_queue_t so_queue = {
    .name = "carom_queue",
    .flags = SHOOTOUT_THREADS | SHOOTOUT_PROCS | SHOOTOUT_BLOCKING,
    .note = "carom Queue, maxsize 1024, max_item 64, blocking put/get",
    .state_size = SO_QUEUE_BYTES,
    .init = so_queue_init,
    .push = so_queue_push,
    .pop = so_queue_pop,
};

static void so_bench_spsc(bench_ctx_t *ctx) { shootout_run(ctx, &so_spsc); }
static void so_bench_mpmc(bench_ctx_t *ctx) { shootout_run(ctx, &so_mpmc); }
static void so_bench_queue(bench_ctx_t *ctx) { shootout_run(ctx, &so_queue); }
CAROM_BENCH("shootout", "shootout.carom_ring_spsc", so_bench_spsc)
CAROM_BENCH("shootout", "shootout.carom_ring_mpmc", so_bench_mpmc)
CAROM_BENCH("shootout", "shootout.carom_queue", so_bench_queue)
