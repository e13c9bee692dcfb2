/* carom/connection.h — message Connections between processes (Python's
 * multiprocessing.connection): Pipe(), Listener/Client with an HMAC
 * handshake, fd passing, and wait() over many objects.
 *
 * Wire format: each message is a length prefix and the payload. The prefix is
 * a 4-byte big-endian length; lengths above 0x7fffffff are sent as the 4-byte
 * value 0xffffffff followed by an 8-byte big-endian length (Python's framing,
 * so messages over 2 GiB work). The payload is opaque bytes: nothing in carom
 * decodes it into code or objects.
 *
 * Guarantees:
 * - A message is delivered whole or not at all. A receive that times out in
 *   the middle of a message keeps the bytes read so far inside the Connection
 *   and the next receive continues the same message.
 * - The receiver never allocates more than its max_message for one message.
 *   A longer length prefix makes the receive return CAROM_EMSGSIZE at once;
 *   the Connection then DISCARDS that payload as it arrives (no allocation)
 *   and later receives return the following messages. The stream stays in
 *   step; nothing is marked broken.
 * - EOF from the peer (closed, exited, killed) is CAROM_EEOF, at a message
 *   boundary or in the middle of one (the partial message is dropped).
 *   ECONNRESET is reported as CAROM_EEOF too.
 * - A send writes the header and the payload with one syscall when the kernel
 *   takes it all. A send whose deadline passes after part of the frame was
 *   written cannot be undone: the Connection's sending side is marked broken
 *   (the write side is shut down so the peer sees EOF, never a truncated
 *   message), the call returns -ETIMEDOUT, and every later send returns
 *   -EPIPE. A send that timed out before writing any byte leaves the
 *   Connection usable.
 * - SIGPIPE never reaches the process: sockets use MSG_NOSIGNAL; pipe writes
 *   block SIGPIPE for the calling thread and consume the one the write raised.
 *   A write to a closed peer returns -EPIPE.
 * - EINTR is retried; every wait is bounded by the caller's absolute deadline.
 *
 * Threads: a Connection is not locked. One thread may send while another
 * receives; two concurrent senders (or receivers) on one Connection are a
 * bug. close/free must not overlap any other call.
 *
 * Fork: Connections own plain fds; a forked child may use its copy (e.g. the
 * child end of a Pipe after the parent freed its own). Both processes using
 * the same direction of one Connection at once interleave bytes: don't.
 */
#ifndef CAROM_CONNECTION_H
#define CAROM_CONNECTION_H

#include "carom/common.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct carom_conn carom_conn_t;
typedef struct carom_listener carom_listener_t;

/* Default receive limit for one message (max_message = 0). */
#define CAROM_CONN_DEFAULT_MAX_MESSAGE ((uint64_t)1 << 30) /* 1 GiB */
/* Longest message sent with the short (4-byte) header. */
#define CAROM_CONN_SHORT_HEADER_MAX 0x7fffffffu

typedef struct carom_conn_opts {
  size_t size;           /* sizeof(carom_conn_opts_t) */
  uint64_t max_message;  /* receive limit per message; 0 = default (1 GiB) */
  /* Messages longer than this are sent with the extended header. 0 = the
   * default (CAROM_CONN_SHORT_HEADER_MAX, Python's rule); smaller values exist
   * so tests can exercise the extended header without 2 GiB messages. The
   * receiver accepts both headers whatever this is. */
  uint64_t ext_threshold;
  /* Non-zero: calls never wait. A receive with no complete message returns
   * -EAGAIN (bytes of a partial message stay buffered); a send returns -EAGAIN
   * if the kernel took no byte, and otherwise finishes its frame, waiting up
   * to the caller's deadline (a frame is never left half-written by choice). */
  int nonblocking;
} carom_conn_opts_t;

/* ---- Connections ---- */

/* Python's Pipe(duplex). duplex != 0: an AF_UNIX stream socketpair, both ends
 * readable and writable (fd passing works). duplex == 0: a pipe; *a is the
 * read end, *b the write end. Both fds are close-on-exec. opts may be NULL.
 * Returns 0, -EINVAL, -ENOMEM or -EMFILE/-ENFILE. Not blocking. */
CAROM_EXTERN int carom_conn_create_pipe(int duplex, const carom_conn_opts_t *opts,
                                        carom_conn_t **a, carom_conn_t **b);

/* Wrap an fd (a stream socket or a pipe end) as a Connection and take
 * ownership of it (closed by carom_conn_free/close, also on failure).
 * readable/writable say which directions are allowed. Sets close-on-exec.
 * Returns 0, -EINVAL (neither direction, bad fd) or -ENOMEM. */
CAROM_EXTERN int carom_conn_create_fd(int fd, int readable, int writable,
                                      const carom_conn_opts_t *opts, carom_conn_t **out);

/* Close (if open) and free. Accepts NULL. Fds received with recv_handle's
 * messages but never claimed are closed too. Not blocking. */
CAROM_EXTERN void carom_conn_free(carom_conn_t *c);

