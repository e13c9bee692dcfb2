/* shm/value.c — Value, Array, RawValue, RawArray in a shared heap.
 *
 * Layout of one object (a single heap block, 64-byte aligned):
 *   struct carom_shval (64 bytes): typecode, item size, count, which lock,
 *   the offset of the heap base (so free needs no heap argument), the offset
 *   of a caller-given lock relative to the object, and the object's own RLock;
 *   then the data, 64-byte aligned, count * itemsize bytes.
 * No pointers are stored: the object works at any address, and a given lock
 * must sit at the same displacement from the object in every process (true
 * for anything in one family's inherited mappings).
 *
 * Synchronized access: get/set/read/write take the lock (blocking without
 * bound) around a memcpy of the element(s), as Python's Synchronized* wrap
 * each access. The atomic calls act on element 0 with __atomic builtins of
 * the element's own width, so they never take the lock.
 */
#include "shm/internal.h"

#include <float.h>
#include <string.h>

#define SHVAL_MAGIC 0x5641u /* "VA" */

struct carom_shval {
  uint16_t magic;
  char tc;
  uint8_t itemsize;
  uint8_t lock_kind; /* carom_value_lock_t */
  uint8_t is_signed;
  uint8_t is_float;
  uint8_t pad0;
  uint64_t count;
  int64_t heap_off;  /* this - heap base */
  int64_t lock_off;  /* given lock - this */
  carom_rlock_t own; /* used when lock_kind == OWN */
  uint8_t pad[64 - 48];
};
_Static_assert(sizeof(struct carom_shval) == 64, "header is one cache line");

#define DATA(v) ((char *)(v) + sizeof(struct carom_shval))

static int type_info(char tc, uint8_t *size, uint8_t *sgn, uint8_t *flt) {
  *sgn = 0;
  *flt = 0;
  switch (tc) {
    case 'b': *sgn = 1; /* fallthrough */
    case 'B': case 'c': case 'x': *size = 1; return 0;
    case 'h': *sgn = 1; /* fallthrough */
    case 'H': *size = 2; return 0;
    case 'i': *sgn = 1; /* fallthrough */
    case 'I': *size = 4; return 0;
    case 'l': *sgn = 1; /* fallthrough */
    case 'L': *size = sizeof(long); return 0;
    case 'q': *sgn = 1; /* fallthrough */
    case 'Q': *size = 8; return 0;
    case 'f': *flt = 1; *size = 4; return 0;
    case 'd': *flt = 1; *size = 8; return 0;
    default: return -EINVAL;
  }
}

static bool is_int(const carom_value_t *v) { return !v->is_float && v->tc != 'x'; }

static int create(char tc, size_t n, const void *init, carom_heap_t *h, carom_value_lock_t kind,
                  void *given, carom_value_t **out) {
  uint8_t sz, sgn, flt;
  if (!out || n == 0 || type_info(tc, &sz, &sgn, &flt) < 0) return -EINVAL;
  if (kind > CAROM_VALUE_RLOCK_GIVEN) return -EINVAL;
  if ((kind == CAROM_VALUE_LOCK_GIVEN || kind == CAROM_VALUE_RLOCK_GIVEN) && !given)
    return -EINVAL;
  if (n > (SIZE_MAX - sizeof(struct carom_shval)) / sz) return -ENOMEM;
  int rc = h ? 0 : carom_heap_default(&h);
  if (rc < 0) return rc;
  void *p;
  rc = carom_heap_alloc(h, sizeof(struct carom_shval) + n * sz, 64, &p);
  if (rc < 0) return rc;
  carom_value_t *v = p;
  memset(v, 0, sizeof *v);
  v->magic = SHVAL_MAGIC;
  v->tc = tc;
  v->itemsize = sz;
  v->is_signed = sgn;
  v->is_float = flt;
  v->lock_kind = (uint8_t)kind;
  v->count = n;
  v->heap_off = (int64_t)carom_heap_offset(h, v);
  if (kind == CAROM_VALUE_LOCK_OWN) carom_rlock_init(&v->own);
  if (given) v->lock_off = (int64_t)((char *)given - (char *)v);
  if (init) memcpy(DATA(v), init, n * sz);
  else memset(DATA(v), 0, n * sz);
  *out = v;
  return 0;
}

static void opts_of(const carom_value_opts_t *o, carom_heap_t **h, carom_value_lock_t *k,
                    void **given) {
  *h = NULL;
  *k = CAROM_VALUE_LOCK_OWN;
  *given = NULL;
  if (!o) return;
  /* Fields beyond what the caller's struct has keep their defaults. */
  if (o->size >= offsetof(carom_value_opts_t, heap) + sizeof o->heap) *h = o->heap;
  if (o->size >= offsetof(carom_value_opts_t, lock) + sizeof o->lock) *k = o->lock;
  if (o->size >= offsetof(carom_value_opts_t, given) + sizeof o->given) *given = o->given;
}

