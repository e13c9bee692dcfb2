/* pool/pool.c — the Pool: submission, the supervisor thread, dispatch, results,
 * lost-worker handling and lifecycle.
 *
 * Threads: callers submit from any thread (pool->mu guards the submission
 * list and the pool state); one supervisor thread owns everything else (slots,
 * the pending list, dispatch, result parsing, deaths) and is the only thread
 * that touches the shared channels on the parent side. A job's results are
 * written by the supervisor under job->mu and read by callers under it.
 *
 * Life of a task: carom_pool_apply_async copies the argument into a job and
 * appends it to the submission list (waking the supervisor if it sleeps) →
 * the supervisor moves it to its pending list → dispatch() writes a MSG_TASK
 * for a chunk of items into the down chan of a worker with room (at most
 * 1 + prefetch messages in flight per worker) and records it in the slot's
 * in-flight FIFO → the worker raises `started`, runs the items, publishes a
 * MSG_RESULT → the supervisor stores the results in the job, pops the FIFO,
 * and when the job's last item is in, marks it done, wakes waiters and runs
 * the callback. If the worker dies instead: its up chan is drained, the
 * running message's started items end CAROM_EWORKERLOST, every unstarted
 * message goes back to the front of the pending list, and a replacement is
 * spawned through the template.
 */
#include "pool/internal.h"
#include "carom/process.h"

#include <dirent.h>
#include <linux/membarrier.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

enum { POOL_RUN = 0, POOL_CLOSE = 1, POOL_TERMINATE = 2 };
enum { JOB_APPLY = 0, JOB_MAP = 1, JOB_IMAP = 2, JOB_IMAP_UNORDERED = 3 };
/* The supervisor spins at most this long after its last progress (a result
 * or a submission may follow at once): a sleeping process costs ~25-55 us to
 * wake here (FLOORS.md), so spinning much longer than a wake-up only takes the
 * CPU from the processes doing the work (forks and exits, under recycling). */
#define SUP_SPIN_NS 10000ull
enum { MAX_JOB_PIDS = 16 };
/* Large copied jobs are copied in slices of about this many bytes. */
enum { COPY_SLICE_BYTES = 64 * 1024 };
#define SPAWN_TIMEOUT_NS (30 * 1000000000ull)

/* ------------------------------------------------------------------ jobs */

typedef struct res_block {
  struct res_block *next;
  char data[];
} res_block_t;

/* Results are kept as segments: one per result message (or per run of it
 * whose items had not already ended), never one record per item, so a map of
 * a million items stores its results' bytes and little else. A segment lies
 * within one chunk (items [c * chunksize, (c + 1) * chunksize)), and chunk c's
 * segments form a list the supervisor publishes with a release store of its
 * head; a reader finds item i in the list of chunk i / chunksize. An
 * imap_unordered job also links its segments in the order they were published
 * (completion order): item k of that order lies in the segment whose `pos`
 * (items published before it) is <= k < pos + count. */
enum { SEG_VAR = 0, SEG_UNIFORM = 1, SEG_CONST = 2 };

typedef struct seg {
  struct seg *next; /* older segment of the same chunk */
  size_t first, count;
  int mode;
  int32_t code;            /* SEG_CONST: every item's code */
  uint64_t len;            /* SEG_UNIFORM: each item's length; SEG_CONST: the message's */
  const char *data;        /* item k's bytes: data + off[k] (VAR), + k * len (UNIFORM) */
  const item_res_t *res;   /* SEG_VAR: per item code and length */
  const uint64_t *off;     /* SEG_VAR: per item offset into data */
  size_t pos;              /* unordered jobs: items published before this one */
  _Atomic(struct seg *) pub_next; /* unordered jobs: the next segment published */
} seg_t;

/* A range of items to (re)dispatch. */
typedef struct redo {
  struct redo *next;
  size_t first, count;
} redo_t;

struct carom_job {
  _Atomic int refs;
  carom_pool_t *pool; /* valid while the job is not done */
  uint64_t id;
  bool unordered;    /* imap_unordered: segments are linked in completion order */
  carom_task_fn fn;
  uint64_t wfn;      /* fn in the workers' image (differs under forkserver/spawn) */
  size_t n, chunksize;
  char *in;          /* all items' bytes, contiguous (copied jobs) */
  uint64_t *in_off;  /* n + 1 offsets into in */
  uint32_t *in_len;  /* n lengths */
  bool in_uniform;   /* every item is in_ulen bytes long (lengths not sent) */
  uint32_t in_ulen;
  const char *in_block; /* items of one length back to back from here (or NULL) */
  const struct iovec *uitems; /* borrowed: the caller's items (blocking map) */
  /* Items [0, copied) are in the job (release by the submitting thread, which
   * copies a large job's items after queueing it: see job_copy). copy_seen:
   * the value dispatch() stopped at (supervisor only), 0 when it did not. */
  _Atomic size_t copied;
  size_t copy_seen;
  carom_submit_opts_t cb;
  uint64_t soft_ns, hard_ns; /* limits (0: none) */
  bool timeout_set_called;

  /* supervisor only */
  size_t next_item;  /* first item never dispatched */
  redo_t *redo;      /* ranges to dispatch again, first */
  size_t inflight;   /* messages in flight */
  struct carom_job *next_sub, *next_pend;
  bool pending;      /* on the pending list */
  bool accept_cb_done;

  /* supervisor only: items that have ended (bitmap) */
  uint64_t *ended;
  size_t ndone;
  res_block_t *blocks; /* result bytes and segments, freed with the job */
  /* read by callers without a lock: chunk c's newest segment */
  _Atomic(seg_t *) *segs;

  /* shared with callers, under mu */
  pthread_mutex_t mu;
  int first_error;
  unsigned *attempts; /* per item: re-runs after lost workers (worker_lost_retries) */
  /* imap_unordered: segments in completion order, from pub_head (set once,
   * release) along pub_next (release); pub_tail and npub belong to the
   * supervisor. */
  _Atomic(seg_t *) pub_head;
  seg_t *pub_tail;
  size_t npub;
  /* Readers take items without the mutex: an item is final once a segment
   * covering it is published (release), and the first norder_pub items of the
   * completion order (release) are linked. Consumers claim the next item with
   * plain stores while one thread owns the job, else by CAS (see claim). */
  _Atomic size_t norder_pub;
  pid_t pids[MAX_JOB_PIDS];
  int npids;
  _Atomic bool accepted;
  _Atomic uint64_t started_ns; /* when a worker first started it (worker's clock) */
  _Atomic bool cancel_req;
  _Atomic int term_sig;
  _Atomic uint32_t done;     /* futex: 1 when every item ended */
  _Atomic uint32_t progress; /* futex: bumped when items end */
  _Atomic uint32_t waiters_done, waiters_progress;
  /* Written by consumers only: a line's worth of padding on each side keeps
   * them away from what the supervisor writes per result message (the job is
   * malloc'ed, so no _Alignas). next_claim: the next item to hand out, by
   * index, or by position in the completion order (unordered jobs). */
  char pad_before_next[CAROM_CACHELINE];
  _Atomic size_t next_claim;
  /* The thread that owns the claim counters (see next_try), CLAIM_SHARING or
   * CLAIM_SHARED; owner_busy: the owner is inside a claim (its pid, else 0). */
  _Atomic(const void *) claim_owner;
  _Atomic int owner_busy;
  /* The segment a reader found last: consecutive reads mostly fall in it,
   * and an item lies in exactly one published segment, so a hint that
   * covers the item is the answer (no division, no list walk). Stored with
   * release by a reader that acquired the segment, loaded with acquire.
   * Unordered jobs: the segment of the completion order read last. */
  _Atomic(const struct seg *) hint;
  char pad_after_next[CAROM_CACHELINE];
};

/* ------------------------------------------------------------------ slots */

enum { W_EMPTY = 0, W_SPAWNING, W_STARTING, W_UP, W_DEAD };

typedef struct {
  carom_job_t *job;
  size_t first, count;
  uint64_t seq;
} flight_t;

typedef struct {
  int state;
  pid_t pid;
  int pidfd;
  uint64_t soft_sent, hard_sent; /* seq + 1 of the message signalled / killed */
  bool stop_sent;   /* we asked it to stop (close/terminate) */
  uint64_t stop_msg_at; /* when MSG_STOP went (0: it did not) */
  bool have_status; /* template reported */
  int status;
  uint64_t seq;     /* messages sent */
  uint64_t acc;     /* `started` value already seen */
  flight_t *fifo;
  unsigned fifo_head, fifo_n, fifo_cap;
  /* a message partly written into the down chan */
  bool sending;
  char hdr[sizeof(msg_t) + 8];
  struct iovec iov[4];
  size_t send_total, send_progress;
  unsigned sent_msgs;       /* for maxtasksperchild */
  /* Run time of this worker's messages of task function avg_fn (EWMA of what
   * the worker reports), to queue more of them when they are tiny. */
  uint64_t avg_ns, avg_fn;
  /* reassembly of a multi-frame result, handed to the job as its block */
  res_block_t *rbuf;
  size_t rlen, rcap;
  /* item lengths of a borrowed job's message being sent */
  uint32_t *lens;
  size_t lens_cap;
  const struct iovec *send_items; /* borrowed items of that message */
  size_t send_nitems;
  /* respawn policy */
  uint64_t respawn_at;
  uint64_t dead_since;
  uint64_t spawn_sent;  /* when the spawn request went to the template */
} wslot_t;

struct carom_pool {
  pid_t owner;
  carom_pool_opts_t opts;
  unsigned nslots;  /* worker positions: target, or 2 x target with recycling */
  unsigned target;  /* workers to keep (opts.processes) */
  unsigned init_failures;  /* consecutive initializer failures, pool-wide */
  uint64_t spawn_after;    /* initializer backoff: no spawn before this */
  void *shm;
  size_t shm_size;
  int evfd, sock, epfd;
  pid_t tpl_pid;
  int tpl_pidfd;
  pthread_t sup;
  bool sup_started;
  struct pool_worker_cfg cfg;
  pool_objtab_t *xtab;    /* forkserver/spawn: the template's objects */
  void *initarg_copy;     /* initarg_len bytes, owned */
  /* forkserver/spawn: recently translated task functions (under xmu) */
  pthread_mutex_t xmu;
  struct { carom_task_fn fn; uint64_t addr; } xcache[8];
  unsigned xcache_next;

  pthread_mutex_t mu; /* guards the fields below */
  carom_job_t *sub_head, *sub_tail;
  _Atomic int state; /* written under mu; the supervisor reads it without */
  _Atomic bool sub_flag; /* something in the submission list */
  _Atomic uint32_t sup_exited;
  char init_error[ERRMSG_MAX];
  bool init_broken; /* initializer keeps failing */
  /* shutdown(grace): running work may finish until grace_ns, then terminate */
  bool shutting_down, shutdown_cancel;
  uint64_t grace_ns;
  int term_running, term_queued; /* codes for terminate (ETERMINATED/ECANCELLED or -EINTR) */
  struct kill_req { pid_t pid; int sig; } kills[16];
  int nkills;
  _Atomic bool kill_flag;

  /* supervisor only */
  wslot_t *slots;
  carom_job_t *pend_head, *pend_tail;
  size_t live_jobs; /* accepted from the submission list, not finished */
  _Atomic uint64_t next_id;
  _Atomic int copying; /* submitters copying a queued job's items (see submit_new) */
  _Atomic uint32_t cancel_epoch; /* bumped by cancel/terminate requests */
  /* max_backlog: jobs submitted and not finished; submitters wait on
   * backlog_seq (bumped when a job finishes or the pool stops accepting). */
  _Atomic uint32_t backlog, backlog_seq, backlog_waiters;
  unsigned healthy; /* workers that reported READY since the last init failure */
  bool tpl_dead;
  bool tpl_quit; /* TPL_QUIT sent: its end of the socket closing is expected */
  /* Requests to the template not yet taken by its socket (supervisor only;
   * before the supervisor starts, the creating thread). Sending never blocks:
   * a template blocked replying to a supervisor blocked sending would wedge
   * both (e.g. ~280 spawn requests at once fill the socket). */
  tpl_req_t *tpl_q;
  size_t tpl_qn, tpl_qcap;
};

/* ---------------------------------------------------------- job helpers */

static void job_unref(carom_job_t *j) {
  if (atomic_fetch_sub_explicit(&j->refs, 1, memory_order_acq_rel) != 1) return;
  while (j->blocks) {
    res_block_t *b = j->blocks;
    j->blocks = b->next;
    free(b);
  }
  while (j->redo) {
    redo_t *r = j->redo;
    j->redo = r->next;
    free(r);
  }
  pthread_mutex_destroy(&j->mu);
  free(j->attempts);
  free(j);
}

/* Copy items [a, b) of a copied job into it (the tables and bytes job_new
 * laid out); in_off[b] is written too, so a chunk ending at b is whole. */
static void job_copy(carom_job_t *j, const struct iovec *items, size_t a, size_t b, bool contig) {
  if (j->in_uniform) {
    size_t l = j->in_ulen;
    if (!l) return;
    if (contig) memcpy(j->in + a * l, (const char *)items[0].iov_base + a * l, (b - a) * l);
    else
      for (size_t i = a; i < b; i++) memcpy(j->in + i * l, items[i].iov_base, l);
    return;
  }
  /* in_off[a] was written with the previous slice, which the supervisor may
   * be reading now: only later entries are written. */
  uint64_t o = j->in_off[a];
  for (size_t i = a; i < b; i++) {
    j->in_len[i] = (uint32_t)items[i].iov_len;
    if (items[i].iov_len) memcpy(j->in + o, items[i].iov_base, items[i].iov_len);
    o += items[i].iov_len;
    j->in_off[i + 1] = o;
  }
}

/* A new job over n items. Copied (the default): the items' bytes are copied
 * into the job, so the caller may free them at once; here, unless `defer`
 * (the submitter copies them after queueing the job, see submit_new).
 * Borrowed (blocking map only, which returns after the job is done): the job
 * reads the caller's items in place and the parent copies them once, into
 * the channel. */
