/* bench/bench_queue_peers.c — the peers of the queue shoot-out (shootout.h):
 * Concurrency Kit's ck_ring (SPSC and MPMC, threads and processes), liburcu's
 * wfcqueue and RCU lock-free queue and libatomic_ops' AO_stack (threads only),
 * and three kernel baselines: a pipe, an AF_UNIX socketpair and a POSIX message
 * queue (threads and processes).
 *
 * A library missing at configure time compiles its adapter out; its rows then
 * say "peer not installed" (CAROM_HAVE_CK / CAROM_HAVE_URCU / CAROM_HAVE_AO
 * come from bench/CMakeLists.txt).
 *
 * Intrusive queues (wfcqueue, lfqueue, AO_stack) link nodes by pointer, so
 * they run between threads only: every producer owns a pool of nodes, made and
 * touched before timing starts. A consumer copies the payload out and clears
 * the node's busy flag; the producer reuses a node only once its flag is
 * clear (pool exhausted = queue full). The RCU queue needs more: a dequeued
 * node may still be read by concurrent dequeuers inside their read-side
 * critical sections, so a producer starting on a half of its pool first waits
 * for that half to be free and then for a grace period (synchronize_rcu).
 */
#include "shootout.h"

#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Kernel baselines: one syscall per push and per pop, blocking.       */

typedef struct {
  int fd[2];
  size_t payload;
} fdq_t;

static int fdq_push(void *s, void *local, const void *item) {
  (void)local;
  fdq_t *q = s;
  const char *p = item;
  size_t left = q->payload;
  while (left) {
    ssize_t n = write(q->fd[1], p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += n, left -= (size_t)n;
  }
  return 0;
}

static int fdq_pop(void *s, void *local, void *item) {
  (void)local;
  fdq_t *q = s;
  char *p = item;
  size_t left = q->payload;
  while (left) {
    ssize_t n = read(q->fd[0], p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EPIPE;
    p += n, left -= (size_t)n;
  }
  return 0;
}

static void fdq_destroy(void *s) {
  fdq_t *q = s;
  close(q->fd[0]);
  close(q->fd[1]);
}

static int pipe_init(void *s, const shootout_cfg_t *cfg) {
  fdq_t *q = s;
  q->payload = cfg->payload;
  return pipe2(q->fd, O_CLOEXEC) ? -errno : 0;
}

static int sock_init(void *s, const shootout_cfg_t *cfg) {
  fdq_t *q = s;
  q->payload = cfg->payload;
  /* SEQPACKET keeps message boundaries, so several readers never split one. */
  return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, q->fd) ? -errno : 0;
}

static const shootout_queue_t q_pipe = {
    .name = "pipe",
    .flags = SHOOTOUT_THREADS | SHOOTOUT_PROCS | SHOOTOUT_BLOCKING,
    .note = "kernel: one write() per push, one read() per pop",
    .state_size = sizeof(fdq_t),
    .init = pipe_init,
    .destroy = fdq_destroy,
    .push = fdq_push,
    .pop = fdq_pop,
};

static const shootout_queue_t q_sock = {
    .name = "socketpair",
    .flags = SHOOTOUT_THREADS | SHOOTOUT_PROCS | SHOOTOUT_BLOCKING,
    .note = "kernel: AF_UNIX SOCK_SEQPACKET, one write() per push, one read() per pop",
    .state_size = sizeof(fdq_t),
    .init = sock_init,
    .destroy = fdq_destroy,
    .push = fdq_push,
    .pop = fdq_pop,
};

typedef struct {
  mqd_t mq;
  size_t payload;
} mqq_t;

static long read_long(const char *path, long dflt) {
  FILE *f = fopen(path, "re");
  long v = dflt;
  if (f) {
    if (fscanf(f, "%ld", &v) != 1) v = dflt;
    fclose(f);
  }
  return v;
}

static int mq_init(void *s, const shootout_cfg_t *cfg) {
  mqq_t *q = s;
  static _Atomic unsigned serial;
  char name[64];
  snprintf(name, sizeof name, "/carom-bench.%d.%u", (int)getpid(), atomic_fetch_add(&serial, 1));
  /* An unprivileged process may not exceed msg_max (10 by default). */
  long maxmsg = read_long("/proc/sys/fs/mqueue/msg_max", 10);
  if (maxmsg > 256) maxmsg = 256;
  struct mq_attr at = {.mq_maxmsg = maxmsg, .mq_msgsize = (long)cfg->payload};
  q->payload = cfg->payload;
  q->mq = mq_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600, &at);
  if (q->mq == (mqd_t)-1) return -errno;
  mq_unlink(name); /* the descriptor keeps it alive; nothing is left behind */
  return 0;
}

