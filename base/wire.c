/* base/wire.c — growable write buffer and bounds-checked reader for the
 * private wire formats that cross exec (proc/'s boot message, pool/'s exec'd
 * template configuration). Little-endian host order: both ends are the same
 * program on the same machine.
 *
 * Writer: every put is a no-op once an allocation failed (`oom`), so encoders
 * check once at the end. Reader: every get past the end sets `bad` and returns
 * NULL/0, so decoders check once at the end. Byte strings travel as a u32
 * length, the bytes and a NUL, so a reader can point at strings in place.
 */
#include "base/internal.h"

#include <stdlib.h>
#include <string.h>

bool carom__wreserve(carom__wbuf_t *w, size_t n) {
  if (w->oom) return false;
  if (w->len + n > w->cap) {
    size_t c = w->cap ? w->cap : 256;
    while (c < w->len + n) c *= 2;
    unsigned char *q = realloc(w->p, c);
    if (!q) {
      w->oom = true;
      return false;
    }
    w->p = q;
    w->cap = c;
  }
  return true;
}

void carom__wput(carom__wbuf_t *w, const void *d, size_t n) {
  if (!carom__wreserve(w, n)) return;
  if (n) memcpy(w->p + w->len, d, n);
  w->len += n;
}

void carom__wput_u32(carom__wbuf_t *w, uint32_t v) { carom__wput(w, &v, 4); }

void carom__wput_u64(carom__wbuf_t *w, uint64_t v) { carom__wput(w, &v, 8); }

void carom__wput_bytes(carom__wbuf_t *w, const void *d, size_t n) {
  if (n > UINT32_MAX - 1) {
    w->oom = true; /* cannot be framed: fail the whole encoding */
    return;
  }
  carom__wput_u32(w, (uint32_t)n);
  carom__wput(w, d, n);
  carom__wput(w, "", 1);
}

void carom__wput_str(carom__wbuf_t *w, const char *s) {
  if (!s) s = "";
  carom__wput_bytes(w, s, strlen(s));
}

const void *carom__rget(carom__rbuf_t *r, size_t n) {
  if (r->bad || r->len - r->at < n) {
    r->bad = true;
    return NULL;
  }
  const void *q = r->p + r->at;
  r->at += n;
  return q;
}

uint32_t carom__rget_u32(carom__rbuf_t *r) {
  uint32_t v = 0;
  const void *q = carom__rget(r, 4);
  if (q) memcpy(&v, q, 4);
  return v;
}

uint64_t carom__rget_u64(carom__rbuf_t *r) {
  uint64_t v = 0;
  const void *q = carom__rget(r, 8);
  if (q) memcpy(&v, q, 8);
  return v;
}

const unsigned char *carom__rget_bytes(carom__rbuf_t *r, size_t *n) {
  uint32_t l = carom__rget_u32(r);
  const unsigned char *q = carom__rget(r, (size_t)l + 1);
  if (q && q[l] != 0) { /* every byte string ends with a NUL */
    r->bad = true;
    q = NULL;
  }
  if (n) *n = q ? l : 0;
  return q;
}

char *carom__rget_str(carom__rbuf_t *r) { return (char *)carom__rget_bytes(r, NULL); }
