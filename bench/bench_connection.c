/* bench/bench_connection.c — carom Connections between two processes against
 * the raw fd they run on, measured in the same run:
 *   - 64-byte ping-pong round trip (µs) over a duplex Pipe (socketpair) vs
 *     write()/read() on a raw socketpair;
 *   - streaming throughput, 64 B and 64 KiB messages (msgs/s and GB/s of
 *     payload), Pipe(duplex) vs a raw socketpair and Pipe(one-way) vs a raw
 *     pipe. The raw sender makes one write() per message and the raw receiver
 *     reads with a 64 KiB buffer — what a hand-written loop without framing
 *     would do. Every received message is checked (count and a tag). */
#include "bench.h"
#include "carom/connection.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what, long v) {
  fprintf(stderr, "bench connection: %s (%ld)\n", what, v);
  exit(1);
}

static void reap(pid_t pid) {
  int st;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st)) die("child failed", pid);
}

static void read_full(int fd, void *p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, (char *)p + got, n - got);
    if (r <= 0) die("raw read", r);
    got += (size_t)r;
  }
}

/* ---- ping-pong ---- */

static double pingpong_carom(uint64_t n) {
  carom_conn_t *a, *b;
  if (carom_conn_create_pipe(1, NULL, &a, &b)) die("pipe", 0);
  pid_t pid = fork();
  if (pid == 0) {
    carom_conn_free(a);
    char buf[64];
    for (uint64_t i = 0; i < n; i++) {
      if (carom_conn_recv_bytes_into(b, buf, 64, 0, NULL, NULL) != 64) _exit(1);
      if (carom_conn_send_bytes(b, buf, 64, 0, 64, NULL)) _exit(2);
    }
    _exit(0);
  }
  carom_conn_free(b);
  char buf[64] = {1};
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    if (carom_conn_send_bytes(a, buf, 64, 0, 64, NULL)) die("send", (long)i);
    if (carom_conn_recv_bytes_into(a, buf, 64, 0, NULL, NULL) != 64) die("recv", (long)i);
  }
  uint64_t t1 = bench_now_ns();
  reap(pid);
  carom_conn_free(a);
  return (double)(t1 - t0) / (double)n / 1000.0;
}

static double pingpong_raw(uint64_t n) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) die("socketpair", 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    char buf[64];
    for (uint64_t i = 0; i < n; i++) {
      read_full(sv[1], buf, 64);
      if (write(sv[1], buf, 64) != 64) _exit(2);
    }
    _exit(0);
  }
  close(sv[1]);
  char buf[64] = {1};
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    if (write(sv[0], buf, 64) != 64) die("write", (long)i);
    read_full(sv[0], buf, 64);
  }
  uint64_t t1 = bench_now_ns();
  reap(pid);
  close(sv[0]);
  return (double)(t1 - t0) / (double)n / 1000.0;
}

static void conn_pingpong(bench_ctx_t *ctx) {
  uint64_t n = bench_scale(ctx, 20000);
  char params[64];
  snprintf(params, sizeof params, "{\"bytes\": 64, \"round_trips\": %llu}", (unsigned long long)n);
  bench_report(ctx, "conn.pingpong64.carom", pingpong_carom(n), "us", params);
  bench_report(ctx, "conn.pingpong64.raw_socketpair", pingpong_raw(n), "us", params);
  bench_ratio("conn.pingpong64 carom/raw socketpair (lower is better)", "conn.pingpong64.carom",
              "conn.pingpong64.raw_socketpair");
}

/* ---- streaming ---- */

/* Send n messages of size bytes from a child; the parent receives and checks
 * them. Returns seconds. */