static int mq_push(void *s, void *local, const void *item) {
  (void)local;
  mqq_t *q = s;
  while (mq_send(q->mq, item, q->payload, 0) != 0)
    if (errno != EINTR) return -errno;
  return 0;
}

static int mq_pop(void *s, void *local, void *item) {
  (void)local;
  mqq_t *q = s;
  ssize_t n;
  while ((n = mq_receive(q->mq, item, q->payload, NULL)) < 0)
    if (errno != EINTR) return -errno;
  return (size_t)n == q->payload ? 0 : -EMSGSIZE;
}

static void mq_destroy(void *s) { mq_close(((mqq_t *)s)->mq); }

static const shootout_queue_t q_mq = {
    .name = "mq",
    .flags = SHOOTOUT_THREADS | SHOOTOUT_PROCS | SHOOTOUT_BLOCKING,
    .note = "kernel: POSIX mq_send/mq_receive, mq_maxmsg = /proc/sys/fs/mqueue/msg_max",
    .state_size = sizeof(mqq_t),
    .init = mq_init,
    .destroy = mq_destroy,
    .push = mq_push,
    .pop = mq_pop,
};

static void bench_pipe(bench_ctx_t *ctx) { shootout_run(ctx, &q_pipe); }
static void bench_sock(bench_ctx_t *ctx) { shootout_run(ctx, &q_sock); }
static void bench_mq(bench_ctx_t *ctx) { shootout_run(ctx, &q_mq); }
CAROM_BENCH("shootout", "shootout.pipe", bench_pipe)
CAROM_BENCH("shootout", "shootout.socketpair", bench_sock)
CAROM_BENCH("shootout", "shootout.mq", bench_mq)

/* ------------------------------------------------------------------ */
/* Concurrency Kit ck_ring: items stored in the ring, works in MAP_SHARED. */

#define RING_SLOTS 1024 /* ck_ring holds size - 1 */

#ifdef CAROM_HAVE_CK
#include <ck_ring.h>

struct it8 {
  uint64_t w[1];
};
struct it64 {
  uint64_t w[8];
};
CK_RING_PROTOTYPE(it8, it8)
CK_RING_PROTOTYPE(it64, it64)

typedef struct {
  struct ck_ring ring;
  size_t payload;
  char pad[64];
  struct it64 buf[RING_SLOTS] __attribute__((aligned(64)));
} ckq_t;

static int ck_init(void *s, const shootout_cfg_t *cfg) {
  ckq_t *q = s;
  q->payload = cfg->payload;
  ck_ring_init(&q->ring, RING_SLOTS);
  return 0;
}

static int ck_push_spsc(void *s, void *local, const void *item) {
  (void)local;
  ckq_t *q = s;
  bool ok = q->payload == 8
                ? CK_RING_ENQUEUE_SPSC(it8, &q->ring, (struct it8 *)q->buf, (struct it8 *)item)
                : CK_RING_ENQUEUE_SPSC(it64, &q->ring, q->buf, (struct it64 *)item);
  return ok ? 0 : -EAGAIN;
}

static int ck_pop_spsc(void *s, void *local, void *item) {
  (void)local;
  ckq_t *q = s;
  bool ok = q->payload == 8
                ? CK_RING_DEQUEUE_SPSC(it8, &q->ring, (struct it8 *)q->buf, (struct it8 *)item)
                : CK_RING_DEQUEUE_SPSC(it64, &q->ring, q->buf, (struct it64 *)item);
  return ok ? 0 : -EAGAIN;
}

static int ck_push_mpmc(void *s, void *local, const void *item) {
  (void)local;
  ckq_t *q = s;
  bool ok = q->payload == 8
                ? CK_RING_ENQUEUE_MPMC(it8, &q->ring, (struct it8 *)q->buf, (struct it8 *)item)
                : CK_RING_ENQUEUE_MPMC(it64, &q->ring, q->buf, (struct it64 *)item);
  return ok ? 0 : -EAGAIN;
}

static int ck_pop_mpmc(void *s, void *local, void *item) {
  (void)local;
  ckq_t *q = s;
  bool ok = q->payload == 8
                ? CK_RING_DEQUEUE_MPMC(it8, &q->ring, (struct it8 *)q->buf, (struct it8 *)item)
                : CK_RING_DEQUEUE_MPMC(it64, &q->ring, q->buf, (struct it64 *)item);
  return ok ? 0 : -EAGAIN;
}

