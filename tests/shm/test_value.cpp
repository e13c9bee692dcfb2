// tests/shm/test_value.cpp — Value/Array/RawValue/RawArray: typecodes, locks
// (own RLock, given Lock/RLock, none), bounds, typed conversions, lock-free
// counters from several processes, owner death of a lock holder.
#include <gtest/gtest.h>

#include <string.h>
#include <unistd.h>

#include <vector>

#include "carom/shm.h"
#include "testutil.h"

using namespace carom_test;

namespace {
carom_value_opts_t opts(carom_heap_t *h, carom_value_lock_t k = CAROM_VALUE_LOCK_OWN,
                        void *given = nullptr) {
  carom_value_opts_t o{};
  o.size = sizeof o;
  o.heap = h;
  o.lock = k;
  o.given = given;
  return o;
}

struct HeapFixture : ::testing::Test {
  carom_heap_t *h = nullptr;
  void SetUp() override { ASSERT_EQ(0, carom_heap_create(32 << 20, &h)); }
  void TearDown() override {
    carom_heap_stats_t st;
    EXPECT_EQ(0, carom_heap_check(h, &st));
    carom_heap_destroy(h);
  }
};
using Value = HeapFixture;
using Array = HeapFixture;
}  // namespace

TEST_F(Value, TypecodesSizesAndInitialValues) {
  struct {
    char tc;
    size_t size;
  } t[] = {{'b', 1}, {'B', 1}, {'h', 2}, {'H', 2}, {'i', 4}, {'I', 4}, {'l', sizeof(long)},
           {'L', sizeof(long)}, {'q', 8}, {'Q', 8}, {'f', 4}, {'d', 8}, {'c', 1}, {'x', 1}};
  for (auto &e : t) {
    carom_value_t *v = nullptr;
    carom_value_opts_t o = opts(h);
    ASSERT_EQ(0, carom_value_create(e.tc, nullptr, &o, &v)) << e.tc;
    EXPECT_EQ(e.tc, carom_value_typecode(v));
    EXPECT_EQ(e.size, carom_value_itemsize(v));
    EXPECT_EQ(1u, carom_array_len(v));
    EXPECT_EQ(0u, reinterpret_cast<uintptr_t>(carom_value_ptr(v)) % 16);
    carom_value_free(v);
  }
  carom_value_t *v = nullptr;
  EXPECT_EQ(-EINVAL, carom_value_create('z', nullptr, nullptr, &v));
  EXPECT_EQ(-EINVAL, carom_array_create('i', 0, nullptr, nullptr, &v));
  carom_value_opts_t bad = opts(h, CAROM_VALUE_LOCK_GIVEN, nullptr);
  EXPECT_EQ(-EINVAL, carom_value_create('i', nullptr, &bad, &v));
  int16_t init = -1234;
  ASSERT_EQ(0, carom_rawvalue_create('h', &init, h, &v));
  int16_t got = 0;
  EXPECT_EQ(0, carom_value_get(v, &got));
  EXPECT_EQ(-1234, got);
  double dinit = 2.5, dgot = 0;
  carom_value_t *d = nullptr;
  carom_value_opts_t o = opts(h);
  ASSERT_EQ(0, carom_value_create('d', &dinit, &o, &d));
  EXPECT_EQ(0, carom_value_get_f64(d, &dgot));
  EXPECT_EQ(2.5, dgot);
  carom_value_free(v);
  carom_value_free(d);
}

TEST_F(Value, TypedConversionsCheckRangeAndKind) {
  carom_value_t *b = nullptr, *Q = nullptr, *f = nullptr, *x = nullptr;
  carom_value_opts_t o = opts(h);
  ASSERT_EQ(0, carom_value_create('b', nullptr, &o, &b));
  ASSERT_EQ(0, carom_value_create('Q', nullptr, &o, &Q));
  ASSERT_EQ(0, carom_value_create('f', nullptr, &o, &f));
  ASSERT_EQ(0, carom_rawvalue_create('x', nullptr, h, &x));
  int64_t i = 0;
  EXPECT_EQ(0, carom_value_set_i64(b, -128));
  EXPECT_EQ(0, carom_value_get_i64(b, &i));
  EXPECT_EQ(-128, i);
  EXPECT_EQ(-EOVERFLOW, carom_value_set_i64(b, 128));
  EXPECT_EQ(-EOVERFLOW, carom_value_set_i64(b, -129));
  EXPECT_EQ(0, carom_value_get_i64(b, &i));
  EXPECT_EQ(-128, i);  // unchanged by the refused sets
  EXPECT_EQ(-EOVERFLOW, carom_value_set_i64(Q, -1));
  uint64_t big = UINT64_MAX;
  EXPECT_EQ(0, carom_value_set(Q, &big));
  EXPECT_EQ(-EOVERFLOW, carom_value_get_i64(Q, &i));
  EXPECT_EQ(-EINVAL, carom_value_set_i64(f, 1));
  EXPECT_EQ(-EINVAL, carom_value_fetch_add(f, 1, nullptr));
  EXPECT_EQ(-EOVERFLOW, carom_value_set_f64(f, 1e300));
  EXPECT_EQ(0, carom_value_set_f64(f, 0.5));
  double d = 0;
  EXPECT_EQ(0, carom_value_get_f64(f, &d));
  EXPECT_EQ(0.5, d);
  EXPECT_EQ(-EINVAL, carom_value_get_f64(b, &d));
  EXPECT_EQ(-EINVAL, carom_value_get_i64(x, &i));
  EXPECT_EQ(-EINVAL, carom_value_fetch_add(x, 1, nullptr));
  for (carom_value_t *v : {b, Q, f, x}) carom_value_free(v);
}