/* Close the fd now; the object stays valid and every later call returns
 * CAROM_ECLOSED. Closing twice is a no-op (returns 0). */
CAROM_EXTERN int carom_conn_close(carom_conn_t *c);

/* Send buf[offset, offset+size) as one message (Python's send_bytes; the
 * caller passes buflen so offset/size are checked: -EINVAL when they exceed
 * it). Blocks until the kernel took the whole frame or the deadline.
 * Returns 0; -ETIMEDOUT (see the header comment for a partial write);
 * -EAGAIN (nonblocking end, nothing written); -EPIPE (peer gone, or sending
 * side broken earlier); CAROM_ECLOSED; -EBADF (read-only end). */
CAROM_EXTERN int carom_conn_send_bytes(carom_conn_t *c, const void *buf, size_t buflen,
                                       size_t offset, size_t size,
                                       const struct timespec *deadline);

/* Receive one message into a new malloc()ed buffer (*out, free() it; never
 * NULL on success, even for an empty message). maxlength > 0 is a per-call
 * limit below the Connection's max_message (0: none). Returns the message
 * length (>= 0) or: CAROM_EEOF; -ETIMEDOUT; -EAGAIN (nonblocking end);
 * CAROM_EMSGSIZE (too long: the payload is discarded, the stream stays in
 * step); -ENOMEM; CAROM_ECLOSED; -EBADF (write-only end). */
CAROM_EXTERN ssize_t carom_conn_recv_bytes(carom_conn_t *c, size_t maxlength, void **out,
                                           const struct timespec *deadline);

/* Receive one message into buf at offset (Python's recv_bytes_into).
 * Returns its length. If it does not fit in buflen - offset: returns
 * CAROM_ETOOSHORT, writes the message length to *needed (if not NULL) and
 * keeps the message: the next recv_bytes or recv_bytes_into returns it
 * whole. -EINVAL if offset > buflen. Other returns as recv_bytes. */
CAROM_EXTERN ssize_t carom_conn_recv_bytes_into(carom_conn_t *c, void *buf, size_t buflen,
                                                size_t offset, size_t *needed,
                                                const struct timespec *deadline);

/* Pass an open fd to the peer of an AF_UNIX Connection (SCM_RIGHTS), as a
 * message of its own. The caller keeps its fd. Returns 0 or a send error;
 * -ENOTSOCK when the Connection is not a Unix socket. */
CAROM_EXTERN int carom_conn_send_handle(carom_conn_t *c, int fd, const struct timespec *deadline);
/* Receive an fd sent with send_handle. Returns the new fd (close-on-exec,
 * owned by the caller) or a receive error; -EPROTO if the next message was
 * not a handle (that message is consumed). */
CAROM_EXTERN int carom_conn_recv_handle(carom_conn_t *c, const struct timespec *deadline);

/* Is there something to receive: a whole message buffered, or the fd
 * readable (data, EOF or an error, so a receive will not wait for long)?
 * Waits up to the deadline. Returns 1 (ready), 0 (not by the deadline),
 * CAROM_ECLOSED or -EBADF (write-only end). Like Python's poll(), a query:
 * a deadline reached is 0, not an error. */
CAROM_EXTERN int carom_conn_poll(carom_conn_t *c, const struct timespec *deadline);

/* The fd (-1 once closed). Do not read or write it directly: the
 * Connection buffers. */
CAROM_EXTERN int carom_conn_fileno(const carom_conn_t *c);
CAROM_EXTERN int carom_conn_readable(const carom_conn_t *c);
CAROM_EXTERN int carom_conn_writable(const carom_conn_t *c);
CAROM_EXTERN int carom_conn_closed(const carom_conn_t *c);

/* ---- Listener and Client ----
 *
 * Addresses are strings:
 *   "unix:/path" or "/path"   a filesystem AF_UNIX socket (created 0600,
 *                             removed when the Listener is freed)
 *   "abstract:name" or "@name" a Linux abstract-namespace AF_UNIX name
 *   "tcp:HOST:PORT", "HOST:PORT", "[V6]:PORT"  TCP over IPv4 or IPv6
 *                             (numeric hosts or names; PORT 0 picks one)
 * A Listener created with no address gets a fresh "unix:" path in a new
 * private (0700) temporary directory under $TMPDIR (or /tmp).
 *
 * Authentication (authkey given on both sides): after connect, the server
 * challenges the client, then the client challenges the server: each sends
 * 40 random bytes (RAND_bytes) and expects HMAC-SHA256(authkey, challenge)
 * back, compared in constant time (CRYPTO_memcmp), then answers WELCOME or
 * FAILURE; the messages follow the shape of Python 3.12's deliver_challenge
 * / answer_challenge ("#CHALLENGE#{sha256}...", "{sha256}<digest>"). No
 * handshake message may exceed 256 bytes, and no payload byte is read as
 * a message before both challenges succeeded. A wrong key fails on both
 * sides with CAROM_EAUTH and the connection is closed. The key never goes
 * on the wire; pass it to children explicitly. Both sides must agree on
 * whether a key is used: without a key no handshake happens. OpenSSL's
 * libcrypto (libcrypto.so.3) is loaded on the first handshake rather than
 * linked, so processes that never authenticate do not map it; when it cannot
 * be loaded, a Listener or Client with a key fails at creation with -ELIBACC
 * (and an error is logged).
 *
 * Unix-socket Listeners also check the peer's uid (SO_PEERCRED): a peer
 * running as another user (other than root) is refused unless
 * allow_other_uids is set. */