static carom_job_t *job_new(carom_pool_t *p, int kind, carom_task_fn fn, const struct iovec *items,
                            size_t n, size_t chunksize, const carom_submit_opts_t *cb,
                            bool borrow, bool uniform, bool contig, size_t total, bool defer) {
  /* Items of one length need no offsets or lengths: item i is at i * len. */
  bool table = !borrow && !uniform;
  size_t cs = chunksize ? chunksize : 1;
  size_t nchunks = n / cs + (n % cs ? 1 : 0);
  size_t nwords = (n + 63) / 64;
  size_t off_segs = (sizeof(carom_job_t) + 15) & ~(size_t)15;
  size_t off_ended = off_segs + nchunks * sizeof(seg_t *);
  size_t off_inoff = off_ended + nwords * sizeof(uint64_t);
  size_t off_inlen = off_inoff + (table ? (n + 1) * sizeof(uint64_t) : 0);
  size_t off_in = off_inlen + (table ? ((n * sizeof(uint32_t) + 15) & ~(size_t)15) : 0);
  carom_job_t *j = malloc(off_in + (borrow ? 0 : total) + 1);
  if (!j) return NULL;
  memset(j, 0, off_inoff);
  j->segs = (_Atomic(seg_t *) *)((char *)j + off_segs);
  j->ended = (uint64_t *)((char *)j + off_ended);
  j->in_uniform = uniform;
  j->in_ulen = uniform ? (uint32_t)items[0].iov_len : 0;
  if (borrow) {
    j->uitems = items;
  } else {
    j->in = (char *)j + off_in;
    if (!uniform) {
      j->in_off = (uint64_t *)((char *)j + off_inoff);
      j->in_len = (uint32_t *)((char *)j + off_inlen);
      j->in_off[0] = 0;
    }
    if (!defer) job_copy(j, items, 0, n, contig);
  }
  atomic_init(&j->copied, defer ? 0 : n);
  atomic_init(&j->refs, 2); /* caller + pool */
  j->pool = p;
  j->id = atomic_fetch_add(&p->next_id, 1) + 1;
  j->fn = fn;
  j->n = n;
  j->chunksize = cs;
  if (cb) j->cb = *cb;
  double soft = j->cb.soft_timeout != 0 ? j->cb.soft_timeout : p->opts.soft_timeout;
  double hard = j->cb.timeout != 0 ? j->cb.timeout : p->opts.timeout;
  j->soft_ns = soft > 0 ? (uint64_t)(soft * 1e9) : 0;
  j->hard_ns = hard > 0 ? (uint64_t)(hard * 1e9) : 0;
  j->unordered = kind == JOB_IMAP_UNORDERED;
  pthread_mutex_init(&j->mu, NULL);
  return j;
}

/* Wake who waits: next() callers on every progress, wait() callers only when
 * the job is done (a map of 100k items must not wake its waiter 100k times). */
static void job_wake(carom_job_t *j) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&j->waiters_progress, memory_order_relaxed))
    carom__futex_wake(&j->progress, INT_MAX);
  if (atomic_load_explicit(&j->done, memory_order_relaxed) &&
      atomic_load_explicit(&j->waiters_done, memory_order_relaxed))
    carom__futex_wake(&j->done, INT_MAX);
}

/* Memory that lives as long as the job (result bytes, segments). */
static void *job_alloc(carom_job_t *j, size_t bytes) {
  res_block_t *b = malloc(sizeof *b + bytes);
  if (!b) carom__die("out of memory");
  b->next = j->blocks;
  j->blocks = b;
  return b->data;
}

/* ended-bitmap helpers (supervisor only) */
/* First index in [i, end) whose bit equals `set`, or end. */
static size_t bit_scan(const uint64_t *w, size_t i, size_t end, bool set) {
  while (i < end) {
    uint64_t word = set ? w[i / 64] : ~w[i / 64];
    word >>= i % 64;
    if (word) {
      size_t r = i + (size_t)__builtin_ctzll(word);
      return r < end ? r : end;
    }
    i = (i / 64 + 1) * 64;
  }
  return end;
}

static void bit_set_range(uint64_t *w, size_t i, size_t end) {
  for (; i < end && i % 64; i++) w[i / 64] |= 1ull << (i % 64);
  for (; i + 64 <= end; i += 64) w[i / 64] = ~0ull;
  for (; i < end; i++) w[i / 64] |= 1ull << (i % 64);
}

/* Publish `proto` for items [a, b) (proto->first is the index its res/off
 * arrays and data start at), one segment per chunk the range touches. */
static void job_publish(carom_job_t *j, const seg_t *proto, size_t a, size_t b) {
  while (a < b) {
    size_t c = a / j->chunksize;
    size_t end = (c + 1) * j->chunksize;
    if (end > b) end = b;
    seg_t *sg = job_alloc(j, sizeof *sg);
    *sg = *proto;
    size_t skip = a - proto->first;
    if (sg->mode == SEG_VAR) {
      sg->res += skip;
      sg->off += skip;
    } else if (sg->mode == SEG_UNIFORM) {
      sg->data += skip * sg->len;
    }
    sg->first = a;
    sg->count = end - a;
    sg->next = atomic_load_explicit(&j->segs[c], memory_order_relaxed);
    if (j->unordered) {
      sg->pos = j->npub;
      j->npub += sg->count;
      atomic_init(&sg->pub_next, NULL);
      if (j->pub_tail) atomic_store_explicit(&j->pub_tail->pub_next, sg, memory_order_release);
      else atomic_store_explicit(&j->pub_head, sg, memory_order_release);
      j->pub_tail = sg;
    }
    atomic_store_explicit(&j->segs[c], sg, memory_order_release);
    a = end;
  }
}

/* Record results for items [first, first+count) (under the supervisor): as
 * described by `proto` (mode, code/len, data, res), for every item that has
 * not already ended (cancelled, terminated: the first end wins). Returns true
 * when that finished the job. */
static bool job_store(carom_job_t *j, size_t first, size_t count, seg_t *proto) {
  size_t end = first + count;
  proto->first = first;
  if (proto->mode == SEG_VAR) { /* offsets of each item's bytes */
    uint64_t *off = job_alloc(j, count * sizeof *off);
    uint64_t o = 0;
    for (size_t k = 0; k < count; k++) {
      off[k] = o;
      o += proto->res[k].len;
    }
    proto->off = off;
  }
  pthread_mutex_lock(&j->mu);
  size_t a = bit_scan(j->ended, first, end, false);
  while (a < end) {
    size_t b = bit_scan(j->ended, a, end, true);
    job_publish(j, proto, a, b);
    bit_set_range(j->ended, a, b);
    j->ndone += b - a;
    if (j->first_error == 0) {
      if (proto->mode == SEG_CONST && proto->code < 0) {
        j->first_error = proto->code;
      } else if (proto->mode == SEG_VAR) {
        for (size_t i = a; i < b && j->first_error == 0; i++)
          if (proto->res[i - first].code < 0) j->first_error = proto->res[i - first].code;
      }
    }
    a = bit_scan(j->ended, b, end, false);
  }
  bool fin = j->ndone == j->n;
  if (j->unordered) atomic_store_explicit(&j->norder_pub, j->npub, memory_order_release);
  pthread_mutex_unlock(&j->mu);
  atomic_fetch_add_explicit(&j->progress, 1, memory_order_seq_cst);
  if (fin) atomic_store_explicit(&j->done, 1, memory_order_seq_cst);
  job_wake(j);
  return fin;
}

/* End items [first, first+count) that are still pending with one code and a
 * message (one copy of the message, shared by the items). */
static bool job_fail_range(carom_job_t *j, size_t first, size_t count, int code,
                           const char *msg) {
  size_t mlen = strlen(msg) + 1;
  char *m = job_alloc(j, mlen);
  memcpy(m, msg, mlen);
  seg_t proto = {.mode = SEG_CONST, .code = code, .len = mlen, .data = m};
  return job_store(j, first, count, &proto);
}

/* ------------------------------------------------------------- callbacks */

static void backlog_bump(carom_pool_t *p) {
  atomic_fetch_add(&p->backlog_seq, 1);
  if (atomic_load(&p->backlog_waiters)) carom__futex_wake(&p->backlog_seq, INT_MAX);
}

static void job_finish(carom_pool_t *p, carom_job_t *j) {
  p->live_jobs--;
  if (p->opts.max_backlog) {
    atomic_fetch_sub(&p->backlog, 1);
    backlog_bump(p);
  }
  if (j->timeout_set_called && p->opts.on_timeout_cancel)
    p->opts.on_timeout_cancel(j, p->opts.event_arg);
  if (j->first_error == 0) {
    if (j->cb.callback) j->cb.callback(j, j->cb.arg);
  } else if (j->cb.error_callback) {
    j->cb.error_callback(j, j->first_error, j->cb.arg);
  }
  job_unref(j); /* the pool's reference */
}

/* ----------------------------------------------------------- supervision */

static void sup_wake(carom_pool_t *p) {
  carom__pool_wake_supervisor(p->shm, p->evfd);
}

static void pend_push_front(carom_pool_t *p, carom_job_t *j) {
  if (j->pending) return;
  j->pending = true;
  j->next_pend = p->pend_head;
  p->pend_head = j;
  if (!p->pend_tail) p->pend_tail = j;
}

static void pend_push_back(carom_pool_t *p, carom_job_t *j) {
  if (j->pending) return;
  j->pending = true;
  j->next_pend = NULL;
  if (p->pend_tail) p->pend_tail->next_pend = j;
  else p->pend_head = j;
  p->pend_tail = j;
}

static void pend_pop(carom_pool_t *p) {
  carom_job_t *j = p->pend_head;
  p->pend_head = j->next_pend;
  if (!p->pend_head) p->pend_tail = NULL;
  j->pending = false;
}

static bool job_has_work(carom_job_t *j) { return j->redo || j->next_item < j->n; }

/* Take the next range to dispatch from j. */
static bool job_take(carom_job_t *j, size_t *first, size_t *count) {
  if (j->redo) {
    redo_t *r = j->redo;
    *first = r->first;
    *count = r->count;
    j->redo = r->next;
    free(r);
    return true;
  }
  if (j->next_item >= j->n) return false;
  *first = j->next_item;
  *count = j->n - j->next_item < j->chunksize ? j->n - j->next_item : j->chunksize;
  j->next_item += *count;
  return true;
}

static void job_redo(carom_pool_t *p, carom_job_t *j, size_t first, size_t count) {
  if (count == 0) return;
  redo_t *r = malloc(sizeof *r);
  if (!r) carom__die("out of memory");
  r->first = first;
  r->count = count;
  r->next = j->redo;
  j->redo = r;
  pend_push_front(p, j);
}

static void fifo_push(wslot_t *w, flight_t f) {
  if (w->fifo_n == w->fifo_cap) {
    unsigned cap = w->fifo_cap ? w->fifo_cap * 2 : 4;
    flight_t *nf = malloc(cap * sizeof *nf);
    if (!nf) carom__die("out of memory");
    for (unsigned i = 0; i < w->fifo_n; i++) nf[i] = w->fifo[(w->fifo_head + i) % w->fifo_cap];
    free(w->fifo);
    w->fifo = nf;
    w->fifo_cap = cap;
    w->fifo_head = 0;
  }
  w->fifo[(w->fifo_head + w->fifo_n++) % w->fifo_cap] = f;
}

static flight_t *fifo_front(wslot_t *w) { return w->fifo_n ? &w->fifo[w->fifo_head] : NULL; }

static void fifo_pop(wslot_t *w) {
  w->fifo_head = (w->fifo_head + 1) % w->fifo_cap;
  w->fifo_n--;
}

static void down_notify(chan_t *c) {
  atomic_thread_fence(memory_order_seq_cst); /* publish before reading the flag */
  if (atomic_load_explicit(&c->cons_wait, memory_order_relaxed)) {
    atomic_store_explicit(&c->cons_wait, 0, memory_order_relaxed);
    carom__futex_wake(&c->cons_wait, 1);
  }
}

/* Continue a partial send. Returns true when nothing is left to send. */
static bool slot_flush(carom_pool_t *p, unsigned i) {
  wslot_t *w = &p->slots[i];
  if (!w->sending) return true;
  chan_t *down = pool_chan(p->shm, pool_slot(p->shm, i)->down_off);
  bool done = chan_write2(down, w->iov, 4, w->send_items, w->send_nitems, w->send_total,
                         &w->send_progress);
  down_notify(down);
  if (done) w->sending = false;
  else atomic_store_explicit(&down->prod_wait, 1, memory_order_relaxed);
  return done;
}

/* Messages shorter than this are "tiny": a worker may have up to
 * TINY_INFLIGHT of them queued so it never waits for the supervisor between
 * two. Longer ones keep the configured prefetch, so a long task never has
 * many others stuck behind it. */
enum { TINY_NS = 20000, TINY_INFLIGHT = 32 };
_Static_assert((int)TINY_INFLIGHT <= (int)CANCEL_RING, "queued messages need distinct cancel marks");

static unsigned slot_capacity(carom_pool_t *p, wslot_t *w, const carom_job_t *j) {
  if (w->sending) return 0;
  if (w->state != W_UP) {
    /* No worker is up (a new pool, or all being replaced): one message may
     * wait in a starting worker's channel, so that it runs as soon as the
     * worker is ready rather than a round trip through us later. Not while
     * another is up: a slow initializer would hold it back. */
    return w->state == W_STARTING && !p->healthy && !w->fifo_n ? 1 : 0;
  }
  unsigned max = 1 + p->opts.prefetch;
  if (w->avg_ns && w->avg_ns < TINY_NS && w->avg_fn == j->wfn && max < TINY_INFLIGHT) {
    /* Tiny so far, unless the message at its head is of another function
     * (no evidence it is tiny) or has run longer than a tiny one: then queue
     * no more behind it than for any task. */
    slot_t *s = pool_slot(p->shm, (unsigned)(w - p->slots));
    flight_t *f = fifo_front(w);
    bool long_one =
        f && (f->job->wfn != w->avg_fn ||
              (atomic_load_explicit(&s->started, memory_order_acquire) == f->seq + 1 &&
               carom_now_ns() - atomic_load_explicit(&s->started_ns, memory_order_relaxed) >
                   TINY_NS));
    if (!long_one) max = TINY_INFLIGHT;
  }
  unsigned room = w->fifo_n < max ? max - w->fifo_n : 0;
  if (p->opts.maxtasksperchild) {
    unsigned left = p->opts.maxtasksperchild - w->sent_msgs;
    if (room > left) room = left;
  }
  return room;
}

