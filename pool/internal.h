/* pool/internal.h — private structures of the pool (never installed).
 *
 * Shared region (one MAP_SHARED anonymous mapping made before the template
 * process is forked, so the template and every worker see it at the same
 * address):
 *
 *   pool_shm_t header | slot_t[nslots] | per slot: down chan, up chan
 *
 * A chan is a single-producer single-consumer byte ring of frames. Down chans
 * carry task messages supervisor → worker; up chans carry results worker →
 * supervisor. Nothing in shared memory is protected by a lock, so a worker
 * dying at any instruction can only leave an unpublished frame behind, which
 * no reader ever sees.
 */
#ifndef CAROM_POOL_INTERNAL_H
#define CAROM_POOL_INTERNAL_H

#include "base/internal.h"
#include "carom/pool.h"

#include <sched.h>

/* ---------------------------------------------------------------- chan */

/* Frame: 8-byte header then the payload padded to 8 bytes. A message is one or
 * more frames, FIRST on the first and LAST on the last. PAD fills the end of
 * the ring when a frame does not fit before the wrap. */
enum { FR_FIRST = 1, FR_LAST = 2, FR_PAD = 4 };

typedef struct {
  uint32_t len;   /* payload bytes */
  uint32_t flags; /* FR_* */
} frame_t;

typedef struct {
  /* producer's line */
  _Atomic uint64_t head;      /* bytes published (release by producer) */
  _Atomic uint32_t prod_wait; /* producer sleeps (or wants a wake-up) for space */
  /* Producer only: frames are written below this offset (wrapping early with
   * a PAD to the ring's end), CHAN_SOFT at first, the whole ring once a frame
   * over a quarter of it is written: a ring that carries small messages
   * touches CHAN_SOFT bytes of fresh shared memory, not cap. */
  uint64_t lim;
  char pad0[CAROM_CACHELINE - 24];
  /* consumer's line */
  _Atomic uint64_t tail;      /* bytes consumed (release by consumer) */
  _Atomic uint32_t cons_wait; /* consumer sleeps for data */
  char pad1[CAROM_CACHELINE - 12];
  uint64_t cap;       /* data bytes, power of two */
  uint64_t data_off;  /* offset of the data area from this struct */
  char pad2[CAROM_CACHELINE - 16];
} chan_t;

enum { CHAN_SOFT = 65536 };
static inline char *chan_data(chan_t *c) { return (char *)c + c->data_off; }
static inline uint64_t chan_max_frame(const chan_t *c) { return c->cap / 4 - sizeof(frame_t); }

void chan_init(chan_t *c, uint64_t data_off, uint64_t cap);
/* Write frames of a message from iov (total bytes `total`), resuming at
 * *progress (bytes of the message already written). Returns true when the
 * whole message is published, false when the ring filled first (call again
 * later with the same arguments). Publishes after every frame. */
bool chan_write(chan_t *c, const struct iovec *iov, int iovcnt, size_t total, size_t *progress);
/* The same for a message made of two iovec arrays, a then b (saves building
 * one array when b is the caller's own list of items). */
bool chan_write2(chan_t *c, const struct iovec *a, size_t na, const struct iovec *b, size_t nb,
                 size_t total, size_t *progress);
/* The next frame, or NULL when none is published. Skips PAD frames. */
const frame_t *chan_peek(chan_t *c);
/* Release the frame returned by chan_peek. */
void chan_consume(chan_t *c, const frame_t *f);
static inline bool chan_empty(chan_t *c) {
  return atomic_load_explicit(&c->head, memory_order_acquire) ==
         atomic_load_explicit(&c->tail, memory_order_relaxed);
}

/* -------------------------------------------------------------- messages */

enum {
  MSG_TASK = 1,   /* down: items to run */
  MSG_RESULT = 2, /* up: results of a MSG_TASK */
  MSG_READY = 3,  /* up: worker started (initializer done) */
  MSG_STOP = 4,   /* down: nothing more for you (pool closed, work done): exit 0 */
};
/* Flag in a MSG_TASK's kind: wake the supervisor (if it sleeps) when the
 * message starts, because a time limit now runs or an accept callback waits.
 * Without it a sleeping supervisor would learn of the start only at its next
 * timed poll (up to 100 ms), and a limit could fire that late. */
