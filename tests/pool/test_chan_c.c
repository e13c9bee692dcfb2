/* tests/pool/test_chan_c.c — the pool's channel ring (pool/chan.c) driven
 * from C (its header uses C11 atomics), for tests/pool/test_chan.cpp. Each
 * check returns 0, or -1 with a message in err. */
#include "pool/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                          \
  do {                                     \
    snprintf(err, errlen, __VA_ARGS__);    \
    return -1;                             \
  } while (0)

static uint8_t byte_at(uint64_t msg, size_t k) { return (uint8_t)(msg * 131 + k * 7 + (k >> 8)); }

static chan_t *chan_new(uint64_t cap) {
  chan_t *c = aligned_alloc(CAROM_CACHELINE, sizeof(chan_t) + cap);
  if (!c) return NULL;
  chan_init(c, sizeof(chan_t), cap);
  return c;
}

/* Write message `id` of `len` bytes (all at once, or false when full). */
static bool put(chan_t *c, uint64_t id, size_t len, size_t *progress, uint8_t *buf) {
  for (size_t k = 0; k < len; k++) buf[k] = byte_at(id, k);
  struct iovec iov = {buf, len};
  return chan_write(c, &iov, 1, len, progress);
}

/* Read one whole message into buf; its length, or -1 when none is complete
 * (frames already taken stay taken: *got counts them). */
static long take(chan_t *c, uint8_t *buf, size_t *got) {
  for (;;) {
    const frame_t *f = chan_peek(c);
    if (!f) return -1;
    if (f->flags & FR_FIRST) *got = 0;
    memcpy(buf + *got, f + 1, f->len);
    *got += f->len;
    bool last = f->flags & FR_LAST;
    chan_consume(c, f);
    if (last) {
      long n = (long)*got;
      *got = 0;
      return n;
    }
  }
}

static int check(uint64_t id, const uint8_t *buf, long n, size_t want, char *err, size_t errlen) {
  if (n != (long)want) FAIL("message %llu: %ld bytes, want %zu", (unsigned long long)id, n, want);
  for (size_t k = 0; k < want; k++)
    if (buf[k] != byte_at(id, k)) FAIL("message %llu: byte %zu wrong", (unsigned long long)id, k);
  return 0;
}

/* Small messages keep to the first CHAN_SOFT bytes of a larger ring (the
 * bytes past lim + one PAD header are never written), through many wraps
 * with the consumer lagging by up to a full ring; the first frame over a
 * quarter of lim lifts the limit, and the ring then carries messages of
 * every size, multi-frame ones included, intact. */
int carom_test_chan_soft_limit(char *err, size_t errlen) {
  const uint64_t cap = 1 << 18;
  chan_t *c = chan_new(cap);
  uint8_t *out = malloc(1 << 20), *in = malloc(1 << 20);
  if (!c || !out || !in) FAIL("out of memory");
  memset(chan_data(c), 0xA5, cap);
  uint64_t wid = 0, rid = 0;
  size_t lens[64], got = 0;
  size_t len = 0, progress = 0; /* the message being written (a full ring splits it) */
  srand(7);
  int rc = 0;
  for (int round = 0; round < 4000 && !rc; round++) {
    /* produce a burst until full, then consume part of it */
    int burst = 1 + rand() % 40;
    for (int b = 0; b < burst; b++) {
      if (wid - rid == 63) break;
      if (!len) len = 1 + (size_t)rand() % 3000;
      lens[wid % 64] = len;
      if (!put(c, wid, len, &progress, out)) break;
      wid++;
      len = progress = 0;
    }
    int drain = rand() % 2 ? (int)(wid - rid) : (int)(wid - rid) / 2;
    for (int d = 0; d < drain && !rc; d++, rid++) {
      long n = take(c, in, &got);
      if (n < 0) FAIL("message %llu missing", (unsigned long long)rid);
      rc = check(rid, in, n, lens[rid % 64], err, errlen);
    }
  }
  if (rc) return rc;
  while (len) { /* finish the one mid-write */
    if (put(c, wid, len, &progress, out)) {
      wid++;
      len = 0;
    } else {
      long n = take(c, in, &got);
      if (n >= 0) {
        if (check(rid, in, n, lens[rid % 64], err, errlen)) return -1;
        rid++;
      }
    }
  }
  if (c->lim != CHAN_SOFT) FAIL("lim %llu after small messages", (unsigned long long)c->lim);
  const uint8_t *d = (const uint8_t *)chan_data(c);
  for (uint64_t k = CHAN_SOFT + sizeof(frame_t); k < cap; k++)
    if (d[k] != 0xA5) FAIL("byte %llu past the soft limit written", (unsigned long long)k);
  while (rid < wid) { /* drain */
    long n = take(c, in, &got);
    if (n < 0 || check(rid, in, n, lens[rid % 64], err, errlen))
      FAIL("drain %llu", (unsigned long long)rid);
    rid++;
  }
  /* Large and multi-frame messages from now on: lim lifts to cap. */
  for (int k = 0; k < 3000; k++) {
    len = k % 3 == 0 ? 20000 + (size_t)rand() % 50000 : k % 3 == 1 ? 1 + (size_t)rand() % 500
                                                                 : 100000 + (size_t)rand() % 400000;
    progress = 0;
    for (int e = 0; e < 1000000; e++) { /* interleave: write what fits, read what is there */
      if (put(c, wid, len, &progress, out)) break;
      long n = take(c, in, &got);
      if (n >= 0) FAIL("a message completed while the writer was mid-message");
    }
    long n = take(c, in, &got);
    if (n < 0 || check(wid, in, n, len, err, errlen)) FAIL("large message %d", k);
    wid++;
    rid++;
  }
  if (c->lim != cap) FAIL("lim %llu after large frames", (unsigned long long)c->lim);
  free(c);
  free(out);
  free(in);
  return 0;
}

/* A producer thread and a consumer thread, random sizes from 1 byte to past
 * a quarter of the ring (several frames), the soft limit lifting midway:
 * every message arrives whole and in order. */
struct pc {
  chan_t *c;
  int n;
  char *err;
  size_t errlen;
};

static size_t size_of(uint64_t id) {
  uint64_t h = id * 0x9E3779B97F4A7C15ull;
  if (id < 20000) return 1 + (h >> 40) % 2000;   /* small: soft limit holds */
  return (h >> 40) % 5 == 0 ? 1 + (h >> 20) % 150000 : 1 + (h >> 40) % 4000;
}

static void *producer(void *arg) {
  struct pc *a = arg;
  uint8_t *buf = malloc(200000);
  for (int id = 0; id < a->n; id++) {
    size_t progress = 0, len = size_of((uint64_t)id);
    while (!put(a->c, (uint64_t)id, len, &progress, buf)) sched_yield();
  }
  free(buf);
  return NULL;
}

int carom_test_chan_threads(char *err, size_t errlen) {
  struct pc a = {chan_new(1 << 18), 60000, err, errlen};
  uint8_t *in = malloc(200000);
  if (!a.c || !in) FAIL("out of memory");
  pthread_t t;
  if (pthread_create(&t, NULL, producer, &a) != 0) FAIL("pthread_create");
  size_t got = 0;
  int rc = 0;
  for (int id = 0; id < a.n && !rc; id++) {
    long n;
    while ((n = take(a.c, in, &got)) < 0) sched_yield();
    rc = check((uint64_t)id, in, n, size_of((uint64_t)id), err, errlen);
  }
  pthread_join(t, NULL);
  free(a.c);
  free(in);
  return rc;
}