static double stream_carom(int duplex, size_t size, uint64_t n) {
  carom_conn_t *a, *b;
  if (carom_conn_create_pipe(duplex, NULL, &a, &b)) die("pipe", 0);
  pid_t pid = fork();
  if (pid == 0) {
    carom_conn_free(a);
    char *buf = calloc(1, size);
    for (uint64_t i = 0; i < n; i++) {
      buf[0] = (char)i;
      if (carom_conn_send_bytes(b, buf, size, 0, size, NULL)) _exit(2);
    }
    free(buf);
    _exit(0);
  }
  carom_conn_free(b);
  char *buf = malloc(size);
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    ssize_t r = carom_conn_recv_bytes_into(a, buf, size, 0, NULL, NULL);
    if (r != (ssize_t)size || buf[0] != (char)i) die("stream recv", (long)r);
  }
  uint64_t t1 = bench_now_ns();
  reap(pid);
  free(buf);
  carom_conn_free(a);
  return (double)(t1 - t0) / 1e9;
}

static double stream_raw(int use_pipe, size_t size, uint64_t n) {
  int fd[2];
  if (use_pipe ? pipe2(fd, O_CLOEXEC) : socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd))
    die("raw pair", 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    char *buf = calloc(1, size);
    for (uint64_t i = 0; i < n; i++) {
      size_t done = 0;
      while (done < size) {
        ssize_t r = write(fd[1], buf + done, size - done);
        if (r <= 0) _exit(2);
        done += (size_t)r;
      }
    }
    free(buf);
    _exit(0);
  }
  close(fd[1]);
  const size_t cap = 64 * 1024;
  char *buf = malloc(cap);
  uint64_t want = (uint64_t)size * n, got = 0;
  uint64_t t0 = bench_now_ns();
  while (got < want) {
    ssize_t r = read(fd[0], buf, cap);
    if (r <= 0) die("raw stream read", r);
    got += (uint64_t)r;
  }
  uint64_t t1 = bench_now_ns();
  reap(pid);
  free(buf);
  close(fd[0]);
  return (double)(t1 - t0) / 1e9;
}

static void stream_case(bench_ctx_t *ctx, const char *tag, int duplex, size_t size, uint64_t n) {
  char fc[96], fr[96], gc[128], gr[128], label[160], params[96];
  const char *raw = duplex ? "raw_socketpair" : "raw_pipe";
  snprintf(params, sizeof params, "{\"bytes\": %zu, \"messages\": %llu}", size,
           (unsigned long long)n);
  double sc = stream_carom(duplex, size, n);
  double sr = stream_raw(!duplex, size, n);
  snprintf(fc, sizeof fc, "conn.stream%s.%s.carom", tag, duplex ? "duplex" : "pipe");
  snprintf(fr, sizeof fr, "conn.stream%s.%s.%s", tag, duplex ? "duplex" : "pipe", raw);
  bench_report(ctx, fc, (double)n / sc, "msgs/s", params);
  bench_report(ctx, fr, (double)n / sr, "msgs/s", params);
  snprintf(gc, sizeof gc, "%s.gbps", fc);
  snprintf(gr, sizeof gr, "%s.gbps", fr);
  bench_report(ctx, gc, (double)n * (double)size / sc / 1e9, "GB/s", params);
  bench_report(ctx, gr, (double)n * (double)size / sr / 1e9, "GB/s", params);
  snprintf(label, sizeof label, "conn.stream%s.%s carom/%s (higher is better)", tag,
           duplex ? "duplex" : "pipe", raw);
  bench_ratio(label, fc, fr);
}

static void conn_stream64(bench_ctx_t *ctx) {
  uint64_t n = bench_scale(ctx, 1000000);
  stream_case(ctx, "64", 1, 64, n);
  stream_case(ctx, "64", 0, 64, n);
}

static void conn_stream64k(bench_ctx_t *ctx) {
  uint64_t n = bench_scale(ctx, 20000);
  stream_case(ctx, "64k", 1, 64 * 1024, n);
  stream_case(ctx, "64k", 0, 64 * 1024, n);
}

CAROM_BENCH("connection", "conn.pingpong64", conn_pingpong)
CAROM_BENCH("connection", "conn.stream64", conn_stream64)
CAROM_BENCH("connection", "conn.stream64k", conn_stream64k)