enum { MSG_F_WAKE_ON_START = 1u << 16, MSG_KIND_MASK = 0xffff };
/* Flag in a message's kind. MSG_TASK: every item is ulen bytes long and the
 * item lengths are left out. MSG_RESULT: every item succeeded with a result
 * of ulen bytes, so the supervisor keeps only the bytes (item_res_t[] is
 * still sent but not kept). */
enum { MSG_F_UNIFORM = 1u << 17 };

/* Header at the start of every message. Down MSG_TASK: header, then
 * uint32_t len[count] padded to 8 (absent with MSG_F_UNIFORM), then the
 * items' bytes. Up MSG_RESULT:
 * header, then {int32 code; uint32 len}[count], then the results' bytes (error
 * messages for failed items). */
typedef struct {
  uint64_t job_id;
  uint64_t fn;       /* down: the task function (a reference under exec'd methods) */
  uint64_t ulen;     /* with MSG_F_UNIFORM: every item's length (down) or result length (up) */
  uint64_t first;    /* index of the first item in the job */
  uint32_t kind;
  uint32_t count;
  uint64_t seq;      /* per-slot message sequence number (down) / echoed (up) */
  uint64_t run_ns;   /* up: how long the worker ran the message */
  uint64_t start_ns; /* up: when it started it (CLOCK_MONOTONIC) */
} msg_t;

typedef struct {
  int32_t code;
  uint32_t len;
} item_res_t;

/* ------------------------------------------------------------------ slots */

enum { ERRMSG_MAX = 256, CANCEL_RING = 32 };

/* One per worker position; the worker process in it changes over time. */
typedef struct {
  /* written by the worker */
  _Atomic uint64_t started;   /* messages started (seq of the running one + 1) */
  _Atomic uint64_t started_ns; /* CLOCK_MONOTONIC when the running message started */
  _Atomic uint64_t soft_seq;  /* seq + 1 of the message whose soft limit expired */
  /* Written by the supervisor before it has the worker killed for message
   * seq: seq + 2, "run no message whose seq + 1 >= this". The worker raises
   * `started` (seq_cst), then reads this (seq_cst) before a message's first
   * item, and exits with EX_STOPPED instead of running it; so a kill meant
   * for a message that has just finished never takes the next one along. */
  _Atomic uint64_t stop_at;
  _Atomic int32_t pid;        /* worker pid (also set by the supervisor) */
  char errmsg[ERRMSG_MAX];    /* initializer failure message */
  /* written by the supervisor: seq + 1 of queued messages to skip (cancelled),
   * at index seq % CANCEL_RING; at most max(1 + prefetch, TINY_INFLIGHT) <=
   * CANCEL_RING messages are queued to a worker, with consecutive seqs */
  _Atomic uint64_t cancel[CANCEL_RING];
  char pad[CAROM_CACHELINE - 16];
  uint64_t down_off, up_off;  /* offsets of the chans from the shared base */
  /* Index within the running message, stored by the worker before every
   * item and read by the supervisor only after the worker died: on a line of
   * its own, so that per-item stores do not pull the line the supervisor
   * polls (`started`) back and forth between cores. */
  _Alignas(CAROM_CACHELINE) _Atomic uint32_t item;
  /* The worker's last words, stored (release) right before it calls _exit
   * of its own accord (MSG_STOP, recycling): its pid << 32 | BYE_NO_KIDS if
   * it has no child left | (exit code + 1). Keyed by pid, so a replacement
   * in the slot never passes for it (and cleared when one is forked into the
   * slot, in case the pid comes round again). Once the pidfd
   * says the worker is gone, the supervisor takes that exit code as its
   * status instead of waiting for the template's report (one wake-up less on
   * close/join and recycling); only a kill landing between the store and the
   * exit would make the real status differ, with no task running then. The
   * template skips its search for orphans (a /proc read) after reaping a
   * worker that said BYE_NO_KIDS: as a subreaper with no child, nothing of
   * its tasks was left to re-parent. */
  _Atomic uint64_t last_words;
  char pad_item[CAROM_CACHELINE - 16];
} slot_t;

typedef struct {
  _Atomic uint32_t sup_sleep; /* the supervisor sleeps in epoll: write evfd */
  char pad1[CAROM_CACHELINE - 4];
} pool_shm_t;

enum { BYE_CODE = 0xffff, BYE_NO_KIDS = 1u << 16 };