int carom_value_create(char tc, const void *init, const carom_value_opts_t *opts,
                       carom_value_t **out) {
  carom_heap_t *h;
  carom_value_lock_t k;
  void *g;
  opts_of(opts, &h, &k, &g);
  return create(tc, 1, init, h, k, g, out);
}

int carom_rawvalue_create(char tc, const void *init, carom_heap_t *heap, carom_value_t **out) {
  return create(tc, 1, init, heap, CAROM_VALUE_LOCK_NONE, NULL, out);
}

int carom_array_create(char tc, size_t n, const void *init, const carom_value_opts_t *opts,
                       carom_array_t **out) {
  carom_heap_t *h;
  carom_value_lock_t k;
  void *g;
  opts_of(opts, &h, &k, &g);
  return create(tc, n, init, h, k, g, out);
}

int carom_rawarray_create(char tc, size_t n, const void *init, carom_heap_t *heap,
                          carom_array_t **out) {
  return create(tc, n, init, heap, CAROM_VALUE_LOCK_NONE, NULL, out);
}

void carom_value_free(carom_value_t *v) {
  if (!v) return;
  carom_heap_t *h = (carom_heap_t *)((char *)v - v->heap_off);
  if (v->lock_kind == CAROM_VALUE_LOCK_OWN) carom_rlock_destroy(&v->own);
  v->magic = 0;
  carom_heap_free(h, v);
}

char carom_value_typecode(const carom_value_t *v) { return v->tc; }
size_t carom_value_itemsize(const carom_value_t *v) { return v->itemsize; }
size_t carom_array_len(const carom_array_t *a) { return (size_t)a->count; }
void *carom_value_ptr(carom_value_t *v) { return DATA(v); }

/* ---------------------------------------------------------------- lock -- */

static void *lock_ptr(carom_value_t *v) {
  switch (v->lock_kind) {
    case CAROM_VALUE_LOCK_OWN: return &v->own;
    case CAROM_VALUE_LOCK_GIVEN:
    case CAROM_VALUE_RLOCK_GIVEN: return (char *)v + v->lock_off;
    default: return NULL;
  }
}

int carom_value_get_lock(carom_value_t *v, carom_value_lock_t *kind, void **lock) {
  void *l = lock_ptr(v);
  if (!l) return -EINVAL;
  if (kind) *kind = (carom_value_lock_t)v->lock_kind;
  if (lock) *lock = l;
  return 0;
}

int carom_value_acquire(carom_value_t *v, const struct timespec *deadline) {
  void *l = lock_ptr(v);
  if (!l) return -EINVAL;
  return v->lock_kind == CAROM_VALUE_LOCK_GIVEN ? carom_lock_acquire(l, deadline)
                                                : carom_rlock_acquire(l, deadline);
}

int carom_value_release(carom_value_t *v) {
  void *l = lock_ptr(v);
  if (!l) return -EINVAL;
  return v->lock_kind == CAROM_VALUE_LOCK_GIVEN ? carom_lock_release(l) : carom_rlock_release(l);
}

int carom_value_consistent(carom_value_t *v) {
  void *l = lock_ptr(v);
  if (!l) return -EINVAL;
  return v->lock_kind == CAROM_VALUE_LOCK_GIVEN ? carom_lock_consistent(l)
                                                : carom_rlock_consistent(l);
}

/* Take the lock for one access. Returns 0, or -EOWNERDEAD (held, marked
 * consistent: the access proceeds and reports it), or a failure. */
static int enter(carom_value_t *v) {
  if (v->lock_kind == CAROM_VALUE_LOCK_NONE) return 0;
  int rc = carom_value_acquire(v, NULL);
  if (rc == -EOWNERDEAD) carom_value_consistent(v);
  return rc;
}

static void leave(carom_value_t *v) {
  if (v->lock_kind != CAROM_VALUE_LOCK_NONE) carom_value_release(v);
}

/* ------------------------------------------------------------ access -- */

static int index_of(const carom_array_t *a, ptrdiff_t i, size_t *out) {
  ptrdiff_t n = (ptrdiff_t)a->count;
  if (i < 0) i += n;
  if (i < 0 || i >= n) return -EINVAL;
  *out = (size_t)i;
  return 0;
}

