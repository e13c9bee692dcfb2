/* fuzz/fuzz_frame.c — the frame decoder, twice: the pure codec over the
 * input, and the real receive path (read buffer, large-message buffer,
 * oversize discard, ETOOSHORT hold) fed the input through a socketpair.
 *
 * Checked: no memory error, every delivered message fits the limit, an
 * encode/decode round trip is exact, and the stream always ends in EOF (the
 * input is all in the socket and the writer is shut down, so a timeout or
 * any other error is a bug). */
#include "ipc/internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static void codec(const uint8_t *d, size_t n) {
  size_t off = 0;
  while (off < n) {
    uint64_t len;
    size_t hl = carom__frame_decode(d + off, n - off, &len);
    if (!hl) break;
    if (hl != CAROM__FRAME_SHORT && hl != CAROM__FRAME_EXT) abort();
    if (len > n - off - hl) break;
    off += hl + (size_t)len;
  }
  if (n >= 9) {
    uint64_t len = 0, thr = d[8];
    memcpy(&len, d, 8);
    uint8_t hdr[CAROM__FRAME_HDR_MAX];
    size_t hl = carom__frame_encode(len, thr, hdr);
    uint64_t back = 0;
    if (carom__frame_decode(hdr, hl, &back) != hl || back != len) abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
  codec(d, n);
  if (n < 2) return 0;
  /* First byte: limit and call mix; the rest goes on the wire. */
  uint8_t mode = d[0];
  d++, n--;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) return 0;
  int sz = 1 << 20;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  if (write(sv[1], d, n) != (ssize_t)n) abort();
  shutdown(sv[1], SHUT_WR);
  carom_conn_opts_t o = {sizeof o, (uint64_t)(mode & 0x3f) * 64 + 1, 0, 0};
  carom_conn_t *c;
  if (carom_conn_create_fd(sv[0], 1, 1, &o, &c)) abort();
  struct timespec now;
  carom_deadline(0, &now);
  for (size_t i = 0;; i++) {
    ssize_t r;
    if ((mode >> 6) & (i & 1)) {
      uint8_t buf[256];
      size_t need = 0;
      r = carom_conn_recv_bytes_into(c, buf, sizeof buf, 0, &need, &now);
      if (r == CAROM_ETOOSHORT && need <= sizeof buf) abort();
    } else {
      void *m = NULL;
      r = carom_conn_recv_bytes(c, 0, &m, &now);
      if (r >= 0 && !m) abort();
      free(m);
    }
    if (r >= 0 && (uint64_t)r > o.max_message) abort();
    if (r == CAROM_EEOF) break;
    if (r < 0 && r != CAROM_EMSGSIZE && r != CAROM_ETOOSHORT) abort();
    if (i > 2 * n + 4) abort(); /* each call consumes input or the next one does */
  }
  carom_conn_free(c);
  close(sv[1]);
  return 0;
}