TEST_F(Value, LocksOwnGivenAndNone) {
  carom_value_t *own = nullptr, *gl = nullptr, *grl = nullptr, *raw = nullptr, *nolock = nullptr;
  carom_lock_t *l = nullptr;
  carom_rlock_t *rl = nullptr;
  ASSERT_EQ(0, carom_heap_new_lock(h, &l));
  ASSERT_EQ(0, carom_heap_new_rlock(h, &rl));
  carom_value_opts_t o1 = opts(h), o2 = opts(h, CAROM_VALUE_LOCK_GIVEN, l),
                     o3 = opts(h, CAROM_VALUE_RLOCK_GIVEN, rl), o4 = opts(h, CAROM_VALUE_LOCK_NONE);
  ASSERT_EQ(0, carom_value_create('i', nullptr, &o1, &own));
  ASSERT_EQ(0, carom_value_create('i', nullptr, &o2, &gl));
  ASSERT_EQ(0, carom_value_create('i', nullptr, &o3, &grl));
  ASSERT_EQ(0, carom_value_create('i', nullptr, &o4, &nolock));
  ASSERT_EQ(0, carom_rawvalue_create('i', nullptr, h, &raw));
  carom_value_lock_t k;
  void *lp = nullptr;
  ASSERT_EQ(0, carom_value_get_lock(own, &k, &lp));
  EXPECT_EQ(CAROM_VALUE_LOCK_OWN, k);
  ASSERT_EQ(0, carom_value_get_lock(gl, &k, &lp));
  EXPECT_EQ(CAROM_VALUE_LOCK_GIVEN, k);
  EXPECT_EQ(static_cast<void *>(l), lp);
  ASSERT_EQ(0, carom_value_get_lock(grl, &k, &lp));
  EXPECT_EQ(CAROM_VALUE_RLOCK_GIVEN, k);
  EXPECT_EQ(static_cast<void *>(rl), lp);
  EXPECT_EQ(-EINVAL, carom_value_get_lock(raw, &k, &lp));
  EXPECT_EQ(-EINVAL, carom_value_get_lock(nolock, &k, &lp));
  EXPECT_EQ(-EINVAL, carom_value_acquire(raw, nullptr));

  // The own lock is an RLock: a holder may call the locking accessors.
  ASSERT_EQ(0, carom_value_acquire(own, nullptr));
  EXPECT_EQ(0, carom_value_set_i64(own, 5));
  EXPECT_EQ(0, carom_value_release(own));
  // A given plain Lock is really taken by the accessors (not recursive).
  ASSERT_EQ(0, carom_value_acquire(gl, nullptr));
  EXPECT_TRUE(carom_lock_locked(l));
  int32_t x = 9;
  EXPECT_EQ(0, carom_value_set_locked(gl, &x));
  EXPECT_EQ(0, carom_value_release(gl));
  EXPECT_FALSE(carom_lock_locked(l));
  EXPECT_EQ(CAROM_ENOTLOCKED, carom_value_release(gl));
  int64_t i = 0;
  EXPECT_EQ(0, carom_value_get_i64(gl, &i));
  EXPECT_EQ(9, i);
  for (carom_value_t *v : {own, gl, grl, raw, nolock}) carom_value_free(v);
  EXPECT_EQ(0, carom_heap_free(h, l));
  EXPECT_EQ(0, carom_heap_free(h, rl));
}

