/* examples/carom-demo.c — the README's main job: a short tour of what carom
 * offers today, with the outcome of each step printed. It grows with every
 * layer (the pool demo lands with pool/). */
#include <carom/carom.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
  carom_lock_t lock;
  uint64_t counter;
  volatile int holding;
} demo_shared_t;

static void *shared_map(size_t n) {
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  return p;
}

/* ---- pool tasks: plain C functions run in worker processes ---- */

static int slow_square(carom_task_ctx_t *ctx, const void *arg, size_t len) {
  int64_t x;
  if (len != sizeof x) return carom_task_fail(ctx, -EINVAL, "expected an int64, got %zu bytes", len);
  memcpy(&x, arg, sizeof x);
  usleep(2000); /* some work */
  x *= x;
  return carom_task_return(ctx, &x, sizeof x);
}

static int parse_positive(carom_task_ctx_t *ctx, const void *arg, size_t len) {
  int v = atoi((const char *)arg);
  if (v <= 0) return carom_task_fail(ctx, -EINVAL, "'%.*s' is not a positive number", (int)len, (const char *)arg);
  return carom_task_return(ctx, &v, sizeof v);
}

static int sleep_forever(carom_task_ctx_t *ctx, const void *arg, size_t len) {
  (void)ctx, (void)arg, (void)len;
  for (;;) pause();
  return 0;
}

