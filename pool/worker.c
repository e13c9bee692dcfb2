/* pool/worker.c — the worker process: takes task messages from its down chan,
 * runs them, writes results to its up chan, and spins briefly before it
 * sleeps so a busy pool moves tasks without syscalls.
 *
 * Crash contract with the supervisor: `started` is raised (release) before a
 * message's first item runs and `item` tracks the running item, so after a
 * death the supervisor can tell started work (lost) from unstarted work
 * (re-dispatched). A result is visible only once its last frame is published.
 */
#include "pool/internal.h"
#include "proc/internal.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>

struct carom_task_ctx {
  carom__wbuf_t *out; /* the result message being built */
  size_t start; /* where the running item's result bytes begin in it */
  char err[ERRMSG_MAX];
  bool has_err;
  slot_t *slot;
  uint64_t seq; /* the running message */
  void (*volatile hook)(void *);
  void *volatile hook_arg;
};

/* The worker's one task context, for the SIGUSR1 (soft limit) handler. */
static carom_task_ctx_t *volatile soft_ctx;

static void on_sigusr1(int sig) {
  (void)sig;
  int saved = errno;
  carom_task_ctx_t *c = soft_ctx;
  if (c && c->hook) c->hook(c->hook_arg);
  errno = saved;
}

bool carom_task_soft_expired(carom_task_ctx_t *ctx) {
  return atomic_load_explicit(&ctx->slot->soft_seq, memory_order_relaxed) == ctx->seq + 1;
}

void carom_task_on_soft_timeout(carom_task_ctx_t *ctx, void (*hook)(void *), void *arg) {
  ctx->hook = NULL;
  ctx->hook_arg = arg;
  ctx->hook = hook;
}

/* Result bytes go straight into the result message: one copy, not two. */
int carom_task_return(carom_task_ctx_t *ctx, const void *data, size_t len) {
  carom__wbuf_t *o = ctx->out;
  if (len > o->cap - o->len && !carom__wreserve(o, len)) {
    o->oom = false; /* the buffer is intact: the task fails, the worker goes on */
    return -ENOMEM;
  }
  unsigned char *dst = o->p + o->len;
  if (len >= 8 && len <= 16) { /* small results: two overlapping moves, no call */
    memcpy(dst, data, 8);
    memcpy(dst + len - 8, (const char *)data + len - 8, 8);
  } else if (len) {
    memcpy(dst, data, len);
  }
  o->len += len;
  return 0;
}

int carom_task_fail(carom_task_ctx_t *ctx, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
  va_end(ap);
  ctx->has_err = true;
  return code < 0 ? code : CAROM_EREMOTE;
}

void carom__pool_wake_supervisor(pool_shm_t *h, int evfd) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&h->sup_sleep, memory_order_relaxed) &&
      atomic_exchange_explicit(&h->sup_sleep, 0, memory_order_relaxed)) {
    uint64_t one = 1;
    ssize_t w = write(evfd, &one, sizeof one);
    (void)w;
  }
}

enum { WORKER_SPIN = 4000 };
#define REAP_NS 10000000ull

static void reap_orphans(void) {
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}
#define WORKER_SPIN_NS 50000ull

/* After consuming from the down chan: the supervisor may wait to write more. */
static void space_freed(chan_t *c, pool_shm_t *h, int evfd) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&c->prod_wait, memory_order_relaxed) &&
      atomic_exchange_explicit(&c->prod_wait, 0, memory_order_relaxed))
    carom__pool_wake_supervisor(h, evfd);
}