TEST_F(Value, ForkedChildrenIncrementUnderTheLockExactly) {
  for (carom_value_lock_t kind : {CAROM_VALUE_LOCK_OWN, CAROM_VALUE_LOCK_GIVEN}) {
    carom_lock_t *l = nullptr;
    ASSERT_EQ(0, carom_heap_new_lock(h, &l));
    carom_value_opts_t o = opts(h, kind, l);
    carom_value_t *v = nullptr;
    ASSERT_EQ(0, carom_value_create('q', nullptr, &o, &v));
    const int kProcs = 4, kIters = 25000;
    std::vector<pid_t> kids;
    for (int p = 0; p < kProcs; p++)
      kids.push_back(fork_child([&] {
        for (int j = 0; j < kIters; j++) {
          if (carom_value_acquire(v, nullptr) != 0) return 2;
          int64_t x;
          if (carom_value_get_locked(v, &x) != 0) return 3;
          x++;
          if (carom_value_set_locked(v, &x) != 0) return 4;
          if (carom_value_release(v) != 0) return 5;
        }
        return 0;
      }));
    for (pid_t k : kids) EXPECT_EQ(0, reap_code(k, 120));
    int64_t x = 0;
    EXPECT_EQ(0, carom_value_get_i64(v, &x));
    EXPECT_EQ(int64_t(kProcs) * kIters, x) << "lock kind " << kind;
    carom_value_free(v);
    EXPECT_EQ(0, carom_heap_free(h, l));
  }
}

TEST_F(Value, AtomicCountersFromFourProcessesTimesOneMillionAreExact) {
  carom_value_t *q = nullptr, *I = nullptr, *hh = nullptr;
  ASSERT_EQ(0, carom_rawvalue_create('q', nullptr, h, &q));
  carom_value_opts_t o = opts(h);
  ASSERT_EQ(0, carom_value_create('I', nullptr, &o, &I));
  ASSERT_EQ(0, carom_value_create('h', nullptr, &o, &hh));
  const int kProcs = 4, kIters = 1000000;
  std::vector<pid_t> kids;
  for (int p = 0; p < kProcs; p++)
    kids.push_back(fork_child([&] {
      for (int j = 0; j < kIters; j++) {
        if (carom_value_fetch_add(q, 1, nullptr) != 0) return 2;
        carom_value_fetch_add(I, 3, nullptr);
        carom_value_fetch_add(hh, 1, nullptr);
      }
      return 0;
    }));
  for (pid_t k : kids) EXPECT_EQ(0, reap_code(k, 120));
  int64_t x = 0;
  EXPECT_EQ(0, carom_value_atomic_load(q, &x));
  EXPECT_EQ(int64_t(kProcs) * kIters, x);
  EXPECT_EQ(0, carom_value_atomic_load(I, &x));
  EXPECT_EQ(int64_t(kProcs) * kIters * 3, x);
  // int16 wraps modulo 2^16: 4M mod 65536 = 2304.
  EXPECT_EQ(0, carom_value_atomic_load(hh, &x));
  EXPECT_EQ(int64_t((kProcs * kIters) % 65536), x);
  for (carom_value_t *v : {q, I, hh}) carom_value_free(v);
}

TEST_F(Value, CompareExchangeAndWrapInTheElementWidth) {
  carom_value_t *b = nullptr;
  int8_t init = 127;
  ASSERT_EQ(0, carom_rawvalue_create('b', &init, h, &b));
  int64_t old = 0;
  EXPECT_EQ(0, carom_value_fetch_add(b, 1, &old));
  EXPECT_EQ(127, old);
  EXPECT_EQ(0, carom_value_atomic_load(b, &old));
  EXPECT_EQ(-128, old);
  int64_t expected = 5;
  EXPECT_EQ(-EAGAIN, carom_value_compare_exchange(b, &expected, 7));
  EXPECT_EQ(-128, expected);
  EXPECT_EQ(0, carom_value_compare_exchange(b, &expected, 7));
  EXPECT_EQ(0, carom_value_atomic_load(b, &old));
  EXPECT_EQ(7, old);
  EXPECT_EQ(0, carom_value_atomic_store(b, -1));
  carom_value_t *B = nullptr;
  ASSERT_EQ(0, carom_rawvalue_create('B', nullptr, h, &B));
  EXPECT_EQ(0, carom_value_fetch_add(B, -1, &old));
  EXPECT_EQ(0, carom_value_atomic_load(B, &old));
  EXPECT_EQ(255, old);
  carom_value_free(b);
  carom_value_free(B);
}