static void send_task(carom_pool_t *p, unsigned i, carom_job_t *j, size_t first, size_t count) {
  wslot_t *w = &p->slots[i];
  msg_t h = {.job_id = j->id, .fn = j->wfn, .first = first,
             .kind = MSG_TASK | (j->soft_ns || j->hard_ns || j->cb.accept_callback
                                     ? MSG_F_WAKE_ON_START : 0) |
                     (j->in_uniform ? MSG_F_UNIFORM : 0),
             .count = (uint32_t)count, .seq = w->seq, .ulen = j->in_ulen};
  memcpy(w->hdr, &h, sizeof h);
  /* [header][item lengths][0-4 zero bytes to align][item bytes], gathered
   * straight from the job (or the caller's items): no copy besides the one
   * into the ring. Items of one length go without the lengths. */
  static const char zeros[8];
  size_t lens_bytes = j->in_uniform ? 0 : count * sizeof(uint32_t);
  size_t pad = ((lens_bytes + 7) & ~(size_t)7) - lens_bytes;
  w->iov[0] = (struct iovec){w->hdr, sizeof h};
  w->iov[2] = (struct iovec){(void *)zeros, pad};
  w->iov[1] = (struct iovec){NULL, 0};
  w->iov[3] = (struct iovec){NULL, 0};
  w->send_items = NULL;
  w->send_nitems = 0;
  size_t gathered = 0; /* bytes of borrowed items gathered one by one */
  if (j->in_block) { /* items of one length back to back: one block */
    w->iov[3] = (struct iovec){(void *)(j->in_block + first * (size_t)j->in_ulen),
                               count * (size_t)j->in_ulen};
  } else if (j->uitems) { /* the caller's scattered items */
    if (j->in_uniform) {
      gathered = count * (size_t)j->in_ulen;
    } else {
      if (count > w->lens_cap) {
        uint32_t *nl = realloc(w->lens, count * sizeof *nl);
        if (!nl) carom__die("out of memory");
        w->lens = nl;
        w->lens_cap = count;
      }
      for (size_t k = 0; k < count; k++) {
        w->lens[k] = (uint32_t)j->uitems[first + k].iov_len;
        gathered += w->lens[k];
      }
      w->iov[1] = (struct iovec){w->lens, lens_bytes};
    }
    w->send_items = j->uitems + first;
    w->send_nitems = count;
  } else { /* copied items of several lengths */
    w->iov[1] = (struct iovec){j->in_len + first, lens_bytes};
    w->iov[3] = (struct iovec){j->in + j->in_off[first],
                               j->in_off[first + count] - j->in_off[first]};
  }
  w->send_total = w->iov[0].iov_len + w->iov[1].iov_len + w->iov[2].iov_len +
                  w->iov[3].iov_len + gathered;
  w->send_progress = 0;
  w->sending = true;
  fifo_push(w, (flight_t){j, first, count, w->seq});
  w->seq++;
  w->sent_msgs++;
  j->inflight++;
  slot_flush(p, i);
}

/* Cancel the undispatched part of a job (called by the supervisor). */
static void job_cancel_rest(carom_pool_t *p, carom_job_t *j, int code, const char *msg) {
  bool fin = false;
  while (j->redo) {
    redo_t *r = j->redo;
    j->redo = r->next;
    fin |= job_fail_range(j, r->first, r->count, code, msg);
    free(r);
  }
  if (j->next_item < j->n) {
    size_t first = j->next_item;
    j->next_item = j->n;
    fin |= job_fail_range(j, first, j->n - first, code, msg);
  }
  if (fin) job_finish(p, j);
}

/* Hand pending work to workers with room. */
static bool dispatch(carom_pool_t *p) {
  bool progress = false;
  for (unsigned i = 0; i < p->nslots; i++)
    if (p->slots[i].sending) progress |= slot_flush(p, i);
  while (p->pend_head) {
    carom_job_t *j = p->pend_head;
    if (atomic_load_explicit(&j->cancel_req, memory_order_relaxed)) {
      pend_pop(p);
      job_cancel_rest(p, j, CAROM_ECANCELLED, "cancelled");
      continue;
    }
    if (!job_has_work(j)) {
      pend_pop(p);
      continue;
    }
    /* the least loaded worker with room */
    int best = -1;
    unsigned best_room = 0;
    for (unsigned i = 0; i < p->nslots; i++) {
      unsigned room = slot_capacity(p, &p->slots[i], j);
      if (room > best_room) best = (int)i, best_room = room;
    }
    if (best < 0) break;
    /* A large copied job is queued before its items are all in it (see
     * submit_new): a fresh chunk goes out once its items are. */
    size_t copied = atomic_load_explicit(&j->copied, memory_order_acquire);
    if (!j->redo && copied < j->n &&
        j->next_item + (j->n - j->next_item < j->chunksize ? j->n - j->next_item : j->chunksize) >
            copied) {
      j->copy_seen = copied + 1; /* the supervisor re-checks before sleeping */
      break;
    }
    j->copy_seen = 0;
    size_t first = 0, count = 0;
    job_take(j, &first, &count);
    if (!job_has_work(j)) pend_pop(p);
    send_task(p, (unsigned)best, j, first, count);
    progress = true;
  }
  return progress;
}

/* A worker started (part of) a job: record its pid, run accept_callback once. */
static void job_accepted_by(carom_job_t *j, pid_t pid, uint64_t started_ns) {
  uint64_t zero = 0;
  atomic_compare_exchange_strong(&j->started_ns, &zero, started_ns);
  pthread_mutex_lock(&j->mu);
  bool known = false;
  for (int q = 0; q < j->npids; q++) known |= j->pids[q] == pid;
  if (!known && j->npids < MAX_JOB_PIDS) j->pids[j->npids++] = pid;
  pthread_mutex_unlock(&j->mu);
  atomic_store(&j->accepted, true);
  if (!j->accept_cb_done) {
    j->accept_cb_done = true;
    if (j->cb.accept_callback) j->cb.accept_callback(j, pid, j->cb.arg);
    carom_pool_t *p = j->pool;
    if ((j->soft_ns || j->hard_ns) && p->opts.on_timeout_set) {
      j->timeout_set_called = true;
      p->opts.on_timeout_set(j, j->soft_ns / 1e9, j->hard_ns / 1e9, p->opts.event_arg);
    }
  }
}

/* Accept notifications: the worker raised `started`. */
static void check_started(carom_pool_t *p, unsigned i) {
  wslot_t *w = &p->slots[i];
  if (!w->fifo_n) return;
  uint64_t s = atomic_load_explicit(&pool_slot(p->shm, i)->started, memory_order_acquire);
  if (s <= w->acc) return;
  uint64_t seen = w->acc;
  w->acc = s;
  for (unsigned k = 0; k < w->fifo_n; k++) {
    flight_t *f = &w->fifo[(w->fifo_head + k) % w->fifo_cap];
    if (f->seq >= s) break;
    if (f->seq < seen) continue; /* accepted at an earlier rise */
    job_accepted_by(f->job, w->pid,
                    atomic_load_explicit(&pool_slot(p->shm, i)->started_ns, memory_order_relaxed));
  }
}

static void handle_result(carom_pool_t *p, unsigned i, const char *msg, size_t len,
                          res_block_t *block) {
  wslot_t *w = &p->slots[i];
  msg_t h;
  memcpy(&h, msg, sizeof h);
  if ((h.kind & MSG_KIND_MASK) == MSG_READY) {
    if (w->state == W_STARTING) {
      w->state = W_UP;
      p->init_failures = 0;
      p->healthy++;
      pthread_mutex_lock(&p->mu);
      p->init_broken = false;
      pthread_mutex_unlock(&p->mu);
      if (p->opts.on_process_up) p->opts.on_process_up(w->pid, p->opts.event_arg);
    }
    free(block);
    return;
  }
  flight_t *f = fifo_front(w);
  if (!f || f->seq != h.seq) carom__die("pool: result out of order (slot %u)", i);
  /* The worker's own measure: a gap between results would also count the
   * time it waited for us, and a worker that runs dry (because it had too
   * little queued) would never look tiny. */
  carom_job_t *j = f->job;
  /* Tininess belongs to the task function: another one starts afresh. */
  if (w->avg_fn != j->wfn) w->avg_ns = 0;
  w->avg_fn = j->wfn;
  w->avg_ns = w->avg_ns ? (7 * w->avg_ns + h.run_ns) / 8 + 1 : h.run_ns + 1;
  size_t first = f->first, count = f->count;
  fifo_pop(w);
  j->inflight--;
  const item_res_t *res = (const item_res_t *)(msg + sizeof h);
  const char *data = msg + sizeof h + count * sizeof(item_res_t);
  bool uniform = h.kind & MSG_F_UNIFORM;
  size_t dlen = len - (size_t)(data - msg);
  if (block) { /* a reassembled message: it becomes the job's */
    block->next = j->blocks;
    j->blocks = block;
  } else { /* zero-copy frame: copy out of the ring what the job keeps */
    size_t rlen = uniform ? 0 : count * sizeof(item_res_t);
    char *keep = NULL;
    if (j->in) {
      /* A copied job's items [first, first + count) have ended with this
       * result and are never sent again (only messages without a result
       * are): their bytes, already faulted in by the copy, take the results
       * when these fit, instead of fresh pages (~1.25 µs each here). Kept
       * 8-aligned, as job_alloc's are. */
      char *at = j->in + (j->in_uniform ? first * j->in_ulen : j->in_off[first]);
      size_t room = j->in_uniform ? count * (size_t)j->in_ulen
                                  : j->in_off[first + count] - j->in_off[first];
      if (rlen + dlen <= room && ((uintptr_t)at & 7) == 0) keep = at;
    }
    if (!keep) keep = job_alloc(j, rlen + dlen);
    memcpy(keep, res, rlen);
    memcpy(keep + rlen, data, dlen);
    res = (const item_res_t *)keep;
    data = keep + rlen;
  }
  if (h.seq >= w->acc) /* finished before we saw it start */
    job_accepted_by(j, w->pid, h.start_ns);
  seg_t proto = {.mode = uniform ? SEG_UNIFORM : SEG_VAR, .len = h.ulen, .data = data,
                 .res = uniform ? NULL : res};
  if (uniform && h.ulen * count != dlen) carom__die("pool: bad uniform result (slot %u)", i);
  if (job_store(j, first, count, &proto)) job_finish(p, j);
}