static const shootout_queue_t q_ck_spsc = {
    .name = "ck_ring_spsc",
    .flags = SHOOTOUT_THREADS | SHOOTOUT_PROCS | SHOOTOUT_SP | SHOOTOUT_SC,
    .note = "ck_ring 1023 slots, items copied into the ring",
    .state_size = sizeof(ckq_t),
    .init = ck_init,
    .push = ck_push_spsc,
    .pop = ck_pop_spsc,
};
static const shootout_queue_t q_ck_mpmc = {
    .name = "ck_ring_mpmc",
    .flags = SHOOTOUT_THREADS | SHOOTOUT_PROCS,
    .note = "ck_ring 1023 slots, items copied into the ring",
    .state_size = sizeof(ckq_t),
    .init = ck_init,
    .push = ck_push_mpmc,
    .pop = ck_pop_mpmc,
};
#else
static const shootout_queue_t q_ck_spsc = {.name = "ck_ring_spsc",
                                           .skip_why = "peer not installed (libck-dev)"};
static const shootout_queue_t q_ck_mpmc = {.name = "ck_ring_mpmc",
                                           .skip_why = "peer not installed (libck-dev)"};
#endif

static void bench_ck_spsc(bench_ctx_t *ctx) { shootout_run(ctx, &q_ck_spsc); }
static void bench_ck_mpmc(bench_ctx_t *ctx) { shootout_run(ctx, &q_ck_mpmc); }
CAROM_BENCH("shootout", "shootout.ck_ring_spsc", bench_ck_spsc)
CAROM_BENCH("shootout", "shootout.ck_ring_mpmc", bench_ck_mpmc)

/* ------------------------------------------------------------------ */
/* Intrusive, pointer-linked queues: per-producer node pools.          */

#if defined(CAROM_HAVE_URCU) || defined(CAROM_HAVE_AO)
#define _LGPL_SOURCE 1
#ifdef CAROM_HAVE_URCU
#include <urcu/urcu-memb.h>
#include <urcu/rculfqueue.h>
#include <urcu/wfcqueue.h>
#endif
#ifdef CAROM_HAVE_AO
#include <atomic_ops_stack.h>
#endif

#define POOL_NODES 16384 /* per producer; a power of two */
#define MAX_POOLS 257

typedef struct pnode {
  union {
#ifdef CAROM_HAVE_URCU
    struct cds_wfcq_node wfcq;
    struct cds_lfq_node_rcu lfq;
#endif
#ifdef CAROM_HAVE_AO
    AO_t ao;
#endif
    void *any;
  } link;
  _Atomic uint32_t busy; /* set by the producer, cleared by the consumer */
  uint64_t w[8];
} __attribute__((aligned(64))) pnode_t;

typedef struct {
  pnode_t *nodes;
  uint64_t next;        /* next node index to use (mod POOL_NODES) */
  uint64_t synced_upto; /* lfq: halves below this index had their grace period */
} ppool_t;

typedef struct {
  union {
#ifdef CAROM_HAVE_URCU
    struct {
      struct cds_wfcq_head head;
      struct cds_wfcq_tail tail;
    } wfcq;
    struct cds_lfq_queue_rcu lfq;
#endif
#ifdef CAROM_HAVE_AO
    AO_stack_t ao;
#endif
    char any;
  } u;
  size_t payload;
  int npools;
  ppool_t pools[MAX_POOLS];
} iq_t;

static int pools_init(iq_t *q, const shootout_cfg_t *cfg) {
  q->payload = cfg->payload;
  q->npools = cfg->producers + 1; /* +1: the parent's stop items (unused here) */
  if (q->npools > MAX_POOLS) return -EINVAL;
  for (int i = 0; i < q->npools; i++) {
    q->pools[i].nodes = aligned_alloc(64, sizeof(pnode_t) * POOL_NODES);
    if (!q->pools[i].nodes) return -ENOMEM;
    /* Touch every page now, not in the timed loop. */
    memset(q->pools[i].nodes, 0, sizeof(pnode_t) * POOL_NODES);
  }
  return 0;
}

static void pools_free(iq_t *q) {
  for (int i = 0; i < q->npools; i++) free(q->pools[i].nodes);
}

static void *pool_attach(void *s, int role, int idx) {
  iq_t *q = s;
  return role == SHOOTOUT_PRODUCER ? &q->pools[idx] : NULL;
}