/* Worker exit codes with a meaning. */
enum { EX_RECYCLE = 0x9B, EX_INITFAIL = 0x9C, EX_SETUP = 0x9D, EX_STOPPED = 0x9E };

/* ------------------------------------------------------------ template */

/* Requests over the template socket: parent → template. */
typedef struct {
  uint32_t op; /* TPL_SPAWN / TPL_KILL / TPL_QUIT */
  uint32_t slot;
  int32_t pid;
  int32_t sig;
} tpl_req_t;

/* Replies template → parent. */
typedef struct {
  uint32_t op; /* TPL_SPAWNED / TPL_EXITED */
  uint32_t slot;
  int32_t pid;
  int32_t status; /* wait status (TPL_EXITED) or -errno (failed spawn) */
} tpl_rep_t;

/* TPL_QUIT: no more requests but kills; exit once every worker is reaped and
 * reported (the pool is closed and its work done: the template's own exit
 * then overlaps the caller's return from join). */
enum { TPL_SPAWN = 1, TPL_KILL = 2, TPL_SPAWNED = 3, TPL_EXITED = 4, TPL_QUIT = 5 };

enum { POOL_METHOD_FORK = 0, POOL_METHOD_FORKSERVER = 1, POOL_METHOD_SPAWN = 2 };

struct pool_worker_cfg {
  void *shm;
  int evfd;
  const carom_pool_opts_t *opts;
  int method; /* POOL_METHOD_*: spawn execs each worker (carom__pool_exec_worker) */
  int shmfd;  /* spawn: the region's memfd, kept open by the template; else -1 */
};

/* ---------------------------------------------- exec'd template (exec.c) */

/* The template's loaded objects (name, load address), to translate function
 * pointers of this process into the exec'd image's. */
typedef struct pool_objtab pool_objtab_t;

typedef struct {
  int method;    /* POOL_METHOD_FORKSERVER or _SPAWN */
  pid_t owner;
  const carom_pool_opts_t *opts;
  int shmfd;     /* memfd of the shared region */
  size_t shm_size;
  int evfd;      /* the supervisor's eventfd */
  int tplsock;   /* the template's end of the request socket */
} pool_exec_args_t;

/* Start an exec'd template; on success *pid and *pidfd (pidfd may be -1 without
 * kernel support) and its object table. On failure -errno and a message. */
int carom__pool_exec_template(const pool_exec_args_t *a, pid_t *pid, int *pidfd,
                              pool_objtab_t **tab, char *err, size_t errlen);
/* A reference to fn valid in every exec'd image of the program (object index
 * in load order, offset): 0, or -ENOENT when fn lies in no object the
 * template has loaded (e.g. a library dlopen'ed later). */
int carom__pool_fn_translate(const pool_objtab_t *t, const void *fn, uint64_t *out);
/* Worker side of the above: the function in this image, or NULL. */
carom_task_fn carom__pool_fn_resolve(uint64_t ref);
void carom__pool_objtab_free(pool_objtab_t *t);
/* spawn: in a fresh fork of the template, exec the program as worker `slot`. */
__attribute__((noreturn)) void carom__pool_exec_worker(unsigned slot,
                                                       const struct pool_worker_cfg *cfg);

/* Template process main: never returns. */
__attribute__((noreturn)) void carom__pool_template_main(int sock, pid_t owner,
                                                         const struct pool_worker_cfg *cfg);
/* Worker main: never returns. */
__attribute__((noreturn)) void carom__pool_worker_main(unsigned slot,
                                                       const struct pool_worker_cfg *cfg);

/* One step of a spin-wait. Every 4th step yields the CPU: with more
 * spinning threads than cores (supervisor + workers + callers on a small
 * machine) a spinner must not keep the thread it waits for off the core.
 * (Measured on 2 cores: yielding every 64th step halves round trips and
 * imap; yielding every step starves chunksize-1 maps of the supervisor.) */
static inline void pool_spin_step(unsigned i) {
  if ((i & 3) == 3) sched_yield();
  else carom__cpu_relax();
}

/* Wake the supervisor if it sleeps (worker side). */
void carom__pool_wake_supervisor(pool_shm_t *h, int evfd);

static inline slot_t *pool_slot(void *shm, unsigned i) {
  return (slot_t *)((char *)shm + sizeof(pool_shm_t)) + i;
}
static inline chan_t *pool_chan(void *shm, uint64_t off) { return (chan_t *)((char *)shm + off); }

#endif