/* Read everything the worker in slot i has published. */
static bool drain_up(carom_pool_t *p, unsigned i) {
  wslot_t *w = &p->slots[i];
  chan_t *up = pool_chan(p->shm, pool_slot(p->shm, i)->up_off);
  bool any = false;
  const frame_t *f;
  while ((f = chan_peek(up))) {
    any = true;
    if ((f->flags & (FR_FIRST | FR_LAST)) == (FR_FIRST | FR_LAST)) {
      handle_result(p, i, (const char *)(f + 1), f->len, NULL);
      chan_consume(up, f);
    } else {
      if (f->flags & FR_FIRST) w->rlen = 0;
      if (!w->rbuf || w->rlen + f->len > w->rcap) {
        size_t cap = w->rcap ? w->rcap : 65536;
        while (cap < w->rlen + f->len) cap *= 2;
        res_block_t *nb = realloc(w->rbuf, sizeof *nb + cap);
        if (!nb) carom__die("out of memory");
        w->rbuf = nb;
        w->rcap = cap;
      }
      memcpy(w->rbuf->data + w->rlen, f + 1, f->len);
      w->rlen += f->len;
      bool last = f->flags & FR_LAST;
      chan_consume(up, f);
      if (last) {
        /* The reassembled message becomes the job's block: no second copy. */
        res_block_t *b = w->rbuf;
        if (w->rcap - w->rlen > 4096) { /* the job keeps it: no slack */
          res_block_t *fit = realloc(b, sizeof *b + w->rlen);
          if (fit) b = fit;
        }
        w->rbuf = NULL;
        w->rcap = 0;
        handle_result(p, i, b->data, w->rlen, b);
        w->rlen = 0;
      }
    }
    /* The worker may wait for space. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&up->prod_wait, memory_order_relaxed)) {
      atomic_store_explicit(&up->prod_wait, 0, memory_order_relaxed);
      carom__futex_wake(&up->prod_wait, 1);
    }
  }
  return any;
}

/* Send what is queued for the template, without blocking. True when the
 * queue is empty afterwards. */
static bool tpl_flush(carom_pool_t *p) {
  size_t k = 0;
  while (k < p->tpl_qn && !p->tpl_dead) {
    ssize_t r = send(p->sock, &p->tpl_q[k], sizeof p->tpl_q[k], MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    k++; /* sent, or the template is gone (handled through its socket's EOF) */
  }
  if (p->tpl_dead) k = p->tpl_qn;
  memmove(p->tpl_q, p->tpl_q + k, (p->tpl_qn - k) * sizeof *p->tpl_q);
  p->tpl_qn -= k;
  return p->tpl_qn == 0;
}

/* A request to the template, in order after any still queued. */
static void tpl_send(carom_pool_t *p, uint32_t op, unsigned slot, pid_t pid, int sig) {
  if (p->tpl_dead) return;
  if (p->tpl_qn == p->tpl_qcap) {
    size_t cap = p->tpl_qcap ? 2 * p->tpl_qcap : 16;
    tpl_req_t *q = realloc(p->tpl_q, cap * sizeof *q);
    if (!q) carom__die("out of memory");
    p->tpl_q = q;
    p->tpl_qcap = cap;
  }
  p->tpl_q[p->tpl_qn++] = (tpl_req_t){op, slot, pid, sig};
  tpl_flush(p);
}

static int spawn_worker(carom_pool_t *p, unsigned i) {
  wslot_t *w = &p->slots[i];
  slot_t *s = pool_slot(p->shm, i);
  chan_t *down = pool_chan(p->shm, s->down_off), *up = pool_chan(p->shm, s->up_off);
  /* Fresh channels for the new worker: nothing of the old one is pending. */
  chan_init(down, down->data_off, down->cap);
  chan_init(up, up->data_off, up->cap);
  /* Nothing of the old worker's words may reach the new one: its messages
   * restart at seq 0, so a stale cancel mark or soft-limit flag would hit an
   * unrelated message. */
  atomic_store(&s->started, 0);
  atomic_store(&s->started_ns, 0);
  atomic_store(&s->soft_seq, 0);
  atomic_store(&s->stop_at, 0);
  for (unsigned k = 0; k < CANCEL_RING; k++) atomic_store(&s->cancel[k], 0);
  atomic_store(&s->item, 0);
  /* A later worker may get the same pid back (pid_max wraps): stale last
   * words must not pass for its own (cleared, the template only searches
   * for orphans it could have skipped). */
  atomic_store(&s->last_words, 0);
  atomic_store(&s->pid, 0);
  s->errmsg[0] = 0;
  w->seq = w->acc = 0;
  w->sent_msgs = 0;
  w->avg_ns = 0;
  w->rlen = 0;
  w->sending = false;
  w->have_status = false;
  tpl_send(p, TPL_SPAWN, i, 0, 0);
  w->state = W_SPAWNING;
  w->spawn_sent = carom_now_ns();
  return 0;
}

static const char *signame(int sig) {
  const char *s = sigabbrev_np(sig);
  return s ? s : "?";
}

/* The worker in slot i is gone (pidfd fired and/or template reported). */
static void worker_gone(carom_pool_t *p, unsigned i) {
  wslot_t *w = &p->slots[i];
  slot_t *s = pool_slot(p->shm, i);
  drain_up(p, i); /* results it published before dying are good */
  /* Died before it said READY: its start-up (initializer) failed, however it
   * ended (a crashing initializer must not cause a respawn storm either).
   * Read after the drain: a READY it published counts, and a message it was
   * given while starting (slot_capacity) may have been what it died of. */
  bool died_starting = w->state == W_STARTING;
  int st = w->status;
  carom_worker_exit_t ex = {.pid = w->pid, .job_id = 0};
  if (!w->have_status) {
    ex.how = CAROM_WORKER_SIGNALED;
    ex.exitcode = -SIGKILL;
  } else if (WIFSIGNALED(st)) {
    ex.how = CAROM_WORKER_SIGNALED;
    ex.exitcode = -WTERMSIG(st);
  } else {
    ex.exitcode = WEXITSTATUS(st);
    ex.how = ex.exitcode == EX_RECYCLE    ? CAROM_WORKER_RECYCLED
             : ex.exitcode == EX_INITFAIL ? CAROM_WORKER_INIT_FAILED
                                          : CAROM_WORKER_EXITED;
  }
  int pstate;
  pthread_mutex_lock(&p->mu);
  pstate = p->state;
  pthread_mutex_unlock(&p->mu);
  if (w->stop_sent && ex.how != CAROM_WORKER_RECYCLED && ex.how != CAROM_WORKER_INIT_FAILED)
    ex.how = CAROM_WORKER_SHUTDOWN; /* we stopped it: close or terminate */

  /* What it was running fails; what it had not started goes back. A worker
   * that exited EX_STOPPED, or was killed while stop_at was set, never ran a
   * message at or past stop_at - 1 (see slot_t.stop_at). */
  uint64_t started = atomic_load_explicit(&s->started, memory_order_acquire);
  uint64_t stop_at = atomic_load_explicit(&s->stop_at, memory_order_acquire);
  if (w->have_status && WIFEXITED(st) && WEXITSTATUS(st) == EX_STOPPED && started) started--;
  else if (stop_at && started > stop_at - 1) started = stop_at - 1;
  uint32_t item = atomic_load_explicit(&s->item, memory_order_relaxed);
  char msg[ERRMSG_MAX];
  if (ex.exitcode < 0)
    snprintf(msg, sizeof msg, "worker pid %d was killed by signal %d (SIG%s)%s", (int)w->pid,
             -ex.exitcode, signame(-ex.exitcode), w->have_status ? "" : " (status unknown)");
  else
    snprintf(msg, sizeof msg, "worker pid %d exited with code %d while running the task",
             (int)w->pid, ex.exitcode);
  /* Report the end first, so handlers know of it before any waiter wakes. */
  flight_t *run = fifo_front(w);
  if (run && run->seq < started) ex.job_id = run->job->id;
  if (p->opts.on_process_down && ex.how != CAROM_WORKER_RECYCLED && ex.how != CAROM_WORKER_SHUTDOWN)
    p->opts.on_process_down(&ex, p->opts.event_arg);
  if (p->opts.on_process_exit) p->opts.on_process_exit(&ex, p->opts.event_arg);
  while (w->fifo_n) {
    flight_t f = *fifo_front(w);
    fifo_pop(w);
    carom_job_t *j = f.job;
    j->inflight--;
    if (f.seq < started) {
      /* Started: the items up to and including the running one died with it
       * (their results were not sent); the rest of the chunk runs again. */
      size_t ran = (size_t)item + 1 > f.count ? f.count : (size_t)item + 1;
      int code = w->hard_sent == f.seq + 1       ? CAROM_ETIMELIMIT
                 : atomic_load(&j->term_sig) ? CAROM_ETERMINATED
                 : pstate == POOL_TERMINATE  ? p->term_running
                                             : CAROM_EWORKERLOST;
      char tmsg[ERRMSG_MAX];
      if (code == CAROM_ETIMELIMIT) {
        snprintf(tmsg, sizeof tmsg, "time limit exceeded (%.3f s): worker pid %d killed",
                 j->hard_ns / 1e9, (int)w->pid);
        snprintf(msg, sizeof msg, "%s", tmsg);
      } else if (code == -EINTR) {
        snprintf(msg, sizeof msg, "interrupted (SIGINT): worker pid %d killed", (int)w->pid);
      }
          /* P8: a task that took its worker down may run again (on_worker_lost =
       * RETRY(n)), counted per item apart from the task's own errors; past
       * n+1 attempts it fails as a poison task. */
      size_t culprit = f.first + (ran - 1);
      if (code == CAROM_EWORKERLOST && j->cb.worker_lost_retries) {
        if (!j->attempts) j->attempts = calloc(j->n, sizeof *j->attempts);
        if (j->attempts && j->attempts[culprit] < j->cb.worker_lost_retries) {
          j->attempts[culprit]++;
          carom__warn("pool: job %llu item %zu lost its worker; retry %u of %u",
                      (unsigned long long)j->id, culprit, j->attempts[culprit],
                      j->cb.worker_lost_retries);
          job_redo(p, j, f.first, f.count); /* never started again: all of it re-runs */
          continue;
        }
        if (j->attempts) {
          size_t l = strlen(msg);
          snprintf(msg + l, sizeof msg - l, " (attempt %u of %u)", j->attempts[culprit] + 1u,
                   j->cb.worker_lost_retries + 1u);
        }
      }
      bool fin = job_fail_range(j, f.first, ran, code, msg);
      if (ran < f.count) {
        if (pstate == POOL_TERMINATE || atomic_load(&j->cancel_req))
          fin |= job_fail_range(j, f.first + ran, f.count - ran,
                                pstate == POOL_TERMINATE ? p->term_queued : CAROM_ECANCELLED,
                                "cancelled");
        else
          job_redo(p, j, f.first + ran, f.count - ran);
      }
      if (fin) job_finish(p, j);
    } else if (pstate == POOL_TERMINATE) {
      if (job_fail_range(j, f.first, f.count, p->term_queued, "pool terminated")) job_finish(p, j);
    } else {
      job_redo(p, j, f.first, f.count);
    }
  }
  w->sending = false;
  w->stop_sent = false;
  w->stop_msg_at = 0;
  w->soft_sent = w->hard_sent = 0;
  w->dead_since = 0;
  if (w->pidfd >= 0) {
    epoll_ctl(p->epfd, EPOLL_CTL_DEL, w->pidfd, NULL);
    close(w->pidfd);
    w->pidfd = -1;
  }
  if (w->state == W_UP && p->healthy) p->healthy--;
  atomic_store(&s->pid, 0);
  w->state = W_DEAD;
  w->respawn_at = carom_now_ns();
  if (ex.how == CAROM_WORKER_INIT_FAILED || (died_starting && ex.how != CAROM_WORKER_SHUTDOWN)) {
    if (!s->errmsg[0])
      snprintf(s->errmsg, sizeof s->errmsg, "died during start-up: %.200s", msg);
    p->init_failures++;
    uint64_t backoff = 100000000ull << (p->init_failures - 1 < 6 ? p->init_failures - 1 : 6);
    if (backoff > 5000000000ull) backoff = 5000000000ull;
    p->spawn_after = w->respawn_at + backoff;
    unsigned cap = p->opts.init_retries ? p->opts.init_retries : 3;
    carom__warn("pool: worker %d initializer failed (%u in a row): %s", (int)w->pid,
                p->init_failures, s->errmsg);
    if (p->init_failures >= cap && p->healthy == 0) {
      pthread_mutex_lock(&p->mu);
      p->init_broken = true;
      snprintf(p->init_error, sizeof p->init_error, "%s", s->errmsg);
      pthread_mutex_unlock(&p->mu);
      /* Fail what waits: nothing can run it until a worker starts cleanly. */
      while (p->pend_head) {
        carom_job_t *j = p->pend_head;
        pend_pop(p);
        job_cancel_rest(p, j, CAROM_EINITIALIZER, p->init_error);
      }
    }
  } else if (ex.how != CAROM_WORKER_RECYCLED && ex.how != CAROM_WORKER_SHUTDOWN) {
    carom__warn("pool: %s", msg);
  }
  w->pid = 0;
}

static void handle_tpl(carom_pool_t *p) {
  tpl_rep_t r;
  for (;;) {
    ssize_t n = recv(p->sock, &r, sizeof r, MSG_DONTWAIT);
    if (n != (ssize_t)sizeof r) {
      if (n == 0) {
        /* The template is gone, and every worker with it (PDEATHSIG). Nothing
         * can be started any more: end everything as terminate does. After
         * TPL_QUIT that is expected: it left after reporting every worker. */
        if (!p->tpl_quit) {
          carom_log(CAROM_LOG_ERROR, "pool: template process died; terminating the pool");
          pthread_mutex_lock(&p->mu);
          p->state = POOL_TERMINATE;
          pthread_mutex_unlock(&p->mu);
        }
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, p->sock, NULL);
        p->tpl_dead = true;
        for (unsigned i = 0; i < p->nslots; i++) {
          wslot_t *w = &p->slots[i];
          if (w->state == W_SPAWNING) { /* no worker we know of: none to report */
            w->state = W_DEAD;
          } else if (w->state != W_EMPTY && w->state != W_DEAD) {
            w->have_status = false;
            worker_gone(p, i);
          }
        }
      }
      return;
    }
    if (r.slot >= p->nslots) continue;
    wslot_t *w = &p->slots[r.slot];
    if (r.op == TPL_SPAWNED) {
      if (r.status < 0) {
        carom__warn("pool: fork of a worker failed: %s", carom_strerror(r.status));
        w->state = W_DEAD;
        w->respawn_at = carom_now_ns() + 100000000ull;
        continue;
      }
      w->pid = r.pid;
      w->state = W_STARTING;
      w->pidfd = carom__pidfd_open(r.pid);
      if (w->pidfd < 0) w->pidfd = -1;
      if (w->pidfd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1000 + r.slot};
        epoll_ctl(p->epfd, EPOLL_CTL_ADD, w->pidfd, &ev);
      }
    } else if (r.op == TPL_EXITED) {
      if (w->pid != r.pid) continue;
      w->status = r.status;
      w->have_status = true;
      worker_gone(p, r.slot);
    }
  }
}

static void intake(carom_pool_t *p) {
  if (!atomic_load_explicit(&p->sub_flag, memory_order_acquire)) return;
  pthread_mutex_lock(&p->mu);
  carom_job_t *j = p->sub_head;
  p->sub_head = p->sub_tail = NULL;
  atomic_store_explicit(&p->sub_flag, false, memory_order_relaxed);
  bool broken = p->init_broken;
  pthread_mutex_unlock(&p->mu);
  while (j) {
    carom_job_t *next = j->next_sub;
    p->live_jobs++;
    if (j->n == 0) {
      atomic_store(&j->done, 1);
      job_wake(j);
      job_finish(p, j);
    } else if (broken) {
      job_cancel_rest(p, j, CAROM_EINITIALIZER, p->init_error);
    } else {
      pend_push_back(p, j);
    }
    j = next;
  }
}

/* Handle cancel/terminate requests: queued jobs end now, messages already in
 * a worker's channel are marked to be skipped, and a terminated job's running
 * workers get the signal. */
/* Have the worker in slot i killed (signal sig) for its message f, unless it
 * has moved past f already (see slot_t.stop_at): true when the kill went. */
static bool kill_for_message(carom_pool_t *p, unsigned i, const flight_t *f, int sig) {
  wslot_t *w = &p->slots[i];
  slot_t *s = pool_slot(p->shm, i);
  atomic_store_explicit(&s->stop_at, f->seq + 2, memory_order_seq_cst);
  if (atomic_load_explicit(&s->started, memory_order_seq_cst) != f->seq + 1) {
    /* It raised `started` for the next message before it could see stop_at
     * (it runs it; clearing is harmless) or saw it and exits EX_STOPPED
     * without running it (worker_gone counts that message as not started). */
    atomic_store_explicit(&s->stop_at, 0, memory_order_seq_cst);
    return false;
  }
  tpl_send(p, TPL_KILL, i, w->pid, sig);
  return true;
}

static void sweep_cancels(carom_pool_t *p) {
  for (unsigned i = 0; i < p->nslots; i++) {
    wslot_t *w = &p->slots[i];
    slot_t *s = pool_slot(p->shm, i);
    uint64_t started = atomic_load_explicit(&s->started, memory_order_acquire);
    for (unsigned k = 0; k < w->fifo_n; k++) {
      flight_t *f = &w->fifo[(w->fifo_head + k) % w->fifo_cap];
      carom_job_t *j = f->job;
      if (!atomic_load_explicit(&j->cancel_req, memory_order_relaxed)) continue;
      if (f->seq >= started) {
        atomic_store_explicit(&s->cancel[f->seq % CANCEL_RING], f->seq + 1, memory_order_release);
      } else if (f->seq + 1 == started && atomic_load(&j->term_sig) && w->pid > 0 &&
                 !w->stop_sent) {
        /* The message it runs now (results already published were drained
         * just before, so a finished one is not mistaken for it). */
        kill_for_message(p, i, f, atomic_load(&j->term_sig));
      }
    }
  }
  for (carom_job_t **pp = &p->pend_head, *prev = NULL; *pp;) {
    carom_job_t *j = *pp;
    if (atomic_load_explicit(&j->cancel_req, memory_order_relaxed)) {
      *pp = j->next_pend;
      if (p->pend_tail == j) p->pend_tail = prev;
      j->pending = false;
      job_cancel_rest(p, j, CAROM_ECANCELLED, "cancelled");
      continue;
    }
    prev = j;
    pp = &j->next_pend;
  }
}

/* Soft and hard limits of running messages. Returns the next expiry (ns), or
 * UINT64_MAX when no limit is pending. */
static uint64_t enforce_limits(carom_pool_t *p, uint64_t now) {
  uint64_t next = UINT64_MAX;
  for (unsigned i = 0; i < p->nslots; i++) {
    wslot_t *w = &p->slots[i];
    if (w->state != W_UP || !w->fifo_n || w->stop_sent) continue;
    slot_t *s = pool_slot(p->shm, i);
    uint64_t started = atomic_load_explicit(&s->started, memory_order_acquire);
    if (started == 0) continue;
    flight_t *f = NULL;
    for (unsigned k = 0; k < w->fifo_n && !f; k++) {
      flight_t *c = &w->fifo[(w->fifo_head + k) % w->fifo_cap];
      if (c->seq + 1 == started) f = c;
    }
    if (!f) continue; /* the running message already reported */
    carom_job_t *j = f->job;
    if (!j->soft_ns && !j->hard_ns) continue;
    /* started_ns is written before started (release), so it is current. */
    uint64_t t0 = atomic_load_explicit(&s->started_ns, memory_order_relaxed);
    if (j->hard_ns && w->hard_sent != f->seq + 1) {
      uint64_t dl = t0 + j->hard_ns;
      if (now >= dl) {
        w->hard_sent = f->seq + 1;
        if (!kill_for_message(p, i, f, SIGKILL)) continue; /* it finished just now */
        carom__warn("pool: job %llu exceeded its time limit (%.3f s); killing worker %d",
                    (unsigned long long)j->id, j->hard_ns / 1e9, (int)w->pid);
        if (j->cb.timeout_callback)
          j->cb.timeout_callback(j, j->soft_ns / 1e9, j->hard_ns / 1e9, j->cb.arg);
        continue;
      }
      if (dl < next) next = dl;
    }
    if (j->soft_ns && w->soft_sent != f->seq + 1) {
      uint64_t dl = t0 + j->soft_ns;
      if (now >= dl) {
        w->soft_sent = f->seq + 1;
        atomic_store_explicit(&s->soft_seq, f->seq + 1, memory_order_release);
        if (w->pidfd < 0 || syscall(SYS_pidfd_send_signal, w->pidfd, SIGUSR1, NULL, 0) != 0)
          kill(w->pid, SIGUSR1);
      } else if (dl < next) {
        next = dl;
      }
    }
  }
  return next;
}

/* Owner signals, when the pool was asked to handle them (one pool at a time). */
static carom_pool_t *_Atomic sig_pool;
static volatile sig_atomic_t sig_seen;
static struct sigaction sig_old_int, sig_old_term;

static void on_owner_signal(int sig) {
  int saved = errno;
  carom_pool_t *p = atomic_load(&sig_pool);
  if (p) {
    sig_seen |= sig == SIGINT ? CAROM_POOL_SIGINT_TERMINATE : CAROM_POOL_SIGTERM_SHUTDOWN;
    uint64_t one = 1;
    ssize_t w = write(p->evfd, &one, sizeof one);
    (void)w;
  }
  errno = saved;
}

/* Terminate requests for single workers (carom_pool_terminate_job). */
static void handle_kill_requests(carom_pool_t *p) {
  struct kill_req reqs[16];
  pthread_mutex_lock(&p->mu);
  int n = p->nkills;
  memcpy(reqs, p->kills, sizeof reqs);
  p->nkills = 0;
  atomic_store(&p->kill_flag, false);
  pthread_mutex_unlock(&p->mu);
  for (int r = 0; r < n; r++) {
    for (unsigned i = 0; i < p->nslots; i++) {
      wslot_t *w = &p->slots[i];
      if (w->pid != reqs[r].pid || w->state != W_UP) continue;
      uint64_t started = atomic_load(&pool_slot(p->shm, i)->started);
      for (unsigned k = 0; k < w->fifo_n; k++) {
        flight_t *f = &w->fifo[(w->fifo_head + k) % w->fifo_cap];
        if (f->seq + 1 == started) atomic_store(&f->job->term_sig, reqs[r].sig);
      }
      tpl_send(p, TPL_KILL, i, w->pid, reqs[r].sig);
    }
  }
}

/* Ask every live worker to stop: on close (sig SIGTERM, no work left) an idle
 * worker through its channel (MSG_STOP), a starting one with SIGTERM; on
 * terminate, SIGKILL. Signals go through the template, which reports each
 * exit; a worker leaving on MSG_STOP reports its own (slot_t.last_words). */
enum { STOP_GRACE_NS = 1000000000 };
static void stop_workers(carom_pool_t *p, int sig) {
  for (unsigned i = 0; i < p->nslots; i++) {
    wslot_t *w = &p->slots[i];
    if (w->state == W_EMPTY || w->state == W_DEAD || w->stop_sent) continue;
    if (w->state == W_SPAWNING) continue; /* no pid yet: stopped once it has one */
    w->stop_sent = true;
    if (sig == SIGTERM && w->state == W_UP && !w->fifo_n && !w->sending) {
      /* As Python's workers get None: it exits 0 of its own accord, with no
       * detour through the template. One still there STOP_GRACE_NS later is
       * killed. */
      msg_t h = {.kind = MSG_STOP, .seq = w->seq};
      struct iovec iov = {&h, sizeof h};
      size_t progress = 0;
      chan_t *down = pool_chan(p->shm, pool_slot(p->shm, i)->down_off);
      if (chan_write(down, &iov, 1, sizeof h, &progress)) {
        down_notify(down);
        w->stop_msg_at = carom_now_ns();
        continue;
      }
    }
    tpl_send(p, TPL_KILL, i, w->pid, sig);
  }
}

static void *supervisor(void *arg) {
  carom_pool_t *p = arg;
  pool_shm_t *h = p->shm;
  uint64_t last_poll = 0;
  uint32_t seen_cancel = 0;
  unsigned idle = 0;
  uint64_t last_progress = 0;
  for (;;) {
    bool progress = false;
    if (p->tpl_qn) tpl_flush(p);
    intake(p);
    uint32_t ce = atomic_load(&p->cancel_epoch);
    if (ce != seen_cancel) {
      seen_cancel = ce;
      for (unsigned i = 0; i < p->nslots; i++)
        if (p->slots[i].state == W_STARTING || p->slots[i].state == W_UP) drain_up(p, i);
      sweep_cancels(p);
    }
    for (unsigned i = 0; i < p->nslots; i++) {
      wslot_t *w = &p->slots[i];
      if (w->state == W_STARTING || w->state == W_UP) {
        progress |= drain_up(p, i);
        check_started(p, i);
      }
    }
    progress |= dispatch(p);

    uint64_t now = carom_now_ns();
    uint64_t next_limit = enforce_limits(p, now);
    if (atomic_load_explicit(&p->kill_flag, memory_order_acquire)) handle_kill_requests(p);
    if (atomic_load(&sig_pool) == p && sig_seen) {
      int seen = sig_seen;
      sig_seen = 0;
      pthread_mutex_lock(&p->mu);
      if (seen & CAROM_POOL_SIGINT_TERMINATE) {
        carom__warn("pool: SIGINT: terminating");
        p->state = POOL_TERMINATE;
        p->term_running = p->term_queued = -EINTR;
      } else if (p->state == POOL_RUN) {
        carom__warn("pool: SIGTERM: shutting down with %.3f s of grace", p->opts.sigterm_grace);
        p->state = POOL_CLOSE;
        p->shutting_down = p->shutdown_cancel = true;
        p->grace_ns = now + (uint64_t)(p->opts.sigterm_grace * 1e9);
      }
      pthread_mutex_unlock(&p->mu);
    }
    /* Running pools take no lock here: the loop spins while work flows. */
    int pstate = atomic_load_explicit(&p->state, memory_order_acquire);
    bool cancel_queued = false, submitted = false;
    uint64_t grace = UINT64_MAX;
    if (pstate != POOL_RUN) {
      pthread_mutex_lock(&p->mu);
      if (p->shutting_down && p->state == POOL_CLOSE && now >= p->grace_ns)
        p->state = POOL_TERMINATE; /* grace is over: kill what still runs */
      pstate = p->state;
      cancel_queued = p->shutting_down && p->shutdown_cancel;
      grace = p->shutting_down ? p->grace_ns : UINT64_MAX;
      /* Submitted before the close but not taken in yet (intake runs at the
       * top of the loop): work still to come. None can be added now. */
      submitted = p->sub_head != NULL;
      pthread_mutex_unlock(&p->mu);
    }
    if (cancel_queued) {
      while (p->pend_head) {
        carom_job_t *j = p->pend_head;
        pend_pop(p);
        job_cancel_rest(p, j, CAROM_ECANCELLED, "pool shut down");
      }
    }
    if (grace < next_limit) next_limit = grace;

    /* Lifecycle: (re)spawn while there is a reason to, stop when done. A
     * worker that has been given its last task (maxtasksperchild) no longer
     * counts: its replacement is forked into a spare position while it
     * finishes, so recycling overlaps with work instead of stalling it. */
    bool work_left = p->pend_head || p->live_jobs || submitted;
    bool all_down = true;
    unsigned live = 0;
    for (unsigned i = 0; i < p->nslots; i++) {
      wslot_t *w = &p->slots[i];
      bool retiring = w->state == W_UP && p->opts.maxtasksperchild &&
                      w->sent_msgs >= p->opts.maxtasksperchild;
      live += w->state != W_EMPTY && w->state != W_DEAD && !retiring && !w->stop_sent;
    }
    for (unsigned i = 0; i < p->nslots; i++) {
      wslot_t *w = &p->slots[i];
      bool down = w->state == W_EMPTY || w->state == W_DEAD;
      bool want = !p->tpl_dead && (pstate == POOL_RUN || (pstate == POOL_CLOSE && work_left)) &&
                  live < p->target && now >= p->spawn_after;
      if (down && want && now >= w->respawn_at && spawn_worker(p, i) == 0) {
        live++;
        down = false;
        progress = true;
      }
      /* Exit seen through the pidfd but no status from the template: give it
       * 200 ms, then account for the worker without one. */
      /* A template that does not answer a spawn request is wedged (e.g. on a
       * lock inherited held from a thread of the creator): kill it, so the
       * pool ends its jobs instead of waiting forever. */
      if (w->state == W_SPAWNING && !p->tpl_dead && now > w->spawn_sent &&
          now - w->spawn_sent > SPAWN_TIMEOUT_NS) {
        carom_log(CAROM_LOG_ERROR, "pool: the template process did not start a worker in %d s; "
                  "killing it", (int)(SPAWN_TIMEOUT_NS / 1000000000ull));
        kill(p->tpl_pid, SIGKILL);
        w->spawn_sent = now; /* once */
      }
      uint64_t lost_ns = p->opts.lost_worker_timeout > 0
                             ? (uint64_t)(p->opts.lost_worker_timeout * 1e9) : 200000000ull;
      if (!down && w->dead_since && now - w->dead_since > lost_ns) worker_gone(p, i);
      /* Told to stop through its channel a second ago and still there (it
       * is stopped, or wedged outside its loop): killed, stopped or not. */
      if (!down && w->stop_msg_at && !w->dead_since && now - w->stop_msg_at > STOP_GRACE_NS) {
        tpl_send(p, TPL_KILL, i, w->pid, SIGKILL);
        w->stop_msg_at = 0;
      }
      all_down &= w->state == W_EMPTY || w->state == W_DEAD;
    }
    if (pstate == POOL_TERMINATE) {
      while (p->pend_head) {
        carom_job_t *j = p->pend_head;
        pend_pop(p);
        job_cancel_rest(p, j, p->term_queued, "pool terminated");
      }
      stop_workers(p, SIGKILL);
      if (all_down) break;
    } else if (pstate == POOL_CLOSE && !work_left) {
      stop_workers(p, SIGTERM);
      /* Nothing will be started again (no work can come): the template may
       * leave once it has reported the workers' exits (a spawn requested
       * before is answered first: the socket keeps order). */
      if (!p->tpl_quit && !p->tpl_dead) {
        tpl_send(p, TPL_QUIT, 0, 0, 0);
        p->tpl_quit = true;
      }
      if (all_down) break;
    }

    /* Spin while work flows; poll events (deaths, template) every ~1 ms;
     * sleep in epoll when idle for a while. */
    int timeout = 0;
    if (progress) {
      idle = 0;
      last_progress = now;
      if (now - last_poll < 1000000) continue;
    } else if (now - last_progress < SUP_SPIN_NS) {
      pool_spin_step(idle++);
      if (now - last_poll < 1000000) continue;
    } else {
      idle = 0;
      atomic_store_explicit(&h->sup_sleep, 1, memory_order_relaxed);
      atomic_thread_fence(memory_order_seq_cst); /* flag before re-check (Dekker with wakers) */
      bool ready = atomic_load(&p->sub_flag) || atomic_load(&p->cancel_epoch) != seen_cancel;
      /* dispatch() stopped for a job's copy: the submitter may have published
       * more since (its wake found us not yet asleep). */
      carom_job_t *hj = p->pend_head;
      ready |= hj && hj->copy_seen && atomic_load(&hj->copied) + 1 != hj->copy_seen;
      for (unsigned i = 0; i < p->nslots && !ready; i++) {
        wslot_t *w = &p->slots[i];
        if (w->state != W_STARTING && w->state != W_UP) continue;
        ready |= !chan_empty(pool_chan(p->shm, pool_slot(p->shm, i)->up_off));
        ready |= w->fifo_n && atomic_load(&pool_slot(p->shm, i)->started) > w->acc;
      }
      timeout = ready ? 0 : p->tpl_qn ? 1 : 100; /* queued requests: retry soon */
      if (next_limit != UINT64_MAX) {
        int64_t ms = ((int64_t)next_limit - (int64_t)now + 999999) / 1000000;
        if (ms < timeout) timeout = ms < 0 ? 0 : (int)ms;
      }
      for (unsigned i = 0; i < p->nslots; i++) {
        wslot_t *w = &p->slots[i];
        if (w->dead_since) timeout = timeout > 20 ? 20 : timeout;
        if (w->state == W_DEAD && pstate != POOL_TERMINATE) {
          uint64_t at = w->respawn_at > p->spawn_after ? w->respawn_at : p->spawn_after;
          int64_t ms = ((int64_t)at - (int64_t)now) / 1000000 + 1;
          if (ms < timeout) timeout = ms < 0 ? 0 : (int)ms;
        }
      }
    }
    struct epoll_event ev[16];
    int n = epoll_wait(p->epfd, ev, 16, timeout);
    atomic_store_explicit(&h->sup_sleep, 0, memory_order_relaxed);
    last_poll = carom_now_ns();
    for (int k = 0; k < n; k++) {
      uint64_t tag = ev[k].data.u64;
      if (tag == 1) {
        uint64_t v;
        ssize_t r = read(p->evfd, &v, sizeof v);
        (void)r;
      } else if (tag == 2) {
        handle_tpl(p);
      } else if (tag >= 1000 && tag - 1000 < p->nslots) {
        /* A worker exited. If it said how (slot_t.last_words), that is its
         * status; otherwise the status comes from the template shortly. */
        unsigned i = (unsigned)(tag - 1000);
        wslot_t *w = &p->slots[i];
        uint64_t words =
            atomic_load_explicit(&pool_slot(p->shm, i)->last_words, memory_order_acquire);
        if (w->pidfd >= 0 && w->pid > 0 && words >> 32 == (uint32_t)w->pid) {
          /* as waitpid's status: exited with the code it said */
          w->status = (int)(((words & BYE_CODE) - 1) & 0xff) << 8;
          w->have_status = true;
          worker_gone(p, i);
        } else if (w->pidfd >= 0) {
          epoll_ctl(p->epfd, EPOLL_CTL_DEL, w->pidfd, NULL);
          w->dead_since = last_poll;
        }
      }
    }
  }
  /* Every worker is down and none will be asked for again: let the template
   * leave now (end of its requests), so it exits while the caller returns
   * from join, and free only reaps it. */
  shutdown(p->sock, SHUT_WR);
  atomic_store(&p->sup_exited, 1);
  carom__futex_wake(&p->sup_exited, INT_MAX);
  return NULL;
}

/* ------------------------------------------------------------- creation */

/* Claiming without a locked instruction while one thread consumes a job (the
 * usual case; a CAS per item was the largest cost of a fast imap here).
 *
 * The first thread to call next() on a job owns its claim counter and
 * advances it with plain stores, between raising and lowering owner_busy. A
 * second thread makes the job shared for good (every claim is then a CAS):
 * it swaps claim_owner to CLAIM_SHARING, issues a private expedited
 * membarrier (every running thread of the process passes a full barrier),
 * waits until owner_busy is 0, and only then publishes CLAIM_SHARED (release);
 * every other thread, the old owner included, waits through CLAIM_SHARING, so
 * no CAS can run while the owner's last plain store is still to land (a third
 * consumer did, and the owner's store moved the counter back: items twice).
 * owner_busy holds the pid of the process whose owner raised it: a job
 * inherited by a fork()ed child mid-claim (another thread of the parent was
 * the owner) shows the parent's pid, which no thread of the child will clear,
 * and is ignored. The owner re-reads claim_owner after raising
 * owner_busy with only a compiler barrier between: the membarrier stands in
 * for the owner's missing store-load fence (liburcu's sys_membarrier scheme,
 * as in ipc/ring.c), so either the owner sees the job shared or the second
 * thread sees owner_busy raised and waits for the owner's claim to land.
 * Jobs start shared unless this process registered for private expedited
 * membarriers, which carom_pool_create does while the process has one thread
 * (registering with several costs an RCU grace period, milliseconds: then,
 * and on kernels or seccomp policies without membarrier, every claim is a
 * CAS). Registration is per process (keyed by pid: a fork()ed child has not).
 */
#define CLAIM_SHARED ((const void *)1)
#define CLAIM_SHARING ((const void *)2)
static _Thread_local char claim_token; /* its address names the thread */
static int count_threads(void) {
  /* procfs gives the task directory 2 + threads links: one stat (~2 µs
   * here) instead of listing it (~19 µs, in every pool creation). */
  struct stat st;
  if (stat("/proc/self/task", &st) == 0 && st.st_nlink > 2) return (int)st.st_nlink - 2;
  DIR *d = opendir("/proc/self/task");
  if (!d) return 1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static bool pool_mine(carom_pool_t *p) { return p->owner == carom__self_pid(); }

int carom_pool_create(const carom_pool_opts_t *opts, carom_pool_t **out) {
  if (!out) return -EINVAL;
  *out = NULL;
  carom_pool_opts_t o;
  memset(&o, 0, sizeof o);
  if (opts) {
    if (opts->size == 0 || opts->size > sizeof o) return -EINVAL;
    memcpy(&o, opts, opts->size);
  }
  o.size = sizeof o;
  if (o.processes < 0 || o.processes > 4096) return -EINVAL;
  if (o.processes == 0) o.processes = carom_cpu_count();
  if (o.channel_bytes == 0) o.channel_bytes = 1u << 18;
  if (o.channel_bytes < 16384 || o.channel_bytes > (1ull << 32) ||
      (o.channel_bytes & (o.channel_bytes - 1)))
    return -EINVAL;
  if (o.prefetch >= CANCEL_RING) return -EINVAL;
  int method = POOL_METHOD_FORK;
  if (!o.start_method || !strcmp(o.start_method, "fork")) {
    o.start_method = "fork";
  } else if (!strcmp(o.start_method, "forkserver")) {
    o.start_method = "forkserver";
    method = POOL_METHOD_FORKSERVER;
  } else if (!strcmp(o.start_method, "spawn")) {
    o.start_method = "spawn";
    method = POOL_METHOD_SPAWN;
  } else {
    return -EINVAL;
  }
  /* A pointer argument cannot cross exec: it must come as bytes. */
  if (method != POOL_METHOD_FORK && o.initarg && !o.initarg_len) return -EINVAL;
  if (o.initarg_len && !o.initarg) return -EINVAL;
  if (o.prefetch == 0 && !(opts && opts->size >= offsetof(carom_pool_opts_t, prefetch) +
                                                     sizeof o.prefetch && opts->prefetch == 0))
    o.prefetch = 1;

  carom_pool_t *p = calloc(1, sizeof *p);
  if (!p) return -ENOMEM;
  p->opts = o;
  pthread_mutex_init(&p->xmu, NULL);
  if (o.initarg_len) {
    if (!(p->initarg_copy = malloc(o.initarg_len))) {
      pthread_mutex_destroy(&p->xmu);
      free(p);
      return -ENOMEM;
    }
    memcpy(p->initarg_copy, o.initarg, o.initarg_len);
    p->opts.initarg = p->initarg_copy;
  }
  p->target = (unsigned)o.processes;
  p->nslots = p->target * (o.maxtasksperchild ? 2 : 1);
  p->owner = carom__self_pid();
  /* Owner claims in next() (see claim_share) need the process registered for
   * membarrier, cheap only while it has one thread: now, before this pool's
   * supervisor thread exists, if the creator has none. */
  int nthreads = 0;
  if (carom__mb_status(CAROM__MB_PRIVATE) == 0) {
    nthreads = count_threads();
    if (nthreads == 1) carom__mb_register(CAROM__MB_PRIVATE);
  }
  p->evfd = p->sock = p->epfd = p->tpl_pidfd = -1;
  p->term_running = CAROM_ETERMINATED;
  p->term_queued = CAROM_ECANCELLED;
  pthread_mutex_init(&p->mu, NULL);
  int rc = -ENOMEM;
  p->slots = calloc(p->nslots, sizeof *p->slots);
  if (!p->slots) goto fail;
  for (unsigned i = 0; i < p->nslots; i++) p->slots[i].pidfd = -1;

  /* Shared region: header, slots, then two channels per slot. */
  size_t chan_hdr = sizeof(chan_t);
  size_t chan_sz = chan_hdr + o.channel_bytes;
  size_t base = sizeof(pool_shm_t) + p->nslots * sizeof(slot_t);
  base = (base + 4095) & ~(size_t)4095;
  p->shm_size = base + 2 * p->nslots * chan_sz;
  /* Under fork the template inherits an anonymous mapping; an exec'd one
   * maps the same memfd. */
  int shmfd = -1;
  if (method != POOL_METHOD_FORK) {
    shmfd = memfd_create("carom-pool", MFD_CLOEXEC);
    if (shmfd < 0 || ftruncate(shmfd, (off_t)p->shm_size) != 0) {
      rc = -errno;
      if (shmfd >= 0) close(shmfd);
      goto fail;
    }
  }
  p->shm = mmap(NULL, p->shm_size, PROT_READ | PROT_WRITE,
                MAP_SHARED | (shmfd < 0 ? MAP_ANONYMOUS : 0), shmfd, 0);
  if (p->shm == MAP_FAILED) {
    p->shm = NULL;
    rc = -errno;
    if (shmfd >= 0) close(shmfd);
    goto fail;
  }
  for (unsigned i = 0; i < p->nslots; i++) {
    slot_t *s = pool_slot(p->shm, i);
    s->down_off = base + 2 * i * chan_sz;
    s->up_off = s->down_off + chan_sz;
    chan_init(pool_chan(p->shm, s->down_off), chan_hdr, o.channel_bytes);
    chan_init(pool_chan(p->shm, s->up_off), chan_hdr, o.channel_bytes);
  }

  p->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->evfd < 0) {
    rc = -errno;
    if (shmfd >= 0) close(shmfd);
    goto fail;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    rc = -errno;
    if (shmfd >= 0) close(shmfd);
    goto fail;
  }
  if (method != POOL_METHOD_FORK) {
    pool_exec_args_t xa = {method, p->owner, &p->opts, shmfd, p->shm_size, p->evfd, sv[1]};
    char err[ERRMSG_MAX];
    rc = carom__pool_exec_template(&xa, &p->tpl_pid, &p->tpl_pidfd, &p->xtab, err, sizeof err);
    close(shmfd);
    close(sv[1]);
    if (rc) {
      carom_log(CAROM_LOG_ERROR, "pool: %s", err);
      close(sv[0]);
      goto fail;
    }
    p->sock = sv[0];
  } else {
    if (!nthreads) nthreads = count_threads();
    if (nthreads > 1)
      carom__warn("pool: created from a process with %d threads; the template process is "
                  "forked now, before any pool thread, and every worker comes from it "
                  "(start_method \"forkserver\" forks nothing from this process)",
                  nthreads);
    p->cfg = (struct pool_worker_cfg){p->shm, p->evfd, &p->opts, POOL_METHOD_FORK, -1};
    pid_t owner = p->owner;
    pid_t tpl = fork();
    if (tpl < 0) {
      rc = -errno;
      close(sv[0]);
      close(sv[1]);
      goto fail;
    }
    if (tpl == 0) {
      close(sv[0]);
      carom__pool_template_main(sv[1], owner, &p->cfg);
    }
    close(sv[1]);
    p->sock = sv[0];
    p->tpl_pid = tpl;
    p->tpl_pidfd = carom__pidfd_open(tpl);
    if (p->tpl_pidfd < 0) p->tpl_pidfd = -1;
  }

  p->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (p->epfd < 0) {
    rc = -errno;
    goto fail;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
  epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->evfd, &ev);
  ev.data.u64 = 2;
  epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->sock, &ev);

  for (unsigned i = 0; i < p->target; i++) {
    rc = spawn_worker(p, i);
    if (rc) goto fail;
  }
  rc = pthread_create(&p->sup, NULL, supervisor, p);
  if (rc) {
    rc = -rc;
    goto fail;
  }
  p->sup_started = true;
  if (o.signals) {
    carom_pool_t *none = NULL;
    if (!atomic_compare_exchange_strong(&sig_pool, &none, p)) {
      carom__warn("pool: another pool already handles SIGINT/SIGTERM; not installing");
    } else {
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = on_owner_signal;
      sa.sa_flags = SA_RESTART;
      sigemptyset(&sa.sa_mask);
      if (o.signals & CAROM_POOL_SIGINT_TERMINATE) sigaction(SIGINT, &sa, &sig_old_int);
      if (o.signals & CAROM_POOL_SIGTERM_SHUTDOWN) sigaction(SIGTERM, &sa, &sig_old_term);
    }
  }
  *out = p;
  return 0;
fail:
  carom_pool_free(p);
  return rc;
}