typedef struct carom_listener_opts {
  size_t size;             /* sizeof(carom_listener_opts_t) */
  const char *address;     /* NULL or "": a fresh temporary Unix path */
  const void *authkey;     /* NULL: no authentication */
  size_t authkey_len;
  int backlog;             /* 0: 128 */
  /* Bound on one client's handshake in accept (seconds; 0: 5 s), so a
   * client that connects and says nothing is dropped, not waited for. */
  double handshake_timeout;
  int allow_other_uids;    /* Unix sockets: accept peers of any uid */
  carom_conn_opts_t conn;  /* for accepted Connections (conn.size 0: defaults) */
} carom_listener_opts_t;

/* Bind and listen. Returns 0; -EINVAL (bad address); -EADDRINUSE;
 * -ENAMETOOLONG (Unix path over 107 bytes); other negated errnos. */
CAROM_EXTERN int carom_listener_create(const carom_listener_opts_t *opts,
                                       carom_listener_t **out);

/* Accept one client and, with an authkey, run the handshake, bounded by the
 * earlier of the deadline and handshake_timeout. A client that stays silent
 * or hangs up during the handshake, or (Unix) runs as another user, is
 * dropped and accept goes on waiting for the next one. Returns 0 with *out
 * set; -ETIMEDOUT (deadline); CAROM_EAUTH (the client's digest was wrong or
 * it rejected ours; that connection is closed); -ELIBACC (libcrypto could not
 * be loaded); CAROM_ECLOSED. */
CAROM_EXTERN int carom_listener_accept(carom_listener_t *l, const struct timespec *deadline,
                                       carom_conn_t **out);

/* The bound address in the syntax above, with the real port for TCP port
 * 0. Valid until free. */
CAROM_EXTERN const char *carom_listener_address(const carom_listener_t *l);
CAROM_EXTERN int carom_listener_fileno(const carom_listener_t *l);

/* Stop listening; removes the socket file (and the temporary directory)
 * when called in the process that created the Listener. Idempotent. */
CAROM_EXTERN void carom_listener_close(carom_listener_t *l);
/* close + free. Accepts NULL. */
CAROM_EXTERN void carom_listener_free(carom_listener_t *l);

typedef struct carom_client_opts {
  size_t size;            /* sizeof(carom_client_opts_t) */
  const void *authkey;    /* NULL: no authentication */
  size_t authkey_len;
  carom_conn_opts_t conn; /* conn.size 0: defaults */
} carom_client_opts_t;

/* Python's Client(address, authkey): connect and, with a key, run the
 * handshake, all bounded by the deadline. Returns 0 with *out set;
 * -ETIMEDOUT; CAROM_EAUTH; -ECONNREFUSED / -ENOENT (nobody listening);
 * CAROM_EEOF (the server hung up during the handshake); -ELIBACC (libcrypto
 * could not be loaded); -EINVAL. */
CAROM_EXTERN int carom_conn_create_client(const char *address, const carom_client_opts_t *opts,
                                          const struct timespec *deadline, carom_conn_t **out);

/* ---- wait() ---- */

typedef enum {
  CAROM_WAIT_CONN = 1,     /* readable Connection (a whole message or fd readable) */
  CAROM_WAIT_LISTENER = 2, /* a client waiting to be accepted */
  CAROM_WAIT_FD = 3        /* any fd readable: pidfd sentinels, eventfds, ... */
} carom_wait_kind_t;

typedef struct carom_wait_obj {
  int kind;                    /* carom_wait_kind_t */
  int fd;                      /* CAROM_WAIT_FD */
  carom_conn_t *conn;          /* CAROM_WAIT_CONN */
  carom_listener_t *listener;  /* CAROM_WAIT_LISTENER */
  int ready;                   /* out: 1 when ready */
} carom_wait_obj_t;

/* Python's multiprocessing.connection.wait(): wait until at least one object
 * is ready or the deadline. Sets each ready flag and returns how many are
 * ready (0: none by the deadline, like Python's empty list). A Connection with
 * a whole message already buffered counts as ready without a syscall.
 * Returns -EINVAL (bad kind, NULL object, negative fd), CAROM_ECLOSED (a
 * closed Connection or Listener), -ENOMEM. */
CAROM_EXTERN int carom_wait(carom_wait_obj_t *objs, size_t n, const struct timespec *deadline);

#ifdef __cplusplus
}
#endif
#endif /* CAROM_CONNECTION_H */
