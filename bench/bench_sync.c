/* bench/bench_sync.c — wake-up latency of the sync/ primitives between two
 * processes: round trips through a pair of Semaphores (against POSIX
 * process-shared sem_t, measured in the same run), a pair of Events, and a
 * Condition with a Lock (against a pthread process-shared mutex+condvar).
 * One round trip = A signals B, B signals back, A sees it. */
#include "bench.h"
#include "carom/sync.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
  carom_sem_t s1, s2;
  carom_event_t e1, e2;
  carom_lock_t lock;
  carom_cond_t cond;
  uint32_t turn; /* condition ping-pong: whose turn (0: parent, 1: child) */
  sem_t p1, p2;
  pthread_mutex_t m;
  pthread_cond_t c;
} shared_t;

static shared_t *shared_new(void) {
  shared_t *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s == MAP_FAILED) abort();
  carom_sem_init(&s->s1, 0);
  carom_sem_init(&s->s2, 0);
  carom_event_init(&s->e1);
  carom_event_init(&s->e2);
  carom_lock_init(&s->lock);
  carom_cond_init(&s->cond, &s->lock);
  sem_init(&s->p1, 1, 0);
  sem_init(&s->p2, 1, 0);
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(&s->m, &ma);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
  pthread_cond_init(&s->c, &ca);
  return s;
}

static void shared_free(shared_t *s) {
  sem_destroy(&s->p1);
  sem_destroy(&s->p2);
  pthread_cond_destroy(&s->c);
  pthread_mutex_destroy(&s->m);
  munmap(s, sizeof *s);
}

enum { K_CAROM_SEM, K_POSIX_SEM, K_EVENT, K_CAROM_COND, K_PTHREAD_COND };

static void one_side(shared_t *s, int kind, int child, uint64_t n) {
  for (uint64_t i = 0; i < n; i++) {
    switch (kind) {
    case K_CAROM_SEM:
      if (child) {
        carom_sem_acquire(&s->s1, NULL);
        carom_sem_release(&s->s2, 1);
      } else {
        carom_sem_release(&s->s1, 1);
        carom_sem_acquire(&s->s2, NULL);
      }
      break;
    case K_POSIX_SEM:
      if (child) {
        while (sem_wait(&s->p1) != 0) {
        }
        sem_post(&s->p2);
      } else {
        sem_post(&s->p1);
        while (sem_wait(&s->p2) != 0) {
        }
      }
      break;
    case K_EVENT: {
      carom_event_t *mine = child ? &s->e1 : &s->e2, *theirs = child ? &s->e2 : &s->e1;
      if (!child) carom_event_set(theirs);
      carom_event_wait(mine, NULL);
      carom_event_clear(mine);
      if (child) carom_event_set(theirs);
      break;
    }
    case K_CAROM_COND:
      carom_lock_acquire(&s->lock, NULL);
      while (s->turn != (uint32_t)child) carom_cond_wait(&s->cond, NULL);
      s->turn = !child;
      carom_cond_notify(&s->cond, 1);
      carom_lock_release(&s->lock);
      break;
    case K_PTHREAD_COND:
      pthread_mutex_lock(&s->m);
      while (s->turn != (uint32_t)child) pthread_cond_wait(&s->c, &s->m);
      s->turn = !child;
      pthread_cond_signal(&s->c);
      pthread_mutex_unlock(&s->m);
      break;
    }
  }
}

/* Microseconds per round trip. */
static double round_trip(shared_t *s, int kind, uint64_t n) {
  s->turn = 0;
  pid_t c = fork();
  if (c < 0) abort();
  if (c == 0) {
    one_side(s, kind, 1, n);
    _exit(0);
  }
  uint64_t t0 = bench_now_ns();
  one_side(s, kind, 0, n);
  uint64_t t1 = bench_now_ns();
  waitpid(c, NULL, 0);
  if (kind == K_CAROM_SEM && (carom_sem_value(&s->s1) || carom_sem_value(&s->s2))) {
    fprintf(stderr, "bench sync: semaphore units left over\n");
    exit(1);
  }
  return (double)(t1 - t0) / 1e3 / (double)n;
}

static void sem_pingpong(bench_ctx_t *ctx) {
  shared_t *s = shared_new();
  const uint64_t n = bench_scale(ctx, 100000);
  char params[64];
  snprintf(params, sizeof params, "{\"round_trips\": %llu}", (unsigned long long)n);
  bench_report(ctx, "sync.sem_pingpong.carom", round_trip(s, K_CAROM_SEM, n), "us/rt", params);
  bench_report(ctx, "sync.sem_pingpong.posix_sem", round_trip(s, K_POSIX_SEM, n), "us/rt", params);
  bench_ratio("sync.sem_pingpong carom/posix (lower is better)", "sync.sem_pingpong.carom",
              "sync.sem_pingpong.posix_sem");
  shared_free(s);
}

static void event_pingpong(bench_ctx_t *ctx) {
  shared_t *s = shared_new();
  const uint64_t n = bench_scale(ctx, 20000);
  char params[64];
  snprintf(params, sizeof params, "{\"round_trips\": %llu}", (unsigned long long)n);
  bench_report(ctx, "sync.event_pingpong.carom", round_trip(s, K_EVENT, n), "us/rt", params);
  shared_free(s);
}

static void cond_pingpong(bench_ctx_t *ctx) {
  shared_t *s = shared_new();
  const uint64_t n = bench_scale(ctx, 20000);
  char params[64];
  snprintf(params, sizeof params, "{\"round_trips\": %llu}", (unsigned long long)n);
  bench_report(ctx, "sync.cond_pingpong.carom", round_trip(s, K_CAROM_COND, n), "us/rt", params);
  bench_report(ctx, "sync.cond_pingpong.pthread_pshared", round_trip(s, K_PTHREAD_COND, n),
               "us/rt", params);
  bench_ratio("sync.cond_pingpong carom/pthread (lower is better)", "sync.cond_pingpong.carom",
              "sync.cond_pingpong.pthread_pshared");
  shared_free(s);
}

CAROM_BENCH("sync", "sync.sem_pingpong", sem_pingpong)
CAROM_BENCH("sync", "sync.event_pingpong", event_pingpong)
CAROM_BENCH("sync", "sync.cond_pingpong", cond_pingpong)