/* Next frame of the down chan, sleeping when none comes for a while. */
static const frame_t *wait_frame(chan_t *c) {
  for (;;) {
    /* Spin about as long as a wake-up would cost (FLOORS.md), then sleep. */
    uint64_t until = 0;
    for (unsigned i = 0;; i++) {
      const frame_t *f = chan_peek(c);
      if (f) return f;
      if ((i & 63) == 0) {
        uint64_t now = carom_now_ns();
        if (!until) until = now + WORKER_SPIN_NS;
        else if (now >= until) break;
      }
      pool_spin_step(i);
    }
    reap_orphans();
    atomic_store_explicit(&c->cons_wait, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* flag before re-check (Dekker with the writer) */
    const frame_t *f = chan_peek(c);
    if (f) {
      atomic_store_explicit(&c->cons_wait, 0, memory_order_relaxed);
      return f;
    }
    carom__futex_wait(&c->cons_wait, 1, NULL);
    atomic_store_explicit(&c->cons_wait, 0, memory_order_relaxed);
  }
}

/* Publish a whole message on the up chan, waiting for space when needed. */
static void send_up(chan_t *c, pool_shm_t *h, int evfd, const void *msg, size_t len) {
  struct iovec iov = {(void *)msg, len};
  size_t progress = 0;
  for (;;) {
    bool done = chan_write(c, &iov, 1, len, &progress);
    carom__pool_wake_supervisor(h, evfd);
    if (done) return;
    for (unsigned i = 0; i < WORKER_SPIN && !chan_write(c, &iov, 1, len, &progress); i++)
      pool_spin_step(i);
    if (progress == len) {
      carom__pool_wake_supervisor(h, evfd);
      return;
    }
    atomic_store_explicit(&c->prod_wait, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (chan_write(c, &iov, 1, len, &progress)) {
      atomic_store_explicit(&c->prod_wait, 0, memory_order_relaxed);
      carom__pool_wake_supervisor(h, evfd);
      return;
    }
    carom__pool_wake_supervisor(h, evfd);
    struct timespec cap;
    carom__futex_wait(&c->prod_wait, 1, carom__deadline_cap(NULL, 50 * 1000000ull, &cap));
    atomic_store_explicit(&c->prod_wait, 0, memory_order_relaxed);
  }
}

/* Leave of our own accord, saying so first (slot_t.last_words). */
static _Noreturn void worker_exit(slot_t *slot, int code) {
  uint64_t w = (uint64_t)(uint32_t)atomic_load_explicit(&slot->pid, memory_order_relaxed) << 32 |
               ((uint32_t)code + 1); /* slot->pid: our own, stored at start-up */
  if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD) w |= BYE_NO_KIDS;
  atomic_store_explicit(&slot->last_words, w, memory_order_release);
  _exit(code);
}

void carom__pool_worker_main(unsigned idx, const struct pool_worker_cfg *cfg) {
  pool_shm_t *h = cfg->shm;
  slot_t *slot = pool_slot(cfg->shm, idx);
  chan_t *down = pool_chan(cfg->shm, slot->down_off);
  chan_t *up = pool_chan(cfg->shm, slot->up_off);
  const carom_pool_opts_t *o = cfg->opts;

  /* The template reset every disposition to default but SIGINT and SIGPIPE
   * (ignored) and blocks SIGCHLD: undo those three, as proc/ children get. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = o->catch_sigint ? SIG_DFL : SIG_IGN;
  sigaction(SIGINT, &sa, NULL);
  sa.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &sa, NULL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  sa.sa_handler = on_sigusr1;
  sigaction(SIGUSR1, &sa, NULL); /* no SA_RESTART: a soft limit interrupts blocking calls */
  /* Orphans of what tasks start are re-parented here, not to init, so they
   * die with the worker (the template kills whatever it inherits). */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  /* Own process group: the terminal's SIGINT does not reach it, and a hard
   * kill can take the worker's descendants with it. */
  setpgid(0, 0);
  atomic_store_explicit(&slot->pid, (int32_t)getpid(), memory_order_relaxed);
  char name[16];
  snprintf(name, sizeof name, "carom-w%u", idx);
  prctl(PR_SET_NAME, name);

  if (o->initializer) {
    char msg[ERRMSG_MAX] = "";
    int r = o->initializer(o->initarg, msg, sizeof msg);
    if (r != 0) {
      if (!msg[0]) snprintf(msg, sizeof msg, "initializer returned %d", r);
      memcpy(slot->errmsg, msg, sizeof msg);
      _exit(EX_INITFAIL);
    }
  }
  msg_t ready = {.kind = MSG_READY, .job_id = 0, .count = 0};
  send_up(up, h, cfg->evfd, &ready, sizeof ready);

  carom_task_ctx_t ctx = {.slot = slot};
  soft_ctx = &ctx;
  carom__wbuf_t in = {0}, out = {0};
  unsigned done_msgs = 0;
  uint64_t last_reap = 0;
  uint64_t last_ref = 0;
  carom_task_fn last_fn = NULL;
  for (;;) {
    const frame_t *f = wait_frame(down);
    const char *msg;
    bool zero_copy = (f->flags & (FR_FIRST | FR_LAST)) == (FR_FIRST | FR_LAST);
    if (zero_copy) {
      msg = (const char *)(f + 1);
    } else { /* reassemble a message that spans frames */
      in.len = 0;
      for (;;) {
        carom__wput(&in, f + 1, f->len);
        if (in.oom) _exit(EX_SETUP);
        bool last = f->flags & FR_LAST;
        chan_consume(down, f);
        space_freed(down, h, cfg->evfd);
        if (last) break;
        f = wait_frame(down);
      }
      msg = (const char *)in.p;
    }
    msg_t hdr;
    memcpy(&hdr, msg, sizeof hdr);
    if ((hdr.kind & MSG_KIND_MASK) == MSG_STOP) worker_exit(slot, 0);
    carom_task_fn fn;
    if (cfg->method == POOL_METHOD_FORK) {
      fn = (carom_task_fn)(uintptr_t)hdr.fn;
    } else { /* exec'd image: the function travels as (object, offset) */
      if (hdr.fn != last_ref) {
        last_fn = carom__pool_fn_resolve(hdr.fn);
        last_ref = hdr.fn;
      }
      fn = last_fn;
    }
    bool in_uniform = hdr.kind & MSG_F_UNIFORM;
    const uint32_t *lens = (const uint32_t *)(msg + sizeof hdr);
    const char *item =
        msg + sizeof hdr + (in_uniform ? 0 : (((size_t)hdr.count * 4 + 7) & ~(size_t)7));

    ctx.seq = hdr.seq;
    ctx.hook = NULL;
    atomic_store_explicit(&slot->item, 0, memory_order_relaxed);
    const uint64_t t_start = carom_now_ns();
    atomic_store_explicit(&slot->started_ns, t_start, memory_order_relaxed);
    atomic_store_explicit(&slot->started, hdr.seq + 1, memory_order_seq_cst);
    uint64_t stop = atomic_load_explicit(&slot->stop_at, memory_order_seq_cst);
    if (stop && hdr.seq + 1 >= stop) _exit(EX_STOPPED); /* a kill is on its way */
    if (hdr.kind & MSG_F_WAKE_ON_START) carom__pool_wake_supervisor(h, cfg->evfd);
    bool skip = atomic_load_explicit(&slot->cancel[hdr.seq % CANCEL_RING],
                                     memory_order_acquire) == hdr.seq + 1;

    /* Result message: header, item_res_t[count], then the bytes. */
    out.len = 0;
    size_t res_off = sizeof(msg_t);
    size_t data_off = res_off + (size_t)hdr.count * sizeof(item_res_t);
    if (!carom__wreserve(&out, data_off)) _exit(EX_SETUP);
    out.len = data_off;
    ctx.out = &out;
    bool uniform = true;
    size_t ulen = 0;
    for (uint32_t k = 0; k < hdr.count; k++) {
      atomic_store_explicit(&slot->item, k, memory_order_relaxed);
      ctx.start = out.len;
      ctx.has_err = false;
      int code;
      if (skip) {
        code = carom_task_fail(&ctx, CAROM_ECANCELLED, "cancelled");
      } else if (!fn) {
        code = carom_task_fail(&ctx, -ENOENT, "task function not found in the worker's image");
      } else {
        code = fn(&ctx, item, in_uniform ? hdr.ulen : lens[k]);
      }
      item += in_uniform ? hdr.ulen : lens[k];
      size_t n = out.len - ctx.start;
      if (code >= 0 && n > UINT32_MAX - 4096) /* lengths travel as 32-bit fields */
        code = carom_task_fail(&ctx, CAROM_EMSGSIZE, "result of %zu bytes is too large", n);
      if (code > 0) code = 0;
      if (code < 0 && code != CAROM_ECANCELLED && carom_task_soft_expired(&ctx)) {
        char why[ERRMSG_MAX];
        snprintf(why, sizeof why, "%s", ctx.has_err ? ctx.err : carom_strerror(code));
        snprintf(ctx.err, sizeof ctx.err, "soft time limit exceeded (%.200s)", why);
        ctx.has_err = true;
        code = CAROM_ESOFTTIMELIMIT;
      }
      if (code < 0) { /* the message replaces whatever the task returned */
        if (!ctx.has_err) snprintf(ctx.err, sizeof ctx.err, "%s", carom_strerror(code));
        out.len = ctx.start;
        n = strlen(ctx.err) + 1;
        carom__wput(&out, ctx.err, n);
        if (out.oom) _exit(EX_SETUP);
      }
      item_res_t r = {code, (uint32_t)n};
      memcpy(out.p + res_off + k * sizeof r, &r, sizeof r);
      if (k == 0) ulen = n;
      uniform &= code == 0 && n == ulen;
    }
    msg_t rh = {.job_id = hdr.job_id, .first = hdr.first,
                .kind = MSG_RESULT | (uniform ? MSG_F_UNIFORM : 0), .count = hdr.count,
                .seq = hdr.seq};
    if (uniform) rh.ulen = ulen;
    uint64_t now = carom_now_ns();
    rh.run_ns = now - t_start;
    rh.start_ns = t_start;
    memcpy(out.p, &rh, sizeof rh);
    ctx.hook = NULL;
    send_up(up, h, cfg->evfd, out.p, out.len);
    /* Reap what tasks left behind (we are their subreaper): at most every
     * REAP_NS while messages flow (a wait4 per message cost tiny tasks ~10%
     * of their rate), and always before sleeping (wait_frame). */
    if (now - last_reap >= REAP_NS) {
      reap_orphans();
      last_reap = now;
    }
    if (zero_copy) {
      chan_consume(down, f);
      space_freed(down, h, cfg->evfd);
    }
    if (o->maxtasksperchild && ++done_msgs >= o->maxtasksperchild) worker_exit(slot, EX_RECYCLE);
  }
}