/* --------------------------------------------------------- submission */

/* Take a place in the backlog (max_backlog): wait for one unless nowait, or
 * on the supervisor thread (a callback that submits must never block it). */
static int backlog_enter(carom_pool_t *p, bool nowait) {
  unsigned max = p->opts.max_backlog;
  bool on_sup = p->sup_started && pthread_equal(pthread_self(), p->sup);
  for (;;) {
    uint32_t seen = atomic_load(&p->backlog_seq);
    uint32_t n = atomic_load(&p->backlog);
    while (n < max)
      if (atomic_compare_exchange_weak(&p->backlog, &n, n + 1)) return 0;
    pthread_mutex_lock(&p->mu);
    int st = p->state;
    pthread_mutex_unlock(&p->mu);
    if (st != POOL_RUN) return CAROM_ECLOSED;
    if (nowait || on_sup) return -EAGAIN;
    atomic_fetch_add(&p->backlog_waiters, 1);
    carom__futex_wait(&p->backlog_seq, seen, NULL);
    atomic_fetch_sub(&p->backlog_waiters, 1);
  }
}

static int submit(carom_pool_t *p, carom_job_t *j, bool nowait) {
  if (p->opts.max_backlog) {
    int rc = backlog_enter(p, nowait);
    if (rc) return rc;
  }
  pthread_mutex_lock(&p->mu);
  int rc = p->state != POOL_RUN ? CAROM_ECLOSED : p->init_broken ? CAROM_EINITIALIZER : 0;
  if (rc) {
    pthread_mutex_unlock(&p->mu);
    if (p->opts.max_backlog) {
      atomic_fetch_sub(&p->backlog, 1);
      backlog_bump(p);
    }
    return rc;
  }
  j->next_sub = NULL;
  if (p->sub_tail) p->sub_tail->next_sub = j;
  else p->sub_head = j;
  p->sub_tail = j;
  atomic_store_explicit(&p->sub_flag, true, memory_order_release);
  pthread_mutex_unlock(&p->mu);
  sup_wake(p);
  return 0;
}

