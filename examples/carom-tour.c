/* examples/carom-tour.c — one short, checked use of every carom module, in the
 * order docs/API.md presents them. Built with the project and run by ctest
 * (test "examples.tour"), so the guide's code stays true. Exit 0 = all good. */
#include <carom/carom.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(expr)                                                                   \
  do {                                                                                \
    int rc_ = (expr);                                                                 \
    if (rc_ < 0) {                                                                    \
      fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #expr, carom_err_name(rc_)); \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

/* ---- sync + shm: a locked counter and a lock-free one, shared by fork ---- */
static void tour_value(void) {
  carom_value_t *locked, *atomic;
  int64_t zero = 0;
  CHECK(carom_value_create('q', &zero, NULL, &locked));  /* own RLock */
  CHECK(carom_rawvalue_create('q', &zero, NULL, &atomic)); /* no lock */
  for (int k = 0; k < 4; k++)
    if (fork() == 0) {
      for (int i = 0; i < 10000; i++) {
        carom_value_acquire(locked, NULL);
        int64_t v;
        carom_value_get_locked(locked, &v);
        v++;
        carom_value_set_locked(locked, &v);
        carom_value_release(locked);
        carom_value_fetch_add(atomic, 1, NULL);
      }
      _exit(0);
    }
  for (int k = 0; k < 4; k++) wait(NULL);
  int64_t a, b;
  CHECK(carom_value_get(locked, &a));
  CHECK(carom_value_atomic_load(atomic, &b));
  printf("value: locked %lld, atomic %lld (expected 40000 each)\n", (long long)a, (long long)b);
  if (a != 40000 || b != 40000) exit(1);
  carom_value_free(locked);
  carom_value_free(atomic);
}

/* ---- ipc: a Queue between processes ---- */
static void tour_queue(void) {
  carom_queue_opts_t o = {.size = sizeof o, .maxsize = 64, .max_item = 256};
  carom_queue_t *q;
  CHECK(carom_queue_create(&o, &q));
  if (fork() == 0) {
    for (int i = 0; i < 1000; i++) carom_queue_put(q, &i, sizeof i, NULL);
    _exit(0);
  }
  long sum = 0;
  for (int i = 0; i < 1000; i++) {
    int v;
    struct timespec ts;
    ssize_t n = carom_queue_get(q, &v, sizeof v, carom_deadline(10, &ts));
    CHECK((int)n);
    sum += v;
  }
  wait(NULL);
  printf("queue: 1000 items, sum %ld (expected 499500)\n", sum);
  if (sum != 499500) exit(1);
  carom_queue_free(q);
}

/* ---- ipc: a duplex Pipe ---- */
static void tour_pipe(void) {
  carom_conn_t *a, *b;
  CHECK(carom_conn_create_pipe(1, NULL, &a, &b));
  if (fork() == 0) {
    carom_conn_free(a);
    void *msg;
    ssize_t n = carom_conn_recv_bytes(b, 0, &msg, NULL);
    if (n >= 0) carom_conn_send_bytes(b, msg, (size_t)n, 0, (size_t)n, NULL);
    _exit(n >= 0 ? 0 : 1);
  }
  carom_conn_free(b);
  CHECK(carom_conn_send_bytes(a, "ping", 4, 0, 4, NULL));
  void *reply;
  struct timespec ts;
  ssize_t n = carom_conn_recv_bytes(a, 0, &reply, carom_deadline(10, &ts));
  CHECK((int)n);
  printf("pipe: echoed %.*s\n", (int)n, (const char *)reply);
  if (n != 4 || memcmp(reply, "ping", 4)) exit(1);
  free(reply);
  wait(NULL);
  carom_conn_free(a);
}

/* ---- proc: a Process under the spawn start method ---- */
static int child_main(const void *arg, size_t len) { return len == 2 && !memcmp(arg, "hi", 2) ? 7 : 1; }
CAROM_ENTRY(child_main, child_main)

static void tour_process(void) {
  carom_context_t *ctx;
  CHECK(carom_get_context("spawn", &ctx));
  carom_process_opts_t o = {.size = sizeof o, .target = child_main, .arg = "hi", .arg_len = 2,
                            .ctx = ctx};
  carom_process_t *p;
  CHECK(carom_process_create(&o, &p));
  CHECK(carom_process_start(p));
  struct timespec ts;
  CHECK(carom_process_join(p, carom_deadline(30, &ts)));
  int code = -1;
  CHECK(carom_process_exitcode(p, &code));
  printf("process: spawned child exited with %d (expected 7)\n", code);
  if (code != 7) exit(1);
  carom_process_free(p);
}

/* ---- pool: map, and a task that fails ---- */
static int cube(carom_task_ctx_t *ctx, const void *arg, size_t len) {
  int64_t x;
  if (len != sizeof x) return carom_task_fail(ctx, -EINVAL, "want an int64");
  memcpy(&x, arg, sizeof x);
  x = x * x * x;
  return carom_task_return(ctx, &x, sizeof x);
}

static void tour_pool(const char *start_method) {
  carom_pool_opts_t o = {.size = sizeof o, .processes = 2, .timeout = 5.0,
                         .start_method = start_method};
  carom_pool_t *pool;
  CHECK(carom_pool_create(&o, &pool));
  int64_t xs[100];
  struct iovec items[100];
  for (int i = 0; i < 100; i++) xs[i] = i, items[i] = (struct iovec){&xs[i], sizeof xs[i]};
  carom_job_t *job;
  CHECK(carom_pool_map(pool, cube, items, 100, 0, &job));
  int64_t sum = 0;
  for (size_t i = 0; i < carom_job_count(job); i++) {
    const void *d;
    size_t n;
    CHECK(carom_job_item(job, i, &d, &n));
    int64_t v;
    memcpy(&v, d, sizeof v);
    sum += v;
  }
  carom_job_release(job);
  int rc = carom_pool_apply(pool, cube, "x", 1, NULL, NULL);
  printf("pool (%s): sum of cubes %lld (expected 24502500); bad argument -> %s\n",
         start_method, (long long)sum, carom_err_name(rc));
  if (sum != 24502500 || rc != -EINVAL) exit(1);
  CHECK(carom_pool_close(pool));
  CHECK(carom_pool_join(pool, NULL));
  carom_pool_free(pool);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  tour_value();
  tour_queue();
  tour_pipe();
  tour_process();
  tour_pool("fork");
  tour_pool("forkserver"); /* workers from a fresh exec of this program */
  printf("tour: all good\n");
  return 0;
}