/* The next free node of a producer's pool, or NULL (pool exhausted = full). */
static pnode_t *pool_take(ppool_t *p) {
  pnode_t *n = &p->nodes[p->next & (POOL_NODES - 1)];
  return atomic_load_explicit(&n->busy, memory_order_acquire) ? NULL : n;
}

static void node_fill(iq_t *q, ppool_t *p, pnode_t *n, const void *item) {
  memcpy(n->w, item, q->payload);
  atomic_store_explicit(&n->busy, 1, memory_order_relaxed); /* published by the enqueue */
  p->next++;
}

static void node_drain(iq_t *q, pnode_t *n, void *item) {
  memcpy(item, n->w, q->payload);
  atomic_store_explicit(&n->busy, 0, memory_order_release); /* copy done before reuse */
}
#endif

#ifdef CAROM_HAVE_URCU
/* wfcqueue: wait-free enqueue, dequeue under the queue's internal mutex. */

static int wfcq_init(void *s, const shootout_cfg_t *cfg) {
  iq_t *q = s;
  cds_wfcq_init(&q->u.wfcq.head, &q->u.wfcq.tail);
  return pools_init(q, cfg);
}

static void wfcq_destroy(void *s) {
  iq_t *q = s;
  cds_wfcq_destroy(&q->u.wfcq.head, &q->u.wfcq.tail);
  pools_free(q);
}

static int wfcq_push(void *s, void *local, const void *item) {
  iq_t *q = s;
  pnode_t *n = pool_take(local);
  if (!n) return -EAGAIN;
  node_fill(q, local, n, item);
  cds_wfcq_node_init(&n->link.wfcq);
  cds_wfcq_enqueue(&q->u.wfcq.head, &q->u.wfcq.tail, &n->link.wfcq);
  return 0;
}

static int wfcq_pop(void *s, void *local, void *item) {
  (void)local;
  iq_t *q = s;
  struct cds_wfcq_node *l = cds_wfcq_dequeue_blocking(&q->u.wfcq.head, &q->u.wfcq.tail);
  if (!l) return -EAGAIN;
  node_drain(q, caa_container_of(l, pnode_t, link.wfcq), item);
  return 0;
}

/* rculfqueue: lock-free, needs RCU: readers registered, ops in read-side
 * critical sections, dummies freed through call_rcu (urcu-memb flavour). */

static int lfq_init(void *s, const shootout_cfg_t *cfg) {
  iq_t *q = s;
  cds_lfq_init_rcu(&q->u.lfq, urcu_memb_call_rcu);
  return pools_init(q, cfg);
}

/* A thread may attach to two queues (ping-pong): register it once. */
static __thread int lfq_attached;

static void *lfq_attach(void *s, int role, int idx) {
  if (lfq_attached++ == 0) urcu_memb_register_thread();
  return pool_attach(s, role, idx);
}

static void lfq_detach(void *s, void *local) {
  (void)s, (void)local;
  if (--lfq_attached == 0) urcu_memb_unregister_thread();
}

static void lfq_destroy(void *s) {
  iq_t *q = s;
  lfq_attach(s, SHOOTOUT_CONSUMER, 0);
  /* Drain what an ended run left (nothing, when verification passed). */
  for (;;) {
    urcu_memb_read_lock();
    struct cds_lfq_node_rcu *l = cds_lfq_dequeue_rcu(&q->u.lfq);
    urcu_memb_read_unlock();
    if (!l) break;
  }
  if (cds_lfq_destroy_rcu(&q->u.lfq) != 0) abort();
  lfq_detach(s, NULL);
  urcu_memb_barrier(); /* dummy frees queued with call_rcu complete */
  pools_free(q);
}

static int lfq_push(void *s, void *local, const void *item) {
  iq_t *q = s;
  ppool_t *p = local;
  const uint64_t half = POOL_NODES / 2;
  if (p->next >= POOL_NODES && p->next % half == 0 && p->synced_upto <= p->next) {
    /* About to reuse a half of the pool: every node of it dequeued, then a
     * grace period so no concurrent dequeuer still reads one of them. */
    for (uint64_t i = 0; i < half; i++)
      if (atomic_load_explicit(&p->nodes[(p->next + i) & (POOL_NODES - 1)].busy,
                               memory_order_acquire))
        return -EAGAIN;
    urcu_memb_synchronize_rcu();
    p->synced_upto = p->next + 1;
  }
  pnode_t *n = pool_take(p);
  if (!n) return -EAGAIN;
  node_fill(q, p, n, item);
  cds_lfq_node_init_rcu(&n->link.lfq);
  urcu_memb_read_lock();
  cds_lfq_enqueue_rcu(&q->u.lfq, &n->link.lfq);
  urcu_memb_read_unlock();
  return 0;
}

