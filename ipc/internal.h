/* ipc/internal.h — private declarations of the ipc/ layer (never installed).
 *
 * Connections (connection.c): the object layout, the pure frame codec that the
 * fuzzers drive without sockets, and the handshake entry points (auth.c) that
 * listener.c calls.
 */
#ifndef CAROM_IPC_INTERNAL_H
#define CAROM_IPC_INTERNAL_H

#include "base/internal.h"
#include "carom/connection.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- frame codec (pure functions over bytes) ---- */

enum {
  CAROM__FRAME_SHORT = 4,       /* 4-byte big-endian length */
  CAROM__FRAME_EXT = 12,        /* 0xffffffff, then 8-byte big-endian length */
  CAROM__FRAME_HDR_MAX = 12,
};
#define CAROM__FRAME_EXT_MARK 0xffffffffu

/* Write the header for a payload of len bytes into out; returns its size (4
 * or 12). Lengths above ext_threshold (clamped to CAROM_CONN_SHORT_HEADER_MAX)
 * get the extended header. */
size_t carom__frame_encode(uint64_t len, uint64_t ext_threshold, uint8_t out[CAROM__FRAME_HDR_MAX]);

/* Parse a header at the start of buf[0, n). Returns 0 if more bytes are
 * needed, else the header size (4 or 12) with the payload length in *len.
 * Never reads past n. Does not check limits (the caller does). */
size_t carom__frame_decode(const uint8_t *buf, size_t n, uint64_t *len);

/* ---- Connection layout ---- */

enum carom__conn_flags {
  CAROM__C_READABLE = 1u << 0,
  CAROM__C_WRITABLE = 1u << 1,
  CAROM__C_SOCKET = 1u << 2,   /* use send/recv(msg) (MSG_NOSIGNAL, MSG_DONTWAIT) */
  CAROM__C_UNIX = 1u << 3,     /* AF_UNIX: fd passing allowed */
  CAROM__C_NONBLOCK = 1u << 4, /* opts.nonblocking */
};

#define CAROM__RBUF_SIZE (64 * 1024)
#define CAROM__FDQ_MAX 16

struct carom_conn {
  int fd;               /* -1 once closed */
  unsigned flags;       /* carom__conn_flags, fixed after creation */
  uint64_t max_message;
  uint64_t ext_threshold;

  /* ---- receive side (owned by the one receiving thread) ---- */
  /* Read-ahead buffer: bytes [rpos, rlen) are received, not yet consumed.
   * Always starts at a frame boundary unless skip or rmsg say otherwise. */
  uint8_t *rbuf;
  size_t rpos, rlen;
  /* A message too large for rbuf being read straight into its own buffer:
   * rmsg holds rmsg_got of rmsg_len bytes. Complete (got == len) means a
   * whole message waits here (e.g. after ETOOSHORT). */
  uint8_t *rmsg;
  uint64_t rmsg_len, rmsg_got;
  bool rmsg_active;
  /* Bytes of a rejected (oversized) payload still to be dropped. */
  uint64_t skip;
  bool eof;             /* the peer's EOF was seen */
  /* fds received with SCM_RIGHTS, oldest first, not yet claimed. */
  int fdq[CAROM__FDQ_MAX];
  int nfdq;

  /* ---- send side (owned by the one sending thread) ---- */
  bool send_broken;     /* a frame was cut by a deadline: every send -EPIPE */
};

/* Make a Connection around fd (ownership passes; closed on failure). */
int carom__conn_new(int fd, unsigned flags, const carom_conn_opts_t *opts, carom_conn_t **out);
/* True when a whole message is buffered (a receive would not touch the fd). */
bool carom__conn_has_message(const carom_conn_t *c);
/* Send/receive with an explicit per-call cap, used by the handshake so no
 * handshake message can exceed CAROM__AUTH_MSG_MAX. */
ssize_t carom__conn_recv_into(carom_conn_t *c, void *buf, size_t buflen, size_t maxlen,
                              size_t *needed, const struct timespec *deadline);

/* ---- handshake (auth.c) ---- */

#define CAROM__AUTH_MSG_MAX 256
#define CAROM__AUTH_NONCE 40

/* Server side first half: send a challenge, check the reply, send
 * WELCOME/FAILURE. 0, CAROM_EAUTH, or an I/O error. */
int carom__auth_deliver(carom_conn_t *c, const void *key, size_t keylen,
                        const struct timespec *deadline);
/* Answer the peer's challenge and read its verdict. 0, CAROM_EAUTH, or an
 * I/O error. */
int carom__auth_answer(carom_conn_t *c, const void *key, size_t keylen,
                       const struct timespec *deadline);
/* libcrypto loaded (on first use): 0, or -ELIBACC. Listener and Client with a
 * key check it when they are created, before any peer is involved (and in
 * the parent, not first in a forked worker). */
int carom__auth_ready(void);
/* Test switch: behave as if libcrypto could not be loaded (the handshake
 * then fails with -ELIBACC), or load it again normally (false). */
void carom__auth_force_no_crypto(bool missing);

#endif /* CAROM_IPC_INTERNAL_H */
