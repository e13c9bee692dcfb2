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

#include <dlfcn.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>

/* OpenSSL's libcrypto is loaded on the first handshake, not linked: every
 * process that links carom would otherwise map it, and its five mappings and
 * relocated data made each fork + exit + wait of such a process ~28 µs dearer
 * here (161 vs 133 µs; a pool worker pays it on every start and exit, see
 * docs/PERF.md). The prototypes still come from OpenSSL's headers. */
static struct {
  __typeof__(HMAC) *hmac;
  __typeof__(EVP_sha256) *sha256;
  __typeof__(CRYPTO_memcmp) *memcmp_ct;
  int err; /* 0, or -ELIBACC: not found */
} crypto;
static pthread_once_t crypto_once = PTHREAD_ONCE_INIT;
static _Atomic bool crypto_forced_missing; /* test switch */

void carom__auth_force_no_crypto(bool missing) { crypto_forced_missing = missing; }

static void crypto_load(void) {
  /* The three functions have kept their signatures from OpenSSL 1.1 to 3. */
  static const char *const names[] = {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    crypto.hmac = (__typeof__(HMAC) *)dlsym(h, "HMAC");
    crypto.sha256 = (__typeof__(EVP_sha256) *)dlsym(h, "EVP_sha256");
    crypto.memcmp_ct = (__typeof__(CRYPTO_memcmp) *)dlsym(h, "CRYPTO_memcmp");
    if (crypto.hmac && crypto.sha256 && crypto.memcmp_ct) return;
    dlclose(h);
  }
  carom_log(CAROM_LOG_ERROR, "auth: cannot load OpenSSL's libcrypto (tried libcrypto.so.3, "
            ".so.1.1, .so): authenticated connections fail with -ELIBACC");
  crypto.err = -ELIBACC;
}

static int crypto_ready(void) {
  if (crypto_forced_missing) return -ELIBACC;
  pthread_once(&crypto_once, crypto_load);
  return crypto.err;
}

int carom__auth_ready(void) { return crypto_ready(); }

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
  if (!crypto.hmac(crypto.sha256(), keylen ? key : &empty, (int)keylen, msg, n, out, &outlen) ||
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
  int r = crypto_ready();
  if (r) return r;
  uint8_t msg[CH_LEN + TAG_LEN + CAROM__AUTH_NONCE];
  memcpy(msg, CHALLENGE, CH_LEN);
  memcpy(msg + CH_LEN, DIGEST_TAG, TAG_LEN);
  /* The nonce from the kernel's CSPRNG (a request this small is never short,
   * but may be interrupted before the pool is initialised early in boot). */
  ssize_t got;
  while ((got = getrandom(msg + CH_LEN + TAG_LEN, CAROM__AUTH_NONCE, 0)) < 0 && errno == EINTR) {
  }
  if (got != CAROM__AUTH_NONCE) return -EIO;
  uint8_t expect[MAC_LEN];
  r = mac(key, keylen, msg + CH_LEN, TAG_LEN + CAROM__AUTH_NONCE, expect);
  if (r) return r;
  r = send_small(c, msg, sizeof msg, deadline);
  if (r) return r;
  uint8_t resp[CAROM__AUTH_MSG_MAX];
  ssize_t n = recv_small(c, resp, deadline);
  if (n < 0) return (int)n;
  bool ok = n == (ssize_t)(TAG_LEN + MAC_LEN) && !memcmp(resp, DIGEST_TAG, TAG_LEN) &&
            crypto.memcmp_ct(resp + TAG_LEN, expect, MAC_LEN) == 0;
  const char *verdict = ok ? WELCOME : FAILURE;
  r = send_small(c, verdict, strlen(verdict), deadline);
  if (!ok) return CAROM_EAUTH;
  return r;
}

int carom__auth_answer(carom_conn_t *c, const void *key, size_t keylen,
                       const struct timespec *deadline) {
  int r = crypto_ready();
  if (r) return r;
  uint8_t buf[CAROM__AUTH_MSG_MAX];
  ssize_t n = recv_small(c, buf, deadline);
  if (n < 0) return (int)n;
  /* "#CHALLENGE#{sha256}" then at least 20 random bytes (Python's minimum). */
  if ((size_t)n < CH_LEN + TAG_LEN + 20 || memcmp(buf, CHALLENGE, CH_LEN) ||
      memcmp(buf + CH_LEN, DIGEST_TAG, TAG_LEN))
    return CAROM_EAUTH;
  uint8_t resp[TAG_LEN + MAC_LEN];
  memcpy(resp, DIGEST_TAG, TAG_LEN);
  r = mac(key, keylen, buf + CH_LEN, (size_t)n - CH_LEN, resp + TAG_LEN);
  if (r) return r;
  r = send_small(c, resp, sizeof resp, deadline);
  if (r) return r;
  n = recv_small(c, buf, deadline);
  if (n < 0) return (int)n;
  if (n != (ssize_t)(sizeof WELCOME - 1) || memcmp(buf, WELCOME, sizeof WELCOME - 1))
    return CAROM_EAUTH;
  return 0;
}
