/* bench/shootout.h — the lock-free queue shoot-out harness.
 *
 * One harness drives every queue (carom's rings and the peers: ck_ring,
 * liburcu, AO_stack, pipe, socketpair, POSIX mq) through the same workloads,
 * so their figures differ only by the queue:
 *
 *   - stream: P producers push tagged items for a fixed time, C consumers pop
 *     them; items/s = items delivered / (first push .. last consumer done).
 *     Topologies 1→1, 1→N, N→1, N→N for N = 2, 4, ... up to ctx->max_threads
 *     (--threads), as threads of one process and, when the queue allows it,
 *     as processes sharing a MAP_SHARED mapping; payloads 8 B and 64 B.
 *   - latency: one item in flight between two queues (ping-pong), per-round-
 *     trip percentiles p50 and p99.
 *
 * Every stream run is verified: each item carries (producer, sequence); each
 * consumer records what it got in its own bitmap and checks that sequences of
 * one producer arrive in increasing order (FIFO queues); 64 B payloads carry a
 * pattern derived from the tag that the consumer checks word by word. After
 * the run, every item each producer pushed must be in exactly one consumer's
 * bitmap and nothing else. A wrong result prints what went wrong and exits
 * the benchmark process with status 1.
 *
 * ---- The adapter: plugging a queue in -------------------------------------
 *
 *   static const shootout_queue_t my_ring = {
 *     .name = "carom_ring_mpmc",        // figure names: shootout.<name>.*
 *     .flags = SHOOTOUT_THREADS | SHOOTOUT_PROCS,
 *     .state_size = sizeof(my_state_t), // harness allocates it zeroed, in a
 *                                       // MAP_SHARED mapping (fork-inherited)
 *     .init = my_init, .destroy = my_destroy,
 *     .push = my_push, .pop = my_pop,   // attach/detach optional
 *   };
 *   static void bench_it(bench_ctx_t *ctx) { shootout_run(ctx, &my_ring); }
 *   CAROM_BENCH("shootout", "shootout.carom_ring_mpmc", bench_it)
 *
 * Calls, in order:
 *   init(state, cfg)          once, in the parent, before any worker starts.
 *                             cfg says producers, consumers and the payload
 *                             size (8 or 64). Return 0, or a negative errno to
 *                             skip this configuration (reported via bench_skip
 *                             with strerror). The state is reused for nothing
 *                             else; a new one is made for every run.
 *   attach(state, role, idx)  in each worker thread/process before it starts
 *                             (role SHOOTOUT_PRODUCER or SHOOTOUT_CONSUMER,
 *                             idx its 0-based index in that role); returns a
 *                             per-worker pointer passed to push/pop (may be
 *                             NULL). Optional.
 *   push(state, local, item)  copy cfg->payload bytes from item into the queue.
 *                             Return 0, or -EAGAIN when full (the harness
 *                             spins briefly, then sched_yield()s, and retries).
 *                             With SHOOTOUT_BLOCKING it may block instead.
 *   pop(state, local, item)   copy the oldest (LIFO: newest) item's payload
 *                             bytes into item. Return 0, or -EAGAIN when empty.
 *                             With SHOOTOUT_BLOCKING it blocks until an item
 *                             arrives; the harness then ends consumers by
 *                             pushing one stop item per consumer after all
 *                             producers have finished (so such a queue must be
 *                             FIFO).
 *   detach(state, local)      in the worker after its last push/pop. Optional.
 *   destroy(state)            once, in the parent, after every worker ended.
 *
 * A push by the parent (stop items) uses attach(state, SHOOTOUT_PRODUCER,
 * cfg->producers), i.e. one producer index past the workers'; it happens only
 * after every producer has finished, so single-producer queues stay correct.
 * In process mode each worker is a fork() of the parent: file descriptors and
 * the MAP_SHARED state are inherited, heap pointers are not shared.
 */
#ifndef CAROM_BENCH_SHOOTOUT_H
#define CAROM_BENCH_SHOOTOUT_H

#include "bench.h"

#include <stddef.h>
#include <stdint.h>

enum {
  SHOOTOUT_THREADS = 1u << 0,  /* can run as threads of one process */
  SHOOTOUT_PROCS = 1u << 1,    /* state works across fork() in a MAP_SHARED mapping */
  SHOOTOUT_SP = 1u << 2,       /* at most one producer */
  SHOOTOUT_SC = 1u << 3,       /* at most one consumer */
  SHOOTOUT_LIFO = 1u << 4,     /* not FIFO: no per-producer order check */
  SHOOTOUT_BLOCKING = 1u << 5, /* pop (and push when full) blocks; see above */
};

enum { SHOOTOUT_PRODUCER = 0, SHOOTOUT_CONSUMER = 1 };

typedef struct shootout_cfg {
  int producers, consumers;
  size_t payload;     /* bytes per item: 8 or 64 */
  int procs;          /* 1: workers are processes, 0: threads */
} shootout_cfg_t;

typedef struct shootout_queue {
  const char *name;       /* figure names: shootout.<name>.<mode>.<P>to<C>.<payload>B */
  unsigned flags;         /* SHOOTOUT_* */
  const char *note;       /* optional; goes into every figure's params ("note") */
  const char *skip_why;   /* non-NULL: report every figure skipped with this */
  const char *procs_why;  /* why SHOOTOUT_PROCS is absent (reported once) */
  size_t state_size;
  int (*init)(void *state, const shootout_cfg_t *cfg);
  void (*destroy)(void *state);
  void *(*attach)(void *state, int role, int idx);
  void (*detach)(void *state, void *local);
  int (*push)(void *state, void *local, const void *item);
  int (*pop)(void *state, void *local, void *item);
} shootout_queue_t;

/* Run the whole matrix for one queue (see top of file), reporting figures
 * through ctx. Under --quick: 1→1 and 2→2 only, 64 B only, short runs. The
 * first repetition always runs the whole matrix; a later one returns early
 * when the benchmark's budget (bench_budget_left) is spent. */
void shootout_run(bench_ctx_t *ctx, const shootout_queue_t *q);

#endif