static void pool_demo(void) {
  carom_pool_opts_t o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.processes = 2;
  carom_pool_t *pool;
  int rc = carom_pool_create(&o, &pool);
  if (rc) {
    printf("[pool]  create failed: %s\n", carom_strerror(rc));
    return;
  }

  /* 1. imap over 400 items with a progress line. */
  enum { N = 400 };
  static int64_t xs[N];
  static struct iovec items[N];
  for (int i = 0; i < N; i++) xs[i] = i, items[i] = (struct iovec){&xs[i], sizeof xs[i]};
  carom_job_t *job;
  uint64_t t0 = carom_now_ns();
  carom_pool_imap(pool, slow_square, items, N, 4, true, &job);
  int64_t sum = 0;
  size_t idx, got = 0;
  const void *d;
  size_t n;
  while ((rc = carom_job_next(job, NULL, &idx, &d, &n)) != CAROM_EEOF) {
    if (rc == 0) {
      int64_t v;
      memcpy(&v, d, sizeof v);
      sum += v;
    }
    if ((++got % 40 == 0 || got == N) && isatty(STDOUT_FILENO)) {
      printf("\r[pool]  imap of %d tasks (2 ms each) on 2 workers: %3zu/%d done", N, got, N);
      fflush(stdout);
    }
  }
  if (!isatty(STDOUT_FILENO)) printf("[pool]  imap of %d tasks (2 ms each) on 2 workers: %zu/%d done", N, got, N);
  printf(" - sum of squares = %lld (%s) in %.0f ms\n", (long long)sum,
         sum == (int64_t)(N - 1) * N * (2 * N - 1) / 6 ? "correct" : "WRONG",
         (double)(carom_now_ns() - t0) / 1e6);
  carom_job_release(job);

  /* 2. A task that fails: its error code and message reach the caller. */
  carom_pool_apply_async(pool, parse_positive, "-7", 3, NULL, &job);
  rc = carom_job_get(job, NULL, &d, &n);
  printf("[pool]  task parse_positive(\"-7\") -> %s: %s\n", carom_err_name(rc), (const char *)d);
  carom_job_release(job);

  /* 3. A worker killed with SIGKILL in the middle of its task. */
  carom_job_t *victim, *bystander;
  carom_pool_apply_async(pool, sleep_forever, NULL, 0, NULL, &victim);
  int64_t x = 12;
  carom_pool_apply_async(pool, slow_square, &x, sizeof x, NULL, &bystander);
  while (!carom_job_accepted(victim)) usleep(1000);
  pid_t pid;
  carom_job_pids(victim, &pid, 1);
  kill(pid, SIGKILL);
  uint64_t k = carom_now_ns();
  rc = carom_job_get(victim, NULL, &d, &n);
  printf("[pool]  worker %d SIGKILLed mid-task -> its task: %s (%s) after %.1f ms\n", (int)pid,
         carom_err_name(rc), (const char *)d, (double)(carom_now_ns() - k) / 1e6);
  rc = carom_job_get(bystander, NULL, &d, &n);
  int64_t v = 0;
  if (rc == 0) memcpy(&v, d, sizeof v);
  printf("[pool]  the other task still completed: slow_square(12) = %lld (%s)\n", (long long)v,
         carom_err_name(rc));
  carom_job_release(victim);
  carom_job_release(bystander);
  pid_t pids[4];
  int nw = carom_pool_workers(pool, pids, 4);
  void *res;
  size_t rlen;
  x = 9;
  rc = carom_pool_apply(pool, slow_square, &x, sizeof x, &res, &rlen);
  if (rc == 0) {
    memcpy(&v, res, sizeof v);
    free(res);
  }
  printf("[pool]  pool keeps serving: %d workers alive, slow_square(9) = %lld (%s)\n", nw,
         (long long)v, carom_err_name(rc));
  carom_pool_close(pool);
  carom_pool_join(pool, NULL);
  carom_pool_free(pool);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0); /* children print too: one line at a time */
  printf("carom demo\n==========\n");

  /* 1. A Lock shared by 4 processes: exact count. */
  demo_shared_t *s = shared_map(sizeof *s);
  carom_lock_init(&s->lock);
  const int procs = 4, iters = 100000;
  uint64_t t0 = carom_now_ns();
  for (int p = 0; p < procs; p++)
    if (fork() == 0) {
      for (int i = 0; i < iters; i++) {
        carom_lock_acquire(&s->lock, NULL);
        s->counter++;
        carom_lock_release(&s->lock);
      }
      _exit(0);
    }
  for (int p = 0; p < procs; p++) wait(NULL);
  printf("[lock]  %d processes x %d increments under one carom Lock: counter = %llu (%s), %.1f ms\n",
         procs, iters, (unsigned long long)s->counter,
         s->counter == (uint64_t)procs * iters ? "exact" : "WRONG",
         (double)(carom_now_ns() - t0) / 1e6);

  /* 2. The holder is killed with SIGKILL; the next acquirer recovers the lock. */
  pid_t holder = fork();
  if (holder == 0) {
    carom_lock_acquire(&s->lock, NULL);
    s->holding = 1;
    for (;;) pause();
  }
  while (!__atomic_load_n(&s->holding, __ATOMIC_SEQ_CST)) usleep(100);
  kill(holder, SIGKILL);
  uint64_t k = carom_now_ns();
  struct timespec ts;
  int rc = carom_lock_acquire(&s->lock, carom_deadline(5, &ts));
  printf("[lock]  holder pid %d SIGKILLed while holding the lock: next acquire -> %s (%s) after %.1f ms\n",
         (int)holder, carom_err_name(rc), carom_strerror(rc), (double)(carom_now_ns() - k) / 1e6);
  if (rc == CAROM_EOWNERDEAD) {
    carom_lock_consistent(&s->lock); /* state repaired */
    carom_lock_release(&s->lock);
  }
  waitpid(holder, NULL, 0);

  /* 3. Timeouts: a held lock and a 50 ms deadline. */
  carom_lock_acquire(&s->lock, NULL);
  pid_t w = fork();
  if (w == 0) {
    uint64_t a = carom_now_ns();
    int r = carom_lock_acquire(&s->lock, carom_deadline(0.05, &ts));
    printf("[lock]  acquire with a 50 ms timeout on a held lock -> %s after %.1f ms\n",
           carom_err_name(r), (double)(carom_now_ns() - a) / 1e6);
    _exit(0);
  }
  waitpid(w, NULL, 0);
  carom_lock_release(&s->lock);
  munmap(s, sizeof *s);

  pool_demo();
  return 0;
}
