/* ipc/auth.c — the Listener/Client handshake: HMAC-SHA256 challenge-response.
 *
 * The shape follows Python 3.12's multiprocessing.connection:
 *   deliver: send "#CHALLENGE#" + M where M = "{sha256}" + 40 random bytes;
 *            read the reply R (at most 256 bytes); accept iff
 *            R == "{sha256}" + HMAC-SHA256(key, M) (compared with
 *            CRYPTO_memcmp); send "#WELCOME#" or "#FAILURE#".
 *   answer:  read "#CHALLENGE#" + M, send "{sha256}" + HMAC-SHA256(key, M),
 *            read the verdict.
 * The server delivers then answers; the client answers then delivers, so
 * each side proves it knows the key to the other.
 *
 * Invariants: handshake messages are read with a per-call cap of
 * CAROM__AUTH_MSG_MAX into stack buffers, so a hostile peer cannot make
 * this code allocate, and a longer length prefix ends the handshake
 * (CAROM_EAUTH) before its payload is read. Nothing but handshake frames is
 * parsed here.
 */
#include "ipc/internal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

static const char CHALLENGE[] = "#CHALLENGE#";
static const char WELCOME[] = "#WELCOME#";
static const char FAILURE[] = "#FAILURE#";
static const char DIGEST_TAG[] = "{sha256}";
#define TAG_LEN (sizeof DIGEST_TAG - 1)
#define CH_LEN (sizeof CHALLENGE - 1)
#define MAC_LEN 32

static int mac(const void *key, size_t keylen, const uint8_t *msg, size_t n, uint8_t out[MAC_LEN]) {
  unsigned int outlen = 0;
  static const uint8_t empty = 0;
  if (!HMAC(EVP_sha256(), keylen ? key : &empty, (int)keylen, msg, n, out, &outlen) ||
      outlen != MAC_LEN)
    return -EIO;
  return 0;
}

/* Read one handshake message; anything over the cap is an authentication
 * failure, never an allocation. */
static ssize_t recv_small(carom_conn_t *c, uint8_t buf[CAROM__AUTH_MSG_MAX],
                          const struct timespec *deadline) {
  ssize_t r = carom__conn_recv_into(c, buf, CAROM__AUTH_MSG_MAX, CAROM__AUTH_MSG_MAX, NULL,
                                    deadline);
  if (r == CAROM_EMSGSIZE || r == CAROM_ETOOSHORT) return CAROM_EAUTH;
  return r;
}

static int send_small(carom_conn_t *c, const void *p, size_t n, const struct timespec *deadline) {
  return carom_conn_send_bytes(c, p, n, 0, n, deadline);
}

int carom__auth_deliver(carom_conn_t *c, const void *key, size_t keylen,
                        const struct timespec *deadline) {
  uint8_t msg[CH_LEN + TAG_LEN + CAROM__AUTH_NONCE];
  memcpy(msg, CHALLENGE, CH_LEN);
  memcpy(msg + CH_LEN, DIGEST_TAG, TAG_LEN);
  if (RAND_bytes(msg + CH_LEN + TAG_LEN, CAROM__AUTH_NONCE) != 1) return -EIO;
  uint8_t expect[MAC_LEN];
  int r = mac(key, keylen, msg + CH_LEN, TAG_LEN + CAROM__AUTH_NONCE, expect);
  if (r) return r;
  r = send_small(c, msg, sizeof msg, deadline);
  if (r) return r;
  uint8_t resp[CAROM__AUTH_MSG_MAX];
  ssize_t n = recv_small(c, resp, deadline);
  if (n < 0) return (int)n;
  bool ok = n == (ssize_t)(TAG_LEN + MAC_LEN) && !memcmp(resp, DIGEST_TAG, TAG_LEN) &&
            CRYPTO_memcmp(resp + TAG_LEN, expect, MAC_LEN) == 0;
  const char *verdict = ok ? WELCOME : FAILURE;
  r = send_small(c, verdict, strlen(verdict), deadline);
  if (!ok) return CAROM_EAUTH;
  return r;
}

int carom__auth_answer(carom_conn_t *c, const void *key, size_t keylen,
                       const struct timespec *deadline) {
  uint8_t buf[CAROM__AUTH_MSG_MAX];
  ssize_t n = recv_small(c, buf, deadline);
  if (n < 0) return (int)n;
  /* "#CHALLENGE#{sha256}" then at least 20 random bytes (Python's minimum). */
  if ((size_t)n < CH_LEN + TAG_LEN + 20 || memcmp(buf, CHALLENGE, CH_LEN) ||
      memcmp(buf + CH_LEN, DIGEST_TAG, TAG_LEN))
    return CAROM_EAUTH;
  uint8_t resp[TAG_LEN + MAC_LEN];
  memcpy(resp, DIGEST_TAG, TAG_LEN);
  int r = mac(key, keylen, buf + CH_LEN, (size_t)n - CH_LEN, resp + TAG_LEN);
  if (r) return r;
  r = send_small(c, resp, sizeof resp, deadline);
  if (r) return r;
  n = recv_small(c, buf, deadline);
  if (n < 0) return (int)n;
  if (n != (ssize_t)(sizeof WELCOME - 1) || memcmp(buf, WELCOME, sizeof WELCOME - 1))
    return CAROM_EAUTH;
  return 0;
}