/* fn's address in the workers' image: itself under fork; under forkserver and
 * spawn, translated through the template's object table (cached: lookups walk
 * the loaded objects). */
static int fn_in_workers(carom_pool_t *p, carom_task_fn fn, uint64_t *out) {
  if (!p->xtab) {
    *out = (uint64_t)(uintptr_t)fn;
    return 0;
  }
  pthread_mutex_lock(&p->xmu);
  for (unsigned i = 0; i < 8; i++) {
    if (p->xcache[i].fn == fn) {
      *out = p->xcache[i].addr;
      pthread_mutex_unlock(&p->xmu);
      return 0;
    }
  }
  int rc = carom__pool_fn_translate(p->xtab, (const void *)(uintptr_t)fn, out);
  if (rc == 0) {
    p->xcache[p->xcache_next].fn = fn;
    p->xcache[p->xcache_next].addr = *out;
    p->xcache_next = (p->xcache_next + 1) % 8;
  } else {
    carom__warn("pool: task function %p is in no object the %s workers have loaded",
                (void *)(uintptr_t)fn, p->opts.start_method);
  }
  pthread_mutex_unlock(&p->xmu);
  return rc;
}

static int submit_new(carom_pool_t *p, int kind, carom_task_fn fn, const struct iovec *items,
                      size_t n, size_t chunksize, const carom_submit_opts_t *opts, bool borrow,
                      carom_job_t **out) {
  if (!p || !fn || !out || (n && !items)) return -EINVAL;
  *out = NULL;
  if (!pool_mine(p)) return CAROM_EFORKED;
  if (opts && (opts->size == 0 || opts->size > sizeof(carom_submit_opts_t))) return -EINVAL;
  /* Items of one length, and among those items laid out back to back (an
   * array of records): their bytes then move as one block, not item by item. */
  bool in_uniform = n > 0, in_contig = n > 0;
  const char *base0 = n ? items[0].iov_base : NULL;
  uintptr_t b0 = (uintptr_t)base0; /* integer arithmetic: base0 may be NULL */
  size_t total = 0; /* the items' bytes */
  for (size_t i = 0; i < n; i++) { /* lengths travel as 32-bit fields */
    if (items[i].iov_len > UINT32_MAX - 4096) return -EMSGSIZE;
    if (items[i].iov_len && !items[i].iov_base) return -EINVAL; /* not a crash later */
    in_uniform &= items[i].iov_len == items[0].iov_len;
    in_contig &= (uintptr_t)items[i].iov_base == b0 + i * items[0].iov_len;
    total += items[i].iov_len;
  }
  in_contig &= in_uniform && base0 != NULL;
  carom_submit_opts_t cb = {0};
  if (opts) memcpy(&cb, opts, opts->size);
  if (chunksize > UINT32_MAX) chunksize = UINT32_MAX; /* a message's count is 32-bit */
  if (chunksize == 0 && kind != JOB_APPLY) {
    /* Python's default, ceil(n / (4 * processes)), capped so that a chunk's
     * task message (and a result as large as the item) fits one channel frame:
     * such chunks travel without any copy but the one into the ring, and the
     * worker's buffers stay in cache. */
    size_t d = 4 * p->target;
    chunksize = n / d + (n % d ? 1 : 0);
    /* Per item: its bytes (+ a length unless all are one size) down, and a
     * result record + a result guessed as large as the item (at least 8
     * bytes) up; the larger of the two must fit a frame. */
    size_t avg = n ? total / n : 0;
    size_t down = avg + (in_uniform ? 0 : sizeof(uint32_t));
    size_t up = sizeof(item_res_t) + (avg > 8 ? avg : 8);
    size_t per_item = down > up ? down : up;
    size_t budget = p->opts.channel_bytes / 4 - 256;
    size_t cap = budget / per_item;
    if (chunksize > cap) chunksize = cap;
    if (chunksize == 0) chunksize = 1;
  }
  uint64_t wfn;
  int trc = fn_in_workers(p, fn, &wfn);
  if (trc) return trc;
  /* A large copy (0.75 ms for 200k items of 8 bytes here, most of it page
   * faults on the job's fresh memory) is made after the job is queued, in
   * slices of whole chunks published one by one: workers start on the first
   * chunks while the rest are copied, instead of idling through the copy. */
  bool defer = !borrow && total >= 2 * COPY_SLICE_BYTES && n > chunksize;
  carom_job_t *j = job_new(p, kind, fn, items, n, chunksize, opts ? &cb : NULL, borrow,
                           in_uniform, in_contig, total, defer);
  if (!j) return -ENOMEM;
  j->wfn = wfn;
  /* Items of one length back to back, read in place (borrowed) or as
   * copied, travel as one block per chunk. */
  if (borrow && in_contig) j->in_block = base0;
  else if (!borrow && in_uniform) j->in_block = j->in;
  if (defer) atomic_fetch_add(&p->copying, 1);
  int rc = submit(p, j, cb.nowait);
  if (rc) {
    if (defer) atomic_fetch_sub(&p->copying, 1);
    atomic_store(&j->refs, 1);
    job_unref(j);
    return rc;
  }
  if (defer) {
    /* Slices of whole chunks, about COPY_SLICE_BYTES each. The job is the
     * pool's now: it may even end (pool terminated) while this copies; our
     * reference keeps its memory, and carom_pool_free waits for `copying` to
     * fall before unmapping what sup_wake touches. */
    size_t per = total / n ? COPY_SLICE_BYTES / (total / n) : n;
    per = per < chunksize ? chunksize : per - per % chunksize;
    for (size_t a = 0, b; a < n; a = b) {
      b = n - a < per ? n : a + per;
      job_copy(j, items, a, b, in_contig);
      atomic_store_explicit(&j->copied, b, memory_order_release);
      sup_wake(p);
    }
    atomic_fetch_sub_explicit(&p->copying, 1, memory_order_release);
  }
  *out = j;
  return 0;
}

