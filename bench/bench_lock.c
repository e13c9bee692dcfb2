/* bench/bench_lock.c — carom Lock against a PTHREAD_PROCESS_SHARED pthread
 * mutex, measured in the same run: uncontended acquire+release (ns per pair)
 * and contended increments/s with 2 processes hammering one lock. */
#include "bench.h"
#include "carom/sync.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
  carom_lock_t lock;
  char pad1[60];
  pthread_mutex_t mutex;
  char pad2[64];
  volatile uint64_t counter;
  volatile int go;
} shared_t;

static shared_t *shared_new(void) {
  shared_t *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s == MAP_FAILED) abort();
  carom_lock_init(&s->lock);
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(&s->mutex, &a);
  pthread_mutexattr_destroy(&a);
  return s;
}

static void shared_free(shared_t *s) {
  pthread_mutex_destroy(&s->mutex);
  munmap(s, sizeof *s);
}

static void lock_uncontended(bench_ctx_t *ctx) {
  shared_t *s = shared_new();
  const uint64_t n = bench_scale(ctx, 20000000);
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    carom_lock_acquire(&s->lock, NULL);
    s->counter++;
    carom_lock_release(&s->lock);
  }
  uint64_t t1 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    pthread_mutex_lock(&s->mutex);
    s->counter++;
    pthread_mutex_unlock(&s->mutex);
  }
  uint64_t t2 = bench_now_ns();
  char params[64];
  snprintf(params, sizeof params, "{\"pairs\": %llu}", (unsigned long long)n);
  bench_report(ctx, "lock.uncontended.carom", (double)(t1 - t0) / (double)n, "ns/pair", params);
  bench_report(ctx, "lock.uncontended.pthread_pshared", (double)(t2 - t1) / (double)n, "ns/pair",
               params);
  bench_ratio("lock.uncontended carom/pthread (lower is better)", "lock.uncontended.carom",
              "lock.uncontended.pthread_pshared");
  shared_free(s);
}

/* 2 processes increment a shared counter under the lock for a fixed count each.
 * Returns increments per second across both. */
static double contended(shared_t *s, int use_pthread, uint64_t per_proc) {
  s->counter = 0;
  s->go = 0;
  pid_t kids[2];
  for (int k = 0; k < 2; k++) {
    kids[k] = fork();
    if (kids[k] == 0) {
      while (!__atomic_load_n(&s->go, __ATOMIC_ACQUIRE)) {
      }
      for (uint64_t i = 0; i < per_proc; i++) {
        if (use_pthread) {
          pthread_mutex_lock(&s->mutex);
          s->counter++;
          pthread_mutex_unlock(&s->mutex);
        } else {
          carom_lock_acquire(&s->lock, NULL);
          s->counter++;
          carom_lock_release(&s->lock);
        }
      }
      _exit(0);
    }
  }
  uint64_t t0 = bench_now_ns();
  __atomic_store_n(&s->go, 1, __ATOMIC_RELEASE);
  for (int k = 0; k < 2; k++) waitpid(kids[k], NULL, 0);
  uint64_t t1 = bench_now_ns();
  if (s->counter != 2 * per_proc) {
    fprintf(stderr, "bench lock: lost increments (%llu of %llu)\n",
            (unsigned long long)s->counter, (unsigned long long)(2 * per_proc));
    exit(1);
  }
  return (double)(2 * per_proc) / ((double)(t1 - t0) / 1e9);
}

static void lock_contended(bench_ctx_t *ctx) {
  shared_t *s = shared_new();
  const uint64_t n = bench_scale(ctx, 5000000);
  char params[64];
  snprintf(params, sizeof params, "{\"procs\": 2, \"per_proc\": %llu}", (unsigned long long)n);
  bench_report(ctx, "lock.contended2.carom", contended(s, 0, n), "incr/s", params);
  bench_report(ctx, "lock.contended2.pthread_pshared", contended(s, 1, n), "incr/s", params);
  bench_ratio("lock.contended2 carom/pthread (higher is better)", "lock.contended2.carom",
              "lock.contended2.pthread_pshared");
  shared_free(s);
}

CAROM_BENCH("lock", "lock.uncontended", lock_uncontended)
CAROM_BENCH("lock", "lock.contended2", lock_contended)
