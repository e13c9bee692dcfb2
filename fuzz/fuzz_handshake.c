/* fuzz/fuzz_handshake.c — both halves of the authentication handshake fed
 * hostile peer bytes through a socketpair (all input already sent, the peer's
 * writer shut down, so every call ends without waiting).
 *
 * Checked: no memory error; deliver never accepts (the input cannot know the
 * HMAC of a fresh random nonce); the results are only 0, CAROM_EAUTH,
 * CAROM_EEOF (or -EPIPE when sending to a closed peer). */
#include "ipc/internal.h"

#include <stdlib.h>
#include <sys/socket.h>

static int run(const uint8_t *d, size_t n, int deliver) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) return -1;
  if (n && write(sv[1], d, n) != (ssize_t)n) abort();
  shutdown(sv[1], SHUT_WR);
  carom_conn_t *c;
  if (carom_conn_create_fd(sv[0], 1, 1, NULL, &c)) abort();
  struct timespec now;
  carom_deadline(0, &now);
  static const char key[] = "fuzz-key";
  int r = deliver ? carom__auth_deliver(c, key, sizeof key - 1, &now)
                  : carom__auth_answer(c, key, sizeof key - 1, &now);
  carom_conn_free(c);
  close(sv[1]);
  return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
  if (n > 64 * 1024) return 0;
  int r = run(d, n, 1);
  if (r == 0) abort();
  if (r != CAROM_EAUTH && r != CAROM_EEOF && r != -EPIPE) abort();
  r = run(d, n, 0);
  if (r != 0 && r != CAROM_EAUTH && r != CAROM_EEOF && r != -EPIPE) abort();
  return 0;
}