int carom_pool_apply_async(carom_pool_t *p, carom_task_fn fn, const void *arg, size_t len,
                           const carom_submit_opts_t *opts, carom_job_t **job) {
  if (len && !arg) return -EINVAL;
  struct iovec it = {(void *)arg, len};
  return submit_new(p, JOB_APPLY, fn, &it, 1, 1, opts, false, job);
}

int carom_pool_apply(carom_pool_t *p, carom_task_fn fn, const void *arg, size_t len,
                     void **result, size_t *result_len) {
  carom_job_t *j;
  int rc = carom_pool_apply_async(p, fn, arg, len, NULL, &j);
  if (rc) return rc;
  const void *d;
  size_t n;
  rc = carom_job_get(j, NULL, &d, &n);
  if (rc == 0 && result) {
    *result = malloc(n ? n : 1);
    if (!*result) rc = -ENOMEM;
    else {
      memcpy(*result, d, n);
      if (result_len) *result_len = n;
    }
  }
  carom_job_release(j);
  return rc;
}

int carom_pool_map_async(carom_pool_t *p, carom_task_fn fn, const struct iovec *items, size_t n,
                         size_t chunksize, const carom_submit_opts_t *opts, carom_job_t **job) {
  return submit_new(p, JOB_MAP, fn, items, n, chunksize, opts, false, job);
}

int carom_pool_map(carom_pool_t *p, carom_task_fn fn, const struct iovec *items, size_t n,
                   size_t chunksize, carom_job_t **job) {
  /* Blocking: the items outlive the job, so they are read in place. */
  int rc = submit_new(p, JOB_MAP, fn, items, n, chunksize, NULL, true, job);
  if (rc) return rc;
  return carom_job_wait(*job, NULL);
}

int carom_pool_imap(carom_pool_t *p, carom_task_fn fn, const struct iovec *items, size_t n,
                    size_t chunksize, bool ordered, carom_job_t **job) {
  return submit_new(p, ordered ? JOB_IMAP : JOB_IMAP_UNORDERED, fn, items, n, chunksize, NULL,
                    false, job);
}

/* ------------------------------------------------------------ job API */

/* A caller about to sleep on a job spins this long first: results of short
 * tasks arrive within microseconds, and a futex sleep + wake-up costs tens of
 * them on a small machine (shared/FLOORS.md); longer spins took the CPU from
 * forks and exits (recycling) and sped nothing up. */
enum { CALLER_SPIN_NS = 10000 };

/* Spin until *word != seen or the spin budget is spent. */
static bool spin_for_change(_Atomic uint32_t *word, uint32_t seen) {
  uint64_t t0 = 0;
  for (unsigned i = 0;; i++) {
    if (atomic_load_explicit(word, memory_order_acquire) != seen) return true;
    if ((i & 63) == 0) {
      uint64_t now = carom_now_ns();
      if (!t0) t0 = now;
      else if (now - t0 > CALLER_SPIN_NS) return false;
    }
    pool_spin_step(i);
  }
}

/* Sleep until progress changes from `seen` or the deadline passes. */
static int job_sleep(carom_job_t *j, uint32_t seen, const struct timespec *deadline) {
  if (spin_for_change(&j->progress, seen)) return 0;
  atomic_fetch_add(&j->waiters_progress, 1);
  int r = carom__futex_wait(&j->progress, seen, deadline);
  atomic_fetch_sub(&j->waiters_progress, 1);
  return r == -ETIMEDOUT ? -ETIMEDOUT : 0;
}

int carom_job_wait(carom_job_t *j, const struct timespec *deadline) {
  if (!j) return -EINVAL;
  if (!atomic_load(&j->done) && !carom__deadline_passed(deadline)) spin_for_change(&j->done, 0);
  while (!atomic_load(&j->done)) {
    atomic_fetch_add(&j->waiters_done, 1);
    int r = carom__futex_wait(&j->done, 0, deadline);
    atomic_fetch_sub(&j->waiters_done, 1);
    if (r == -ETIMEDOUT && !atomic_load(&j->done)) return -ETIMEDOUT;
  }
  pthread_mutex_lock(&j->mu);
  int e = j->first_error;
  pthread_mutex_unlock(&j->mu);
  return e;
}

int carom_job_get(carom_job_t *j, const struct timespec *deadline, const void **data,
                  size_t *len) {
  int rc = carom_job_wait(j, deadline);
  if (rc == -ETIMEDOUT) return rc;
  return carom_job_item(j, 0, data, len);
}

bool carom_job_ready(carom_job_t *j) { return atomic_load(&j->done) != 0; }

int carom_job_successful(carom_job_t *j) {
  if (!atomic_load(&j->done)) return CAROM_ENOTREADY;
  pthread_mutex_lock(&j->mu);
  int ok = j->first_error == 0;
  pthread_mutex_unlock(&j->mu);
  return ok;
}

bool carom_job_accepted(carom_job_t *j) { return atomic_load(&j->accepted); }

uint64_t carom_job_start_time(carom_job_t *j) { return atomic_load(&j->started_ns); }

size_t carom_job_count(carom_job_t *j) { return j->n; }

uint64_t carom_job_id(carom_job_t *j) { return j->id; }

/* The published segment holding item i, or NULL while it has not ended. */
static const seg_t *item_seg(carom_job_t *j, size_t i) {
  const seg_t *sg = atomic_load_explicit(&j->segs[i / j->chunksize], memory_order_acquire);
  while (sg && i - sg->first >= sg->count) sg = sg->next;
  return sg;
}

/* Item k of segment sg: its code, data and length. */
static int seg_read(const seg_t *sg, size_t k, const void **data, size_t *len) {
  const char *d;
  size_t l;
  int code;
  switch (sg->mode) {
  case SEG_VAR:
    code = sg->res[k].code;
    l = sg->res[k].len;
    d = sg->data + sg->off[k];
    break;
  case SEG_UNIFORM:
    code = 0;
    l = sg->len;
    d = sg->data + k * sg->len;
    break;
  default:
    code = sg->code;
    l = sg->len;
    d = sg->data;
  }
  if (data) *data = d;
  if (len) *len = l;
  return code;
}

/* Item i if it has ended: its code, data and length. */
static int item_read(carom_job_t *j, size_t i, const void **data, size_t *len) {
  const seg_t *sg = atomic_load_explicit(&j->hint, memory_order_acquire);
  if (!sg || i - sg->first >= sg->count) {
    sg = item_seg(j, i);
    if (!sg) return CAROM_ENOTREADY;
    atomic_store_explicit(&j->hint, sg, memory_order_release);
  }
  return seg_read(sg, i - sg->first, data, len);
}

int carom_job_item(carom_job_t *j, size_t i, const void **data, size_t *len) {
  if (i >= j->n) return -EINVAL;
  return item_read(j, i, data, len);
}

/* Item k of an unordered job's completion order (k < norder_pub, acquired).
 * Starts from the hint when it does not lie past k (consumers only move it
 * forward in the common case; another consumer may have left it behind, never
 * wrong), else from the head. */
