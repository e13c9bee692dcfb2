// tests/ipc/test_queue.cpp — Queue, JoinableQueue, SimpleQueue: Python's
// semantics (Full/Empty, timeouts, close), exact delivery with 4 producers x 4
// consumers (processes and threads), exit with unread items, and a soak that
// SIGKILLs producers and consumers at random moments under load with exact
// accounting of every item.
#include <gtest/gtest.h>
#include <limits.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "carom/queue.h"
#include "testutil.h"

using namespace carom_test;

namespace {

// ---- checksummed items of random size ----

struct ItemHdr {
  uint32_t role;
  uint32_t len;
  uint64_t seq;
  uint64_t sum;
};

uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

uint64_t checksum(const unsigned char *p, size_t n, uint64_t h) {
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

// Item `seq` of producer `role`: a size in [sizeof(ItemHdr), max_len] and
// bytes both derived from (role, seq), with a checksum over everything.
size_t make_item(uint32_t role, uint64_t seq, size_t max_len, unsigned char *buf) {
  size_t span = max_len - sizeof(ItemHdr) + 1;
  size_t len = sizeof(ItemHdr) + (size_t)(mix(role * 1000003ull + seq) % span);
  ItemHdr h{role, (uint32_t)len, seq, 0};
  for (size_t i = sizeof h; i < len; i++) buf[i] = (unsigned char)(seq * 131 + role * 7 + i);
  h.sum = checksum(buf + sizeof h, len - sizeof h, mix(role ^ (seq << 8) ^ len));
  memcpy(buf, &h, sizeof h);
  return len;
}

bool check_item(const unsigned char *buf, ssize_t n, uint32_t *role, uint64_t *seq) {
  if (n < (ssize_t)sizeof(ItemHdr)) return false;
  ItemHdr h;
  memcpy(&h, buf, sizeof h);
  if (h.len != (uint32_t)n) return false;
  if (h.sum != checksum(buf + sizeof h, (size_t)n - sizeof h, mix(h.role ^ (h.seq << 8) ^ h.len)))
    return false;
  *role = h.role;
  *seq = h.seq;
  return true;
}

carom_queue_t *make_queue(size_t maxsize, size_t max_item, bool joinable = false) {
  carom_queue_opts_t o{sizeof o, maxsize, max_item, 0, joinable ? 1 : 0};
  carom_queue_t *q = nullptr;
  if (carom_queue_create(&o, &q) != 0) abort();
  return q;
}

template <typename T>
T *shared_new() {
  return new (shared_alloc(sizeof(T))) T();
}

}  // namespace

TEST(Queue, FullEmptyNowaitAndSizeErrors) {
  carom_queue_t *q = make_queue(3, 16);
  EXPECT_EQ(3u, carom_queue_maxsize(q));
  EXPECT_EQ(16u, carom_queue_max_item(q));
  EXPECT_TRUE(carom_queue_empty(q));
  char buf[16];
  EXPECT_EQ(CAROM_EEMPTY, carom_queue_get_nowait(q, buf, sizeof buf));
  for (int i = 0; i < 3; i++) ASSERT_EQ(0, carom_queue_put_nowait(q, &i, sizeof i));
  EXPECT_TRUE(carom_queue_full(q));
  EXPECT_EQ(3u, carom_queue_qsize(q));
  EXPECT_EQ(CAROM_EFULL, carom_queue_put_nowait(q, "x", 1));
  char big[17] = {0};
  EXPECT_EQ(CAROM_EMSGSIZE, carom_queue_put_nowait(q, big, 17));
  EXPECT_EQ(CAROM_EMSGSIZE, carom_queue_put(q, big, 17, nullptr));  // synchronous, even when full
  EXPECT_EQ(CAROM_ETOOSHORT, carom_queue_get_nowait(q, buf, 3));
  for (int i = 0; i < 3; i++) {
    int v = -1;
    ASSERT_EQ((ssize_t)sizeof v, carom_queue_get_nowait(q, &v, sizeof v));
    EXPECT_EQ(i, v);
  }
  EXPECT_TRUE(carom_queue_empty(q));
  carom_ring_stats_t st;
  carom_queue_stats(q, &st);
  EXPECT_EQ(3u, st.puts);
  EXPECT_EQ(3u, st.gets);
  carom_queue_free(q);
  carom_queue_free(nullptr);
}

TEST(Queue, TimeoutsReturnFullAndEmpty) {
  carom_queue_t *q = make_queue(1, 8);
  char buf[8];
  timespec ts;
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(CAROM_EEMPTY, carom_queue_get(q, buf, sizeof buf, carom_deadline(0.05, &ts)));
  double el = (double)(carom_now_ns() - t0) / 1e9;
  EXPECT_GE(el, 0.05);
  EXPECT_LT(el, 1.0 * slow_factor());
  ASSERT_EQ(0, carom_queue_put(q, "a", 1, carom_deadline(0, &ts)));
  t0 = carom_now_ns();
  EXPECT_EQ(CAROM_EFULL, carom_queue_put(q, "b", 1, carom_deadline(0.05, &ts)));
  el = (double)(carom_now_ns() - t0) / 1e9;
  EXPECT_GE(el, 0.05);
  EXPECT_LT(el, 1.0 * slow_factor());
  EXPECT_EQ(CAROM_EFULL, carom_queue_put(q, "b", 1, carom_deadline(-1, &ts)));
  carom_queue_free(q);
}

TEST(Queue, MaxsizeZeroIsBoundedByCapacityBytes) {
  carom_queue_opts_t o{sizeof o, 0, 100, 10000, 0};
  carom_queue_t *q = nullptr;
  ASSERT_EQ(0, carom_queue_create(&o, &q));
  size_t slots = carom_queue_maxsize(q);
  EXPECT_GE(slots, 50u);  // 10000 bytes of 100-byte items plus slot headers
  EXPECT_LE(slots, 100u);
  size_t n = 0;
  while (carom_queue_put_nowait(q, "x", 1) == 0) n++;
  EXPECT_EQ(slots, n);
  carom_queue_free(q);
  carom_queue_opts_t bad{sizeof bad - 1, 0, 0, 0, 0};
  EXPECT_EQ(-EINVAL, carom_queue_create(&bad, &q));
}

TEST(Queue, InitInCallerMemoryAndAttach) {
  carom_queue_opts_t o{sizeof o, 8, 32, 0, 0};
  size_t sz = carom_queue_footprint(&o);
  ASSERT_GT(sz, 8u * 32);
  void *mem = shared_alloc(sz);
  EXPECT_EQ(nullptr, carom_queue_attach(mem));
  carom_queue_t *q = nullptr;
  EXPECT_EQ(-EINVAL, carom_queue_init(mem, sz - 1, &o, &q));
  ASSERT_EQ(0, carom_queue_init(mem, sz, &o, &q));
  pid_t c = fork_child([&] {
    carom_queue_t *cq = carom_queue_attach(mem);
    return cq && carom_queue_put(cq, "hi", 2, nullptr) == 0 ? 0 : 1;
  });
  EXPECT_EQ(0, reap_code(c));
  char buf[32];
  EXPECT_EQ(2, carom_queue_get(q, buf, sizeof buf, nullptr));
  carom_queue_destroy(q);
  shared_free(mem, sz);
}

TEST(Queue, CloseWakesBlockedGetterAndPutterThenDrains) {
  carom_queue_t *q = make_queue(1, 8);
  auto *ready = shared_new<std::atomic<int>>();
  ChildGuard getter(fork_child([&] {
    char buf[8];
    ready->fetch_add(1);
    return carom_queue_get(q, buf, sizeof buf, nullptr) == CAROM_ECLOSED ? 0 : 1;
  }));
  ASSERT_TRUE(wait_until([&] { return ready->load() == 1; }));
  ASSERT_TRUE(wait_until_sleeping(getter.pid()));  // blocked in get, not yet there
  carom_queue_close(q);
  EXPECT_EQ(0, reap_code(getter, 10));
  EXPECT_TRUE(carom_queue_closed(q));
  EXPECT_EQ(CAROM_ECLOSED, carom_queue_put(q, "x", 1, nullptr));
  carom_queue_free(q);

  q = make_queue(1, 8);
  ASSERT_EQ(0, carom_queue_put(q, "a", 1, nullptr));
  ChildGuard putter(fork_child([&] {
    ready->fetch_add(1);
    return carom_queue_put(q, "b", 1, nullptr) == CAROM_ECLOSED ? 0 : 1;
  }));
  ASSERT_TRUE(wait_until([&] { return ready->load() == 2; }));
  ASSERT_TRUE(wait_until_sleeping(putter.pid()));  // blocked in put on the full queue
  carom_queue_close(q);
  EXPECT_EQ(0, reap_code(putter, 10));
  char buf[8];
  EXPECT_EQ(1, carom_queue_get(q, buf, sizeof buf, nullptr));  // drained after close
  EXPECT_EQ('a', buf[0]);
  EXPECT_EQ(CAROM_ECLOSED, carom_queue_get(q, buf, sizeof buf, nullptr));
  carom_queue_free(q);
  shared_free(ready, sizeof *ready);
}

// USER-PAIN P14: a producer that exits with 10 000 unread items exits at
// once (nothing is buffered in it), and nothing it put is lost.
TEST(Queue, ProducerExitsAtOnceWithUnreadItemsAndNothingIsLost) {
  const int n = 10000;
  carom_queue_t *q = make_queue(n, 1024);
  auto *done_ns = shared_new<std::atomic<uint64_t>>();
  pid_t c = fork_child([&] {
    std::vector<unsigned char> item(1024);
    for (int i = 0; i < n; i++) {
      memcpy(item.data(), &i, sizeof i);
      if (carom_queue_put(q, item.data(), item.size(), nullptr) != 0) return 1;
    }
    done_ns->store(carom_now_ns());
    return 0;
  });
  ASSERT_EQ(0, reap_code(c, 30));
  double exit_s = (double)(carom_now_ns() - done_ns->load()) / 1e9;
  EXPECT_LT(exit_s, 0.1 * slow_factor());
  std::vector<unsigned char> buf(1024);
  for (int i = 0; i < n; i++) {
    ASSERT_EQ(1024, carom_queue_get_nowait(q, buf.data(), buf.size()));
    int v;
    memcpy(&v, buf.data(), sizeof v);
    ASSERT_EQ(i, v);
  }
  carom_queue_free(q);
  shared_free(done_ns, sizeof *done_ns);
}

// ---- exact delivery, 4 producers x 4 consumers ----

namespace {

constexpr int kRoles = 4;
constexpr uint64_t kPerProducer = 100000;
constexpr size_t kMaxItem = 512;

struct Exact {
  std::atomic<uint8_t> recv[kRoles][kPerProducer];
  std::atomic<int> bad;
};

int produce(carom_queue_t *q, uint32_t role) {
  unsigned char buf[kMaxItem];
  for (uint64_t s = 0; s < kPerProducer; s++) {
    size_t len = make_item(role, s, kMaxItem, buf);
    if (carom_queue_put(q, buf, len, nullptr) != 0) return 1;
  }
  return 0;
}

int consume(carom_queue_t *q, Exact *ex) {
  unsigned char buf[kMaxItem];
  int64_t last[kRoles] = {-1, -1, -1, -1};
  for (;;) {
    ssize_t n = carom_queue_get(q, buf, sizeof buf, nullptr);
    if (n == CAROM_ECLOSED) return 0;
    uint32_t role;
    uint64_t seq;
    if (!check_item(buf, n, &role, &seq) || role >= kRoles || seq >= kPerProducer) {
      ex->bad++;
      return 2;
    }
    if ((int64_t)seq <= last[role]) ex->bad++;  // per-producer order
    last[role] = (int64_t)seq;
    ex->recv[role][seq]++;
  }
}

void check_exact(Exact *ex) {
  EXPECT_EQ(0, ex->bad.load());
  uint64_t wrong = 0;
  for (int r = 0; r < kRoles; r++)
    for (uint64_t s = 0; s < kPerProducer; s++)
      if (ex->recv[r][s].load() != 1) wrong++;
  EXPECT_EQ(0u, wrong);
}

}  // namespace

TEST(Queue, ExactDelivery4x4ProcessesRandomSizes) {
  carom_queue_t *q = make_queue(64, kMaxItem);
  Exact *ex = shared_new<Exact>();
  std::vector<pid_t> prods, cons;
  for (int c = 0; c < kRoles; c++) cons.push_back(fork_child([&] { return consume(q, ex); }));
  for (uint32_t p = 0; p < kRoles; p++) prods.push_back(fork_child([&, p] { return produce(q, p); }));
  for (pid_t p : prods) EXPECT_EQ(0, reap_code(p, 120));
  carom_queue_close(q);
  for (pid_t c : cons) EXPECT_EQ(0, reap_code(c, 60));
  check_exact(ex);
  carom_ring_stats_t st;
  carom_queue_stats(q, &st);
  EXPECT_EQ(kRoles * kPerProducer, st.puts);
  EXPECT_EQ(kRoles * kPerProducer, st.gets);
  EXPECT_EQ(0u, st.lost_puts + st.lost_gets);
  shared_free(ex, sizeof *ex);
  carom_queue_free(q);
}

TEST(Queue, ExactDelivery4x4ThreadsRandomSizes) {
  carom_queue_t *q = make_queue(64, kMaxItem);
  auto ex = std::make_unique<Exact>();
  std::vector<std::thread> prods, cons;
  std::atomic<int> fails{0};
  for (int c = 0; c < kRoles; c++)
    cons.emplace_back([&] { fails += consume(q, ex.get()); });
  for (uint32_t p = 0; p < kRoles; p++) prods.emplace_back([&, p] { fails += produce(q, p); });
  for (auto &t : prods) t.join();
  carom_queue_close(q);
  for (auto &t : cons) t.join();
  EXPECT_EQ(0, fails.load());
  check_exact(ex.get());
  carom_queue_free(q);
}

// ---- kill soak ----

namespace {

constexpr uint64_t kSoakMax = 1 << 22;  // per producer role

struct Soak {
  std::atomic<uint8_t> recv[kRoles][kSoakMax];
  std::atomic<int64_t> next[kRoles];     // first seq not yet known to be put
  std::atomic<int64_t> attempt[kRoles];  // seq a put is in progress for
  std::atomic<uint64_t> received;
  std::atomic<int> torn, disorder, stop;
};

int soak_producer(carom_queue_t *q, Soak *s, uint32_t role) {
  unsigned char buf[256];
  int64_t seq = s->next[role].load();
  timespec ts;
  while (!s->stop.load(std::memory_order_relaxed)) {
    if (seq >= (int64_t)kSoakMax) {  // out of item numbers: idle until stopped
      sched_yield();
      continue;
    }
    s->attempt[role].store(seq);
    size_t len = make_item(role, (uint64_t)seq, sizeof buf, buf);
    int rc = carom_queue_put(q, buf, len, carom_deadline(0.02, &ts));
    if (rc == CAROM_EFULL) continue;  // not queued: retry the same seq
    if (rc != 0) return 4;
    s->next[role].store(++seq);
  }
  return 0;
}

int soak_consumer(carom_queue_t *q, Soak *s) {
  unsigned char buf[256];
  int64_t last[kRoles] = {-1, -1, -1, -1};
  timespec ts;
  for (;;) {
    ssize_t n = carom_queue_get(q, buf, sizeof buf, carom_deadline(0.02, &ts));
    if (n == CAROM_ECLOSED) return 0;
    if (n == CAROM_EEMPTY) continue;
    uint32_t role;
    uint64_t seq;
    if (!check_item(buf, n, &role, &seq) || role >= kRoles || seq >= kSoakMax) {
      s->torn++;
      continue;
    }
    if ((int64_t)seq <= last[role]) s->disorder++;
    last[role] = (int64_t)seq;
    s->recv[role][seq]++;
    s->received++;
  }
}

}  // namespace

// Producers and consumers (4 + 4 processes) run flat out on a small queue
// while the test SIGKILLs one of them at a random moment every few ms and
// starts a replacement, for a bounded time. Afterwards every item is
// accounted for: received exactly once, or attributable to a killed
// producer's unfinished put (at most one item per kill: the seq it was
// putting) or to a killed consumer's unfinished get (at most one per kill).
// No item may be torn, duplicated, or reordered within one consumer.
TEST(Queue, KillSoakAtRandomMomentsExactAccounting) {
  carom_queue_t *q = make_queue(32, 256);
  Soak *s = shared_new<Soak>();
  for (int r = 0; r < kRoles; r++) {
    s->next[r] = 0;
    s->attempt[r] = -1;
  }
  std::vector<std::vector<int64_t>> ambiguous(kRoles);
  ChildGuard prod[kRoles], cons[kRoles];
  auto spawn_prod = [&](uint32_t r) {
    prod[r].reset(fork_child([&, r] { return soak_producer(q, s, r); }));
  };
  auto spawn_cons = [&](int c) { cons[c].reset(fork_child([&] { return soak_consumer(q, s); })); };
  for (int r = 0; r < kRoles; r++) {
    spawn_prod((uint32_t)r);
    spawn_cons(r);
  }
  std::mt19937 rng(12345);
  int producer_kills = 0, consumer_kills = 0;
  double max_stall = 0;
  const uint64_t t_end = carom_now_ns() + 5000000000ull;
  auto numbers_left = [&] {  // stop early rather than run producers dry
    for (int r = 0; r < kRoles; r++)
      if (s->next[r].load() > (int64_t)(kSoakMax * 9 / 10)) return false;
    return true;
  };
  while (carom_now_ns() < t_end && numbers_left()) {
    usleep(1000 + rng() % 4000);  // the kill schedule, not synchronisation
    int victim = (int)(rng() % (2 * kRoles));
    uint64_t before = s->received.load();
    if (victim < kRoles) {
      kill(prod[victim].pid(), SIGKILL);
      int st = reap(prod[victim], 10);
      ASSERT_TRUE(WIFSIGNALED(st)) << "producer exited early: " << st;
      producer_kills++;
      int64_t a = s->attempt[victim].load(), n = s->next[victim].load();
      if (a == n) {  // killed with that put in progress (or just finished)
        ambiguous[victim].push_back(a);
        s->next[victim] = a + 1;  // the replacement never repeats it
      }
      spawn_prod((uint32_t)victim);
    } else {
      int c = victim - kRoles;
      kill(cons[c].pid(), SIGKILL);
      int st = reap(cons[c], 10);
      ASSERT_TRUE(WIFSIGNALED(st)) << "consumer exited early: " << st;
      consumer_kills++;
      spawn_cons(c);
    }
    // The survivors keep going: items keep arriving after every kill.
    uint64_t t0 = carom_now_ns();
    while (s->received.load() == before &&
           carom_now_ns() - t0 < (uint64_t)(5e9 * slow_factor()))
      sched_yield();
    double stall = (double)(carom_now_ns() - t0) / 1e9;
    if (stall > max_stall) max_stall = stall;
  }
  s->stop = 1;
  for (int r = 0; r < kRoles; r++) EXPECT_EQ(0, reap_code(prod[r], 10));
  carom_queue_close(q);
  for (int c = 0; c < kRoles; c++) EXPECT_EQ(0, reap_code(cons[c], 10));

  EXPECT_EQ(0, s->torn.load());
  EXPECT_EQ(0, s->disorder.load());
  uint64_t missing = 0, dup = 0, beyond = 0, ok = 0, amb_seen = 0;
  for (int r = 0; r < kRoles; r++) {
    int64_t n = s->next[r].load();
    std::vector<bool> amb((size_t)n + 1, false);
    for (int64_t a : ambiguous[r]) amb[(size_t)a] = true;
    for (int64_t i = 0; i < (int64_t)kSoakMax; i++) {
      uint8_t c = s->recv[r][i].load();
      if (c > 1) dup++;
      if (i >= n) {
        if (c) beyond++;
        continue;
      }
      if (amb[(size_t)i]) {
        amb_seen += c;
        continue;
      }
      if (c == 1) ok++;
      else if (c == 0) missing++;
    }
  }
  carom_ring_stats_t st;
  carom_queue_stats(q, &st);
  EXPECT_EQ(0u, dup);
  EXPECT_EQ(0u, beyond);
  // Each killed consumer can have taken at most one item with it.
  EXPECT_LE(missing, (uint64_t)consumer_kills);
  EXPECT_LE(st.lost_puts, (uint64_t)producer_kills);
  EXPECT_LE(st.lost_gets, (uint64_t)consumer_kills);
  EXPECT_GT(ok, 10000u);
  EXPECT_LT(max_stall, 1.0 * slow_factor());
  printf("soak: %llu delivered, %d producer kills (%llu ambiguous puts delivered), "
         "%d consumer kills, %llu items lost with consumers, ring lost_puts=%llu lost_gets=%llu, "
         "max stall after a kill %.1f ms\n",
         (unsigned long long)ok, producer_kills, (unsigned long long)amb_seen, consumer_kills,
         (unsigned long long)missing, (unsigned long long)st.lost_puts,
         (unsigned long long)st.lost_gets, max_stall * 1e3);
  shared_free(s, sizeof *s);
  carom_queue_free(q);
}

// ---- JoinableQueue ----

TEST(JoinableQueue, TaskDoneJoinAndTooManyTaskDone) {
  carom_queue_t *plain = make_queue(4, 8);
  EXPECT_EQ(-EINVAL, carom_queue_task_done(plain));
  EXPECT_EQ(-EINVAL, carom_queue_join(plain, nullptr));
  carom_queue_free(plain);

  carom_queue_t *q = make_queue(4, 8, true);
  EXPECT_EQ(CAROM_ETASKDONE, carom_queue_task_done(q));
  EXPECT_EQ(0, carom_queue_join(q, nullptr));  // nothing unfinished
  for (int i = 0; i < 3; i++) ASSERT_EQ(0, carom_queue_put(q, &i, sizeof i, nullptr));
  EXPECT_EQ(3u, carom_queue_unfinished(q));
  EXPECT_EQ(CAROM_EMSGSIZE, carom_queue_put_nowait(q, "123456789", 9));  // not counted
  EXPECT_EQ(3u, carom_queue_unfinished(q));
  timespec ts;
  EXPECT_EQ(-ETIMEDOUT, carom_queue_join(q, carom_deadline(0.02, &ts)));
  auto *got = shared_new<std::atomic<int>>();
  pid_t c = fork_child([&] {
    for (int i = 0; i < 3; i++) {
      int v;
      if (carom_queue_get(q, &v, sizeof v, nullptr) != sizeof v || v != i) return 1;
      got->fetch_add(1);
      if (carom_queue_task_done(q) != 0) return 2;
    }
    return 0;
  });
  EXPECT_EQ(0, carom_queue_join(q, nullptr));
  EXPECT_EQ(3, got->load());  // join returned only after all three were done
  EXPECT_EQ(0, reap_code(c));
  EXPECT_EQ(0u, carom_queue_unfinished(q));
  EXPECT_EQ(CAROM_ETASKDONE, carom_queue_task_done(q));
  shared_free(got, sizeof *got);
  carom_queue_free(q);
}

// ---- SimpleQueue ----

TEST(SimpleQueue, PutGetEmptyErrorsAndClose) {
  int fds0 = count_fds();
  carom_simplequeue_t *q = nullptr;
  EXPECT_EQ(-EINVAL, carom_simplequeue_create(0, &q));
  ASSERT_EQ(0, carom_simplequeue_create(100, &q));
  EXPECT_TRUE(carom_simplequeue_empty(q));
  char big[101] = {0};
  EXPECT_EQ(CAROM_EMSGSIZE, carom_simplequeue_put(q, big, 101));
  ASSERT_EQ(0, carom_simplequeue_put(q, "hello", 5));
  ASSERT_EQ(0, carom_simplequeue_put(q, "", 0));
  EXPECT_FALSE(carom_simplequeue_empty(q));
  char buf[100];
  EXPECT_EQ(CAROM_ETOOSHORT, carom_simplequeue_get(q, buf, 2));
  EXPECT_EQ(5, carom_simplequeue_get(q, buf, sizeof buf));  // the same item, retried
  EXPECT_EQ(0, memcmp(buf, "hello", 5));
  EXPECT_EQ(0, carom_simplequeue_get(q, buf, sizeof buf));
  EXPECT_TRUE(carom_simplequeue_empty(q));
  carom_simplequeue_close(q);
  carom_simplequeue_close(q);
  EXPECT_EQ(CAROM_ECLOSED, carom_simplequeue_put(q, "x", 1));
  EXPECT_EQ(CAROM_ECLOSED, carom_simplequeue_get(q, buf, sizeof buf));
  carom_simplequeue_free(q);
  carom_simplequeue_free(nullptr);
  EXPECT_EQ(fds0, count_fds());
}

// Frames larger than PIPE_BUF from several writers never interleave.
TEST(SimpleQueue, ExactDeliveryLargeFramesThreeWritersTwoReaders) {
  const size_t max = 3 * PIPE_BUF;
  carom_simplequeue_t *q = nullptr;
  ASSERT_EQ(0, carom_simplequeue_create(max, &q));
  const uint64_t per = 2000;
  struct Recv {
    std::atomic<uint8_t> recv[3][2000];
    std::atomic<int> bad;
  };
  Recv *rv = shared_new<Recv>();
  std::vector<ChildGuard> kids;
  for (uint32_t w = 0; w < 3; w++)
    kids.emplace_back(fork_child([&, w] {
      std::vector<unsigned char> buf(max);
      for (uint64_t s = 0; s < per; s++) {
        size_t len = make_item(w, s, max, buf.data());
        if (carom_simplequeue_put(q, buf.data(), len) != 0) return 1;
      }
      return 0;
    }));
  std::vector<ChildGuard> readers;
  for (int r = 0; r < 2; r++)
    readers.emplace_back(fork_child([&] {
      std::vector<unsigned char> buf(max);
      for (;;) {
        ssize_t n = carom_simplequeue_get(q, buf.data(), buf.size());
        if (n < 0) return 3;
        uint32_t role;
        uint64_t seq;
        if (n == 1) return 0;  // the stop marker
        if (!check_item(buf.data(), n, &role, &seq) || role >= 3 || seq >= per) {
          rv->bad++;
          return 2;
        }
        rv->recv[role][seq]++;
      }
    }));
  for (auto &k : kids) EXPECT_EQ(0, reap_code(k, 60));
  for (int r = 0; r < 2; r++) ASSERT_EQ(0, carom_simplequeue_put(q, "!", 1));
  for (auto &k : readers) EXPECT_EQ(0, reap_code(k, 60));
  EXPECT_EQ(0, rv->bad.load());
  for (int w = 0; w < 3; w++)
    for (uint64_t s = 0; s < per; s++) ASSERT_EQ(1, rv->recv[w][s].load());
  shared_free(rv, sizeof *rv);
  carom_simplequeue_free(q);
}

// A reader SIGKILLed while it waits (holding the read lock, no byte read)
// does not break the queue: the next reader takes the lock over and reads.
TEST(SimpleQueue, ReaderKilledWhileWaitingLeavesQueueUsable) {
  carom_simplequeue_t *q = nullptr;
  ASSERT_EQ(0, carom_simplequeue_create(64, &q));
  auto *ready = shared_new<std::atomic<int>>();
  ChildGuard c(fork_child([&] {
    char buf[64];
    ready->store(1);
    carom_simplequeue_get(q, buf, sizeof buf);  // blocks: nothing was put
    return 1;
  }));
  ASSERT_TRUE(wait_until([&] { return ready->load() == 1; }));
  ASSERT_TRUE(wait_until_sleeping(c.pid()));  // waiting in the queue, lock held
  kill(c.pid(), SIGKILL);
  EXPECT_EQ(1000 + SIGKILL, reap_code(c, 10));
  ASSERT_EQ(0, carom_simplequeue_put(q, "data", 4));
  char buf[64];
  EXPECT_EQ(4, carom_simplequeue_get(q, buf, sizeof buf));
  shared_free(ready, sizeof *ready);
  carom_simplequeue_free(q);
}