static int lfq_pop(void *s, void *local, void *item) {
  (void)local;
  iq_t *q = s;
  urcu_memb_read_lock();
  struct cds_lfq_node_rcu *l = cds_lfq_dequeue_rcu(&q->u.lfq);
  urcu_memb_read_unlock();
  if (!l) return -EAGAIN;
  node_drain(q, caa_container_of(l, pnode_t, link.lfq), item);
  return 0;
}

static const shootout_queue_t q_wfcq = {
    .name = "urcu_wfcq",
    .flags = SHOOTOUT_THREADS,
    .note = "liburcu wfcqueue, intrusive nodes from per-producer pools",
    .procs_why = "threads only: nodes linked by pointer (heap memory of one process)",
    .state_size = sizeof(iq_t),
    .init = wfcq_init,
    .destroy = wfcq_destroy,
    .attach = pool_attach,
    .push = wfcq_push,
    .pop = wfcq_pop,
};
static const shootout_queue_t q_lfq = {
    .name = "urcu_lfq",
    .flags = SHOOTOUT_THREADS,
    .note = "liburcu rculfqueue (urcu-memb flavour), intrusive nodes, malloc'd dummies",
    .procs_why = "threads only: pointers, malloc'd dummy nodes, RCU reader registry per process",
    .state_size = sizeof(iq_t),
    .init = lfq_init,
    .destroy = lfq_destroy,
    .attach = lfq_attach,
    .detach = lfq_detach,
    .push = lfq_push,
    .pop = lfq_pop,
};
#else
static const shootout_queue_t q_wfcq = {.name = "urcu_wfcq",
                                        .skip_why = "peer not installed (liburcu-dev)"};
static const shootout_queue_t q_lfq = {.name = "urcu_lfq",
                                       .skip_why = "peer not installed (liburcu-dev)"};
#endif

#ifdef CAROM_HAVE_AO
/* AO_stack: lock-free LIFO (a baseline, not a queue). */

static int ao_init(void *s, const shootout_cfg_t *cfg) {
  iq_t *q = s;
  AO_stack_init(&q->u.ao);
  return pools_init(q, cfg);
}

static void ao_destroy(void *s) { pools_free(s); }

static int ao_push(void *s, void *local, const void *item) {
  iq_t *q = s;
  pnode_t *n = pool_take(local);
  if (!n) return -EAGAIN;
  node_fill(q, local, n, item);
  AO_stack_push_release(&q->u.ao, &n->link.ao);
  return 0;
}

static int ao_pop(void *s, void *local, void *item) {
  (void)local;
  iq_t *q = s;
  AO_t *l = AO_stack_pop_acquire(&q->u.ao);
  if (!l) return -EAGAIN;
  node_drain(q, (pnode_t *)((char *)l - offsetof(pnode_t, link.ao)), item);
  return 0;
}

static const shootout_queue_t q_ao = {
    .name = "ao_stack",
    .flags = SHOOTOUT_THREADS | SHOOTOUT_LIFO,
    .note = "libatomic_ops AO_stack: LIFO baseline, intrusive nodes from per-producer pools",
    .procs_why = "threads only: nodes linked by pointer (heap memory of one process)",
    .state_size = sizeof(iq_t),
    .init = ao_init,
    .destroy = ao_destroy,
    .attach = pool_attach,
    .push = ao_push,
    .pop = ao_pop,
};
#else
static const shootout_queue_t q_ao = {.name = "ao_stack",
                                      .skip_why = "peer not installed (libatomic-ops-dev)"};
#endif

static void bench_wfcq(bench_ctx_t *ctx) { shootout_run(ctx, &q_wfcq); }
static void bench_lfq(bench_ctx_t *ctx) { shootout_run(ctx, &q_lfq); }
static void bench_ao(bench_ctx_t *ctx) { shootout_run(ctx, &q_ao); }
CAROM_BENCH("shootout", "shootout.urcu_wfcq", bench_wfcq)
CAROM_BENCH("shootout", "shootout.urcu_lfq", bench_lfq)
CAROM_BENCH("shootout", "shootout.ao_stack", bench_ao)