static int unordered_read(carom_job_t *j, size_t k, size_t *index, const void **data,
                          size_t *len) {
  const seg_t *sg = atomic_load_explicit(&j->hint, memory_order_acquire);
  if (!sg || sg->pos > k) sg = atomic_load_explicit(&j->pub_head, memory_order_acquire);
  if (k - sg->pos >= sg->count) {
    do sg = atomic_load_explicit(&sg->pub_next, memory_order_acquire);
    while (k - sg->pos >= sg->count);
    atomic_store_explicit(&j->hint, sg, memory_order_release);
  }
  size_t off = k - sg->pos;
  if (index) *index = sg->first + off;
  return seg_read(sg, off, data, len);
}

/* The calling thread is not the owner (seen: claim_owner as read): take
 * ownership of an unowned job, else make it shared, or wait until the thread
 * making it shared has, before claiming by CAS. */
static void claim_share(carom_job_t *j, const void *seen) {
  bool mb = carom__mb_registered(CAROM__MB_PRIVATE);
  for (;;) {
    if (seen == CLAIM_SHARED || seen == &claim_token) return;
    if (seen == CLAIM_SHARING) { /* another thread is making it shared */
      sched_yield();
      seen = atomic_load_explicit(&j->claim_owner, memory_order_acquire);
      continue;
    }
    if (seen == NULL) {
      if (atomic_compare_exchange_strong(&j->claim_owner, &seen, mb ? &claim_token : CLAIM_SHARED))
        return;
      continue; /* another thread took it first: seen is now that thread */
    }
    if (atomic_compare_exchange_strong(&j->claim_owner, &seen, CLAIM_SHARING)) {
      /* The membarrier stands in for the owner's missing fence. An owner
       * exists, so this process registered, unless it is a fork()ed child
       * of the one that did (the owner is then the thread that forked):
       * register now (slow with several threads, and rare), or take the
       * global membarrier, which needs no registration. */
      if ((!carom__mb_register(CAROM__MB_PRIVATE) ||
           syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) &&
          syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) != 0)
        carom__die("pool: a second consumer of a job needs membarrier(2) (%s)", strerror(errno));
      pid_t me = carom__self_pid();
      while (atomic_load_explicit(&j->owner_busy, memory_order_acquire) == me) sched_yield();
      atomic_store_explicit(&j->claim_owner, CLAIM_SHARED, memory_order_release);
      return;
    }
  }
}

/* Take next_claim's value if that item is ready (owner: plain stores;
 * shared: CAS): below norder_pub for an unordered job, published for the
 * others. Returns 1 with *k when taken, else 0 with *k the value seen. */
static int claim(carom_job_t *j, size_t *k) {
  _Atomic size_t *ctr = &j->next_claim;
  const _Atomic size_t *limit = j->unordered ? &j->norder_pub : NULL;
  size_t n = j->n;
  /* acquire: a CLAIM_SHARED read here orders the CAS below after the old
   * owner's last plain store (released through owner_busy and CLAIM_SHARED). */
  const void *o = atomic_load_explicit(&j->claim_owner, memory_order_acquire);
  if (CAROM_UNLIKELY(o != &claim_token && o != CLAIM_SHARED)) {
    claim_share(j, o);
    o = atomic_load_explicit(&j->claim_owner, memory_order_acquire);
  }
  if (o == &claim_token) {
    atomic_store_explicit(&j->owner_busy, carom__self_pid(), memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst); /* compiler only: see above */
    if (CAROM_LIKELY(atomic_load_explicit(&j->claim_owner, memory_order_relaxed) == &claim_token)) {
      size_t v = atomic_load_explicit(ctr, memory_order_relaxed);
      size_t lim = limit ? atomic_load_explicit(limit, memory_order_acquire) : n;
      int took = v < lim && (limit || item_seg(j, v));
      if (took) atomic_store_explicit(ctr, v + 1, memory_order_relaxed);
      atomic_store_explicit(&j->owner_busy, 0, memory_order_release);
      *k = v;
      return took;
    }
    atomic_store_explicit(&j->owner_busy, 0, memory_order_release);
    claim_share(j, atomic_load_explicit(&j->claim_owner, memory_order_acquire));
  }
  size_t v = atomic_load_explicit(ctr, memory_order_relaxed);
  for (;;) {
    size_t lim = limit ? atomic_load_explicit(limit, memory_order_acquire) : n;
    if (v >= lim || (!limit && !item_seg(j, v))) break;
    if (atomic_compare_exchange_weak_explicit(ctr, &v, v + 1, memory_order_relaxed,
                                              memory_order_relaxed)) {
      *k = v;
      return 1;
    }
  }
  *k = v;
  return 0;
}

/* One claim attempt: 1 and the item when one was taken, 0 when none has ended
 * yet, CAROM_EEOF when every item was taken. */
static int next_try(carom_job_t *j, size_t *index, const void **data, size_t *len, int *rc) {
  size_t k;
  if (!claim(j, &k)) return k >= j->n ? CAROM_EEOF : 0;
  if (j->unordered) {
    *rc = unordered_read(j, k, index, data, len);
  } else {
    if (index) *index = k;
    *rc = item_read(j, k, data, len);
  }
  return 1;
}

int carom_job_next(carom_job_t *j, const struct timespec *deadline, size_t *index,
                   const void **data, size_t *len) {
  int rc, r = next_try(j, index, data, len, &rc);
  /* progress is read only when nothing was ready (it is written by the
   * supervisor on every result): read it, then look again, then sleep on it. */
  while (r == 0) {
    uint32_t seen = atomic_load(&j->progress);
    r = next_try(j, index, data, len, &rc);
    if (r != 0) break;
    if (job_sleep(j, seen, deadline) == -ETIMEDOUT && atomic_load(&j->progress) == seen)
      return -ETIMEDOUT;
    r = next_try(j, index, data, len, &rc);
  }
  return r == 1 ? rc : r;
}

int carom_job_pids(carom_job_t *j, pid_t *pids, int max) {
  pthread_mutex_lock(&j->mu);
  int n = j->npids < max ? j->npids : max;
  for (int i = 0; i < n; i++) pids[i] = j->pids[i];
  pthread_mutex_unlock(&j->mu);
  return n;
}

/* Ask the supervisor to act on j's cancel/terminate flags. j->pool is valid
 * while j is not done; a pool is only freed after all its jobs are done. */
static int job_request(carom_job_t *j) {
  carom_pool_t *p = j->pool;
  if (atomic_load(&j->done)) return -EBUSY;
  if (!pool_mine(p)) return CAROM_EFORKED;
  atomic_store(&j->cancel_req, true);
  atomic_fetch_add(&p->cancel_epoch, 1);
  sup_wake(p);
  return 0;
}

int carom_job_cancel(carom_job_t *j) {
  if (!j) return -EINVAL;
  if (atomic_load(&j->accepted) && j->n == 1) return -EBUSY;
  return job_request(j);
}

int carom_job_terminate(carom_job_t *j, int signum) {
  if (!j || signum <= 0 || signum >= NSIG) return -EINVAL;
  atomic_store(&j->term_sig, signum);
  return job_request(j);
}

void carom_job_release(carom_job_t *j) {
  if (j) job_unref(j);
}

/* ------------------------------------------------------------ lifecycle */

int carom_pool_close(carom_pool_t *p) {
  if (!p) return -EINVAL;
  if (!pool_mine(p)) return CAROM_EFORKED;
  pthread_mutex_lock(&p->mu);
  if (p->state == POOL_RUN) p->state = POOL_CLOSE;
  pthread_mutex_unlock(&p->mu);
  backlog_bump(p); /* submitters waiting for room now get CAROM_ECLOSED */
  sup_wake(p);
  return 0;
}

static int wait_supervisor(carom_pool_t *p, const struct timespec *deadline) {
  if (!p->sup_started) return 0;
  while (!atomic_load(&p->sup_exited)) {
    int r = carom__futex_wait(&p->sup_exited, 0, deadline);
    if (r == -ETIMEDOUT && !atomic_load(&p->sup_exited)) return -ETIMEDOUT;
  }
  pthread_join(p->sup, NULL);
  p->sup_started = false;
  return 0;
}

int carom_pool_terminate(carom_pool_t *p) {
  if (!p) return -EINVAL;
  if (!pool_mine(p)) return CAROM_EFORKED;
  pthread_mutex_lock(&p->mu);
  p->state = POOL_TERMINATE;
  pthread_mutex_unlock(&p->mu);
  backlog_bump(p);
  sup_wake(p);
  return wait_supervisor(p, NULL);
}

int carom_pool_shutdown(carom_pool_t *p, const struct timespec *grace, bool cancel_pending) {
  if (!p) return -EINVAL;
  if (!pool_mine(p)) return CAROM_EFORKED;
  pthread_mutex_lock(&p->mu);
  if (p->state == POOL_RUN || p->state == POOL_CLOSE) {
    if (p->state == POOL_RUN) p->state = POOL_CLOSE;
    uint64_t g = grace ? carom__ts_ns(grace) : UINT64_MAX;
    if (!p->shutting_down || g < p->grace_ns) p->grace_ns = g;
    p->shutting_down = true;
    p->shutdown_cancel |= cancel_pending;
  }
  pthread_mutex_unlock(&p->mu);
  backlog_bump(p);
  sup_wake(p);
  return wait_supervisor(p, NULL);
}

int carom_pool_terminate_job(carom_pool_t *p, pid_t pid, int sig) {
  if (!p || sig <= 0 || sig >= NSIG) return -EINVAL;
  if (!pool_mine(p)) return CAROM_EFORKED;
  bool found = false;
  for (unsigned i = 0; i < p->nslots; i++)
    found |= pid > 0 && atomic_load(&pool_slot(p->shm, i)->pid) == pid;
  if (!found) return -ESRCH;
  pthread_mutex_lock(&p->mu);
  int rc = 0;
  if (p->nkills == (int)(sizeof p->kills / sizeof p->kills[0])) rc = -EAGAIN;
  else p->kills[p->nkills++] = (struct kill_req){pid, sig};
  atomic_store(&p->kill_flag, true);
  pthread_mutex_unlock(&p->mu);
  sup_wake(p);
  return rc;
}

int carom_pool_join(carom_pool_t *p, const struct timespec *deadline) {
  if (!p) return -EINVAL;
  if (!pool_mine(p)) return CAROM_EFORKED;
  pthread_mutex_lock(&p->mu);
  int st = p->state;
  pthread_mutex_unlock(&p->mu);
  if (st == POOL_RUN) return -EINVAL;
  return wait_supervisor(p, deadline);
}

int carom_pool_workers(carom_pool_t *p, pid_t *pids, int max) {
  if (!p || (max && !pids)) return -EINVAL;
  if (!pool_mine(p)) return CAROM_EFORKED;
  int n = 0;
  for (unsigned i = 0; i < p->nslots && n < max; i++) {
    pid_t pid = (pid_t)atomic_load(&pool_slot(p->shm, i)->pid);
    if (pid > 0) pids[n++] = pid;
  }
  return n;
}

void carom_pool_free(carom_pool_t *p) {
  if (!p) return;
  carom_pool_t *me = p;
  if (atomic_compare_exchange_strong(&sig_pool, &me, NULL)) {
    if (p->opts.signals & CAROM_POOL_SIGINT_TERMINATE) sigaction(SIGINT, &sig_old_int, NULL);
    if (p->opts.signals & CAROM_POOL_SIGTERM_SHUTDOWN) sigaction(SIGTERM, &sig_old_term, NULL);
  }
  if (pool_mine(p)) {
    if (p->sup_started) {
      pthread_mutex_lock(&p->mu);
      int st = p->state;
      pthread_mutex_unlock(&p->mu);
      if (st == POOL_RUN) carom_pool_terminate(p);
      else {
        struct timespec ts;
        if (wait_supervisor(p, carom_deadline(5, &ts)) == -ETIMEDOUT) carom_pool_terminate(p);
      }
    }
    /* A submitter still copying a job's items (another thread, racing
     * this free) finishes its copy first: it wakes the supervisor through
     * the shared region. The copy never waits on anything. */
    while (atomic_load_explicit(&p->copying, memory_order_acquire)) sched_yield();
    /* Closing the socket tells the template to kill what is left and exit. */
    if (p->sock >= 0) close(p->sock);
    p->sock = -1;
    if (p->tpl_pid > 0) {
      /* The template gets up to 2 s to kill its workers and leave. */
      bool gone = false;
      if (p->tpl_pidfd >= 0) {
        struct pollfd pf = {p->tpl_pidfd, POLLIN, 0};
        gone = poll(&pf, 1, 2000) == 1;
      } else { /* no pidfd: poll its status */
        uint64_t until = carom_now_ns() + 2000000000ull;
        while (!gone && carom_now_ns() < until) {
          pid_t r = waitpid(p->tpl_pid, NULL, WNOHANG);
          if (r == p->tpl_pid || (r < 0 && errno == ECHILD)) {
            gone = true;
            p->tpl_pid = 0;
          } else {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
          }
        }
      }
      if (p->tpl_pid > 0) {
        if (!gone) kill(p->tpl_pid, SIGKILL);
        while (waitpid(p->tpl_pid, NULL, 0) < 0 && errno == EINTR) {
        }
      }
    }
  }
  if (p->tpl_pidfd >= 0) close(p->tpl_pidfd);
  if (p->sock >= 0) close(p->sock);
  if (p->epfd >= 0) close(p->epfd);
  if (p->evfd >= 0) close(p->evfd);
  for (unsigned i = 0; p->slots && i < p->nslots; i++) {
    if (p->slots[i].pidfd >= 0) close(p->slots[i].pidfd);
    free(p->slots[i].fifo);
    free(p->slots[i].rbuf);
    free(p->slots[i].lens);
  }
  /* Jobs still queued (never reached the supervisor) */
  while (p->sub_head) {
    carom_job_t *j = p->sub_head;
    p->sub_head = j->next_sub;
    job_unref(j);
  }
  free(p->slots);
  if (p->shm) munmap(p->shm, p->shm_size);
  free(p->tpl_q);
  carom__pool_objtab_free(p->xtab);
  free(p->initarg_copy);
  pthread_mutex_destroy(&p->xmu);
  pthread_mutex_destroy(&p->mu);
  free(p);
}