static int slice_of(const carom_array_t *a, ptrdiff_t start, ptrdiff_t stop, size_t *s,
                    size_t *e) {
  ptrdiff_t n = (ptrdiff_t)a->count;
  if (start < 0) start += n;
  if (stop < 0) stop += n;
  if (start < 0 || stop < start || stop > n) return -EINVAL;
  *s = (size_t)start;
  *e = (size_t)stop;
  return 0;
}

static int copy(carom_array_t *a, size_t first, size_t n, void *out, const void *in,
                bool locked) {
  int rc = locked ? 0 : enter(a);
  if (rc < 0 && rc != -EOWNERDEAD) return rc;
  char *d = DATA(a) + first * a->itemsize;
  if (out) memcpy(out, d, n * a->itemsize);
  else memcpy(d, in, n * a->itemsize);
  if (!locked) leave(a);
  return rc;
}

int carom_value_get(carom_value_t *v, void *out) { return copy(v, 0, 1, out, NULL, false); }
int carom_value_set(carom_value_t *v, const void *in) { return copy(v, 0, 1, NULL, in, false); }
int carom_value_get_locked(carom_value_t *v, void *out) { return copy(v, 0, 1, out, NULL, true); }
int carom_value_set_locked(carom_value_t *v, const void *in) {
  return copy(v, 0, 1, NULL, in, true);
}

int carom_array_get(carom_array_t *a, ptrdiff_t i, void *out) {
  size_t k;
  int rc = index_of(a, i, &k);
  return rc < 0 ? rc : copy(a, k, 1, out, NULL, false);
}

int carom_array_set(carom_array_t *a, ptrdiff_t i, const void *in) {
  size_t k;
  int rc = index_of(a, i, &k);
  return rc < 0 ? rc : copy(a, k, 1, NULL, in, false);
}

int carom_array_read(carom_array_t *a, ptrdiff_t start, ptrdiff_t stop, void *out) {
  size_t s, e;
  int rc = slice_of(a, start, stop, &s, &e);
  if (rc < 0) return rc;
  return e > s ? copy(a, s, e - s, out, NULL, false) : 0;
}

int carom_array_write(carom_array_t *a, ptrdiff_t start, ptrdiff_t stop, const void *in) {
  size_t s, e;
  int rc = slice_of(a, start, stop, &s, &e);
  if (rc < 0) return rc;
  return e > s ? copy(a, s, e - s, NULL, in, false) : 0;
}

/* ------------------------------------------------------------- typed -- */

/* The low itemsize bytes of r -> int64 (sign- or zero-extended). */
static int64_t ext(const carom_value_t *v, uint64_t r) {
  switch (v->itemsize) {
    case 1: return v->is_signed ? (int64_t)(int8_t)r : (int64_t)(uint8_t)r;
    case 2: return v->is_signed ? (int64_t)(int16_t)r : (int64_t)(uint16_t)r;
    case 4: return v->is_signed ? (int64_t)(int32_t)r : (int64_t)(uint32_t)r;
    default: return (int64_t)r;
  }
}

/* Element bytes -> int64 (sign- or zero-extended). */
static int64_t load_int(const carom_value_t *v, const void *p) {
  switch (v->itemsize) {
    case 1: return v->is_signed ? *(const int8_t *)p : *(const uint8_t *)p;
    case 2: return v->is_signed ? *(const int16_t *)p : *(const uint16_t *)p;
    case 4: return v->is_signed ? (int64_t)*(const int32_t *)p : (int64_t)*(const uint32_t *)p;
    default: return *(const int64_t *)p;
  }
}

static bool fits(const carom_value_t *v, int64_t x) {
  if (v->itemsize == 8) return v->is_signed || x >= 0;
  int bits = 8 * v->itemsize;
  if (v->is_signed) return x >= -(INT64_C(1) << (bits - 1)) && x < (INT64_C(1) << (bits - 1));
  return x >= 0 && x < (INT64_C(1) << bits);
}

int carom_array_get_i64(carom_array_t *a, ptrdiff_t i, int64_t *out) {
  if (!is_int(a)) return -EINVAL;
  uint64_t raw = 0;
  int rc = carom_array_get(a, i, &raw);
  if (rc < 0 && rc != -EOWNERDEAD) return rc;
  int64_t x = load_int(a, &raw);
  if (a->itemsize == 8 && !a->is_signed && x < 0) return -EOVERFLOW;
  *out = x;
  return rc;
}

int carom_array_set_i64(carom_array_t *a, ptrdiff_t i, int64_t val) {
  if (!is_int(a)) return -EINVAL;
  if (!fits(a, val)) return -EOVERFLOW;
  union { int8_t b; int16_t h; int32_t i; int64_t q; } u;
  switch (a->itemsize) {
    case 1: u.b = (int8_t)val; break;
    case 2: u.h = (int16_t)val; break;
    case 4: u.i = (int32_t)val; break;
    default: u.q = val; break;
  }
  return carom_array_set(a, i, &u);
}