TEST_F(Value, HolderDeathIsReportedAndTheAccessStillHappens) {
  carom_value_t *v = nullptr;
  carom_value_opts_t o = opts(h);
  ASSERT_EQ(0, carom_value_create('i', nullptr, &o, &v));
  pid_t c = fork_child([&] {
    if (carom_value_acquire(v, nullptr) != 0) return 2;
    _exit(0);  // dies holding the Value's lock
  });
  ASSERT_EQ(0, reap_code(c));
  EXPECT_EQ(-EOWNERDEAD, carom_value_set_i64(v, 42));
  int64_t x = 0;
  EXPECT_EQ(0, carom_value_get_i64(v, &x));
  EXPECT_EQ(42, x);
  carom_value_free(v);
}

TEST_F(Array, ElementsSlicesAndBounds) {
  int32_t init[10];
  for (int i = 0; i < 10; i++) init[i] = i * i;
  carom_array_t *a = nullptr;
  carom_value_opts_t o = opts(h);
  ASSERT_EQ(0, carom_array_create('i', 10, init, &o, &a));
  EXPECT_EQ(10u, carom_array_len(a));
  int32_t x = 0;
  EXPECT_EQ(0, carom_array_get(a, 3, &x));
  EXPECT_EQ(9, x);
  EXPECT_EQ(0, carom_array_get(a, -1, &x));
  EXPECT_EQ(81, x);
  EXPECT_EQ(-EINVAL, carom_array_get(a, 10, &x));
  EXPECT_EQ(-EINVAL, carom_array_get(a, -11, &x));
  x = -7;
  EXPECT_EQ(0, carom_array_set(a, -10, &x));
  EXPECT_EQ(-EINVAL, carom_array_set(a, 10, &x));
  int32_t out[10] = {};
  EXPECT_EQ(0, carom_array_read(a, 0, 10, out));
  EXPECT_EQ(-7, out[0]);
  EXPECT_EQ(81, out[9]);
  int32_t in[3] = {100, 200, 300};
  EXPECT_EQ(0, carom_array_write(a, -4, -1, in));  // elements 6, 7, 8
  EXPECT_EQ(0, carom_array_read(a, 5, 10, out));
  EXPECT_EQ(25, out[0]);
  EXPECT_EQ(100, out[1]);
  EXPECT_EQ(300, out[3]);
  EXPECT_EQ(81, out[4]);
  EXPECT_EQ(-EINVAL, carom_array_read(a, 5, 11, out));
  EXPECT_EQ(-EINVAL, carom_array_read(a, 6, 5, out));
  EXPECT_EQ(-EINVAL, carom_array_write(a, -11, 2, in));
  EXPECT_EQ(0, carom_array_read(a, 4, 4, out));  // empty slice
  int64_t i64 = 0;
  EXPECT_EQ(0, carom_array_get_i64(a, 7, &i64));
  EXPECT_EQ(200, i64);
  EXPECT_EQ(-EINVAL, carom_array_get_i64(a, 70, &i64));
  carom_array_free(a);

  carom_array_t *raw = nullptr;
  ASSERT_EQ(0, carom_rawarray_create('x', 1 << 16, nullptr, h, &raw));
  auto *bytes = static_cast<unsigned char *>(carom_value_ptr(raw));
  for (int i = 0; i < (1 << 16); i++) ASSERT_EQ(0, bytes[i]);
  EXPECT_EQ(0, carom_array_write(raw, 100, 105, "hello"));
  char s[6] = {};
  EXPECT_EQ(0, carom_array_read(raw, 100, 105, s));
  EXPECT_STREQ("hello", s);
  carom_array_free(raw);
}

TEST_F(Array, ForkedChildrenUpdateSlicesUnderTheLockExactly) {
  carom_array_t *a = nullptr;
  carom_value_opts_t o = opts(h);
  ASSERT_EQ(0, carom_array_create('Q', 16, nullptr, &o, &a));
  const int kProcs = 4, kIters = 5000;
  std::vector<pid_t> kids;
  for (int p = 0; p < kProcs; p++)
    kids.push_back(fork_child([&] {
      uint64_t buf[16];
      for (int j = 0; j < kIters; j++) {
        if (carom_value_acquire(a, nullptr) != 0) return 2;
        // The own lock is recursive, so the locking accessors work inside.
        if (carom_array_read(a, 0, 16, buf) != 0) return 3;
        for (int k = 0; k < 16; k++) buf[k] += uint64_t(k + 1);
        if (carom_array_write(a, 0, 16, buf) != 0) return 4;
        if (carom_value_release(a) != 0) return 5;
      }
      return 0;
    }));
  for (pid_t k : kids) EXPECT_EQ(0, reap_code(k, 120));
  uint64_t buf[16];
  ASSERT_EQ(0, carom_array_read(a, 0, 16, buf));
  for (int k = 0; k < 16; k++) EXPECT_EQ(uint64_t(kProcs) * kIters * uint64_t(k + 1), buf[k]);
  carom_array_free(a);
}
