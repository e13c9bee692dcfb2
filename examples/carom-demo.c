/* examples/carom-demo.c — the README's main job: a short tour of what carom
 * offers today, with the outcome of each step printed. It grows with every
 * layer (the pool demo lands with pool/). */
#include <carom/carom.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
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
  return 0;
}