int carom_array_get_f64(carom_array_t *a, ptrdiff_t i, double *out) {
  if (!a->is_float) return -EINVAL;
  union { float f; double d; } u;
  int rc = carom_array_get(a, i, &u);
  if (rc < 0 && rc != -EOWNERDEAD) return rc;
  *out = a->itemsize == 4 ? (double)u.f : u.d;
  return rc;
}

int carom_array_set_f64(carom_array_t *a, ptrdiff_t i, double val) {
  if (!a->is_float) return -EINVAL;
  union { float f; double d; } u;
  if (a->itemsize == 4) {
    if (val > FLT_MAX || val < -FLT_MAX) return -EOVERFLOW; /* inf/NaN pass through */
    u.f = (float)val;
  } else {
    u.d = val;
  }
  return carom_array_set(a, i, &u);
}

/* ------------------------------------------------------------ atomics -- */

int carom_value_fetch_add(carom_value_t *v, int64_t delta, int64_t *old) {
  if (!is_int(v)) return -EINVAL;
  void *p = DATA(v);
  uint64_t r;
  switch (v->itemsize) {
    case 1: r = __atomic_fetch_add((uint8_t *)p, (uint8_t)delta, __ATOMIC_SEQ_CST); break;
    case 2: r = __atomic_fetch_add((uint16_t *)p, (uint16_t)delta, __ATOMIC_SEQ_CST); break;
    case 4: r = __atomic_fetch_add((uint32_t *)p, (uint32_t)delta, __ATOMIC_SEQ_CST); break;
    default: r = __atomic_fetch_add((uint64_t *)p, (uint64_t)delta, __ATOMIC_SEQ_CST); break;
  }
  if (old) *old = ext(v, r);
  return 0;
}

int carom_value_compare_exchange(carom_value_t *v, int64_t *expected, int64_t desired) {
  if (!is_int(v) || !expected) return -EINVAL;
  void *p = DATA(v);
  bool ok;
  union { uint8_t b; uint16_t h; uint32_t i; uint64_t q; } e;
  switch (v->itemsize) {
    case 1:
      e.b = (uint8_t)*expected;
      ok = __atomic_compare_exchange_n((uint8_t *)p, &e.b, (uint8_t)desired, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
      break;
    case 2:
      e.h = (uint16_t)*expected;
      ok = __atomic_compare_exchange_n((uint16_t *)p, &e.h, (uint16_t)desired, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
      break;
    case 4:
      e.i = (uint32_t)*expected;
      ok = __atomic_compare_exchange_n((uint32_t *)p, &e.i, (uint32_t)desired, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
      break;
    default:
      e.q = (uint64_t)*expected;
      ok = __atomic_compare_exchange_n((uint64_t *)p, &e.q, (uint64_t)desired, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
      break;
  }
  if (ok) return 0;
  uint64_t cur = v->itemsize == 1 ? e.b : v->itemsize == 2 ? e.h : v->itemsize == 4 ? e.i : e.q;
  *expected = ext(v, cur);
  return -EAGAIN;
}

int carom_value_atomic_load(carom_value_t *v, int64_t *out) {
  if (!is_int(v) || !out) return -EINVAL;
  void *p = DATA(v);
  uint64_t r;
  switch (v->itemsize) {
    case 1: r = __atomic_load_n((uint8_t *)p, __ATOMIC_SEQ_CST); break;
    case 2: r = __atomic_load_n((uint16_t *)p, __ATOMIC_SEQ_CST); break;
    case 4: r = __atomic_load_n((uint32_t *)p, __ATOMIC_SEQ_CST); break;
    default: r = __atomic_load_n((uint64_t *)p, __ATOMIC_SEQ_CST); break;
  }
  *out = ext(v, r);
  return 0;
}

int carom_value_atomic_store(carom_value_t *v, int64_t val) {
  if (!is_int(v)) return -EINVAL;
  void *p = DATA(v);
  switch (v->itemsize) {
    case 1: __atomic_store_n((uint8_t *)p, (uint8_t)val, __ATOMIC_SEQ_CST); break;
    case 2: __atomic_store_n((uint16_t *)p, (uint16_t)val, __ATOMIC_SEQ_CST); break;
    case 4: __atomic_store_n((uint32_t *)p, (uint32_t)val, __ATOMIC_SEQ_CST); break;
    default: __atomic_store_n((uint64_t *)p, (uint64_t)val, __ATOMIC_SEQ_CST); break;
  }
  return 0;
}
