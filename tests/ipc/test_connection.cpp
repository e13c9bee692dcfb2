// tests/ipc/test_connection.cpp — Connections: round trips across processes,
// limits, short buffers, EOF from a killed peer, SIGPIPE, deadlines, fd
// passing, poll/wait with buffered messages, fd leaks.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "carom/connection.h"
#include "testutil.h"

using namespace carom_test;

namespace {

std::vector<uint8_t> pattern(size_t n, unsigned seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = (uint8_t)(i * 131 + seed * 7 + (i >> 8));
  return v;
}

struct Pair {
  carom_conn_t *a = nullptr, *b = nullptr;
  Pair(int duplex, const carom_conn_opts_t *o = nullptr) {
    EXPECT_EQ(0, carom_conn_create_pipe(duplex, o, &a, &b));
  }
  ~Pair() {
    carom_conn_free(a);
    carom_conn_free(b);
  }
};

int send_vec(carom_conn_t *c, const std::vector<uint8_t> &v, const timespec *dl = nullptr) {
  return carom_conn_send_bytes(c, v.data(), v.size(), 0, v.size(), dl);
}

const size_t kSizes[] = {0, 1, 4095, 4096, 1 << 20};

// A child sends every size (and then a sentinel), the parent checks each byte.
void round_trip_sizes(int duplex) {
  int before = count_fds();
  {
    Pair p(duplex);
    carom_conn_t *rx = p.a, *tx = p.b;
    ChildGuard c(fork_child([&] {
      carom_conn_free(rx);
      unsigned seed = 0;
      for (size_t n : kSizes)
        if (send_vec(tx, pattern(n, seed++)) != 0) return 1;
      return 0;
    }));
    carom_conn_close(tx);  // the child's copy is the only writer left
    unsigned seed = 0;
    for (size_t n : kSizes) {
      void *m = nullptr;
      Deadline dl(20);
      ASSERT_EQ((ssize_t)n, carom_conn_recv_bytes(rx, 0, &m, dl.p)) << n;
      ASSERT_NE(nullptr, m);
      auto want = pattern(n, seed++);
      if (n) {
        EXPECT_EQ(0, memcmp(want.data(), m, n)) << n;
      }
      free(m);
    }
    EXPECT_EQ(0, reap_code(c));
    void *m = nullptr;
    EXPECT_EQ(CAROM_EEOF, carom_conn_recv_bytes(rx, 0, &m, nullptr));
    EXPECT_EQ(nullptr, m);
  }
  EXPECT_EQ(before, count_fds());
}

}  // namespace

TEST(Connection, RoundTripSizesDuplexAcrossProcesses) { round_trip_sizes(1); }
TEST(Connection, RoundTripSizesOneWayPipeAcrossProcesses) { round_trip_sizes(0); }

TEST(Connection, DuplexBothDirectionsAndFlags) {
  Pair p(1);
  EXPECT_TRUE(carom_conn_readable(p.a) && carom_conn_writable(p.a));
  EXPECT_EQ(0, carom_conn_send_bytes(p.a, "ping", 4, 0, 4, nullptr));
  char buf[16];
  EXPECT_EQ(4, carom_conn_recv_bytes_into(p.b, buf, sizeof buf, 0, nullptr, nullptr));
  EXPECT_EQ(0, memcmp(buf, "ping", 4));
  EXPECT_EQ(0, carom_conn_send_bytes(p.b, "xxpongxx", 8, 2, 4, nullptr));
  EXPECT_EQ(4, carom_conn_recv_bytes_into(p.a, buf, sizeof buf, 3, nullptr, nullptr));
  EXPECT_EQ(0, memcmp(buf + 3, "pong", 4));
  EXPECT_EQ(-EINVAL, carom_conn_send_bytes(p.a, "abc", 3, 2, 2, nullptr));
  EXPECT_EQ(-EINVAL, carom_conn_send_bytes(p.a, "abc", 3, 4, 0, nullptr));
  EXPECT_EQ(-EINVAL, carom_conn_recv_bytes_into(p.a, buf, 4, 5, nullptr, nullptr));
  int fl = fcntl(carom_conn_fileno(p.a), F_GETFD);
  EXPECT_TRUE(fl & FD_CLOEXEC);
}

TEST(Connection, ClosedAndWrongDirectionEnds) {
  Pair p(0);
  carom_conn_t *r = p.a, *w = p.b;
  EXPECT_TRUE(carom_conn_readable(r));
  EXPECT_FALSE(carom_conn_writable(r));
  EXPECT_FALSE(carom_conn_readable(w));
  EXPECT_TRUE(carom_conn_writable(w));
  EXPECT_TRUE(fcntl(carom_conn_fileno(r), F_GETFD) & FD_CLOEXEC);
  EXPECT_TRUE(fcntl(carom_conn_fileno(w), F_GETFD) & FD_CLOEXEC);
  EXPECT_EQ(-EBADF, carom_conn_send_bytes(r, "x", 1, 0, 1, nullptr));
  void *m = nullptr;
  EXPECT_EQ(-EBADF, carom_conn_recv_bytes(w, 0, &m, nullptr));
  EXPECT_EQ(-EBADF, carom_conn_poll(w, past_deadline()));
  EXPECT_EQ(0, carom_conn_close(r));
  EXPECT_EQ(0, carom_conn_close(r));
  EXPECT_TRUE(carom_conn_closed(r));
  EXPECT_EQ(-1, carom_conn_fileno(r));
  EXPECT_EQ(CAROM_ECLOSED, carom_conn_recv_bytes(r, 0, &m, nullptr));
  EXPECT_EQ(CAROM_ECLOSED, carom_conn_poll(r, past_deadline()));
  carom_conn_close(w);
  EXPECT_EQ(CAROM_ECLOSED, carom_conn_send_bytes(w, "x", 1, 0, 1, nullptr));
  carom_conn_free(nullptr);
}

TEST(Connection, OversizedMessageRejectedAndStreamStaysInStep) {
  for (int duplex = 0; duplex < 2; duplex++) {
    carom_conn_opts_t o = {sizeof o, 1000, 0, 0};
    Pair p(duplex, &o);
    carom_conn_t *rx = p.a, *tx = p.b;
    // A payload bigger than the socket buffer, so the discard spans reads.
    auto big = pattern(3 << 20, 1), small = pattern(1000, 2), tiny = pattern(7, 3);
    ChildGuard c(fork_child([&] {
      carom_conn_free(rx);
      return send_vec(tx, big) || send_vec(tx, small) || send_vec(tx, pattern(1001, 4)) ||
             send_vec(tx, tiny);
    }));
    void *m = nullptr;
    Deadline dl(20);
    EXPECT_EQ(CAROM_EMSGSIZE, carom_conn_recv_bytes(rx, 0, &m, dl.p));
    EXPECT_EQ(nullptr, m);
    ASSERT_EQ(1000, carom_conn_recv_bytes(rx, 0, &m, dl.p));
    EXPECT_EQ(0, memcmp(m, small.data(), 1000));
    free(m);
    EXPECT_EQ(CAROM_EMSGSIZE, carom_conn_recv_bytes(rx, 0, &m, dl.p));
    // Per-call maxlength below the connection's limit.
    ASSERT_EQ(0, send_vec(tx, tiny));
    EXPECT_EQ(7, carom_conn_recv_bytes(rx, 0, &m, dl.p));
    free(m);
    EXPECT_EQ(CAROM_EMSGSIZE, carom_conn_recv_bytes(rx, 6, &m, dl.p));
    EXPECT_EQ(0, reap_code(c));
    carom_conn_close(tx);
    EXPECT_EQ(CAROM_EEOF, carom_conn_recv_bytes(rx, 0, &m, dl.p));
  }
}

TEST(Connection, HostileLengthNeverAllocates) {
  int sv[2];
  ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  carom_conn_t *rx;
  ASSERT_EQ(0, carom_conn_create_fd(sv[0], 1, 1, nullptr, &rx));
  // Extended header claiming 2^63 bytes: must be refused at once (ASan would
  // report an allocation failure if it were attempted).
  uint8_t hdr[12] = {0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0};
  ASSERT_EQ(12, write(sv[1], hdr, 12));
  ASSERT_EQ(5, write(sv[1], "junk!", 5));
  void *m = nullptr;
  EXPECT_EQ(CAROM_EMSGSIZE, carom_conn_recv_bytes(rx, 0, &m, past_deadline()));
  close(sv[1]);
  EXPECT_EQ(CAROM_EEOF, carom_conn_recv_bytes(rx, 0, &m, past_deadline()));
  carom_conn_free(rx);
}

TEST(Connection, ExtendedHeaderWithLoweredThreshold) {
  // The > 2 GiB path would need 2 GiB of memory per message: lower the
  // threshold instead so the same extended header carries small lengths.
  int sv[2];
  ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  carom_conn_opts_t o = {sizeof o, 0, 16, 0};
  carom_conn_t *tx, *rx;
  ASSERT_EQ(0, carom_conn_create_fd(sv[0], 1, 1, &o, &tx));
  ASSERT_EQ(0, carom_conn_create_fd(sv[1], 1, 1, nullptr, &rx));
  auto a = pattern(16, 5), b = pattern(17, 6);
  ASSERT_EQ(0, send_vec(tx, a));
  ASSERT_EQ(0, send_vec(tx, b));
  // Look at the wire: 4-byte header for 16, 0xffffffff + 8-byte length for 17.
  uint8_t wire[64];
  ASSERT_EQ((ssize_t)(4 + 16 + 12 + 17), recv(sv[1], wire, sizeof wire, MSG_PEEK));
  const uint8_t h16[4] = {0, 0, 0, 16};
  const uint8_t h17[12] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 17};
  EXPECT_EQ(0, memcmp(wire, h16, 4));
  EXPECT_EQ(0, memcmp(wire + 20, h17, 12));
  void *m;
  ASSERT_EQ(16, carom_conn_recv_bytes(rx, 0, &m, past_deadline()));
  EXPECT_EQ(0, memcmp(m, a.data(), 16));
  free(m);
  ASSERT_EQ(17, carom_conn_recv_bytes(rx, 0, &m, past_deadline()));
  EXPECT_EQ(0, memcmp(m, b.data(), 17));
  free(m);
  // A large message with the extended header, across processes.
  auto big = pattern(300000, 7);
  ChildGuard c(fork_child([&] { return send_vec(tx, big); }));
  Deadline dl(20);
  ASSERT_EQ((ssize_t)big.size(), carom_conn_recv_bytes(rx, 0, &m, dl.p));
  EXPECT_EQ(0, memcmp(m, big.data(), big.size()));
  free(m);
  EXPECT_EQ(0, reap_code(c));
  carom_conn_free(tx);
  carom_conn_free(rx);
}

TEST(Connection, RecvBytesIntoShortBufferKeepsTheMessage) {
  Pair p(1);
  for (size_t n : {size_t(100), size_t(200000)}) {  // in the read buffer, and beyond it
    auto v = pattern(n, 9);
    ChildGuard c(fork_child([&] { return send_vec(p.b, v); }));
    std::vector<uint8_t> small(50), big(n + 10);
    size_t needed = 0;
    Deadline dl(20);
    EXPECT_EQ(CAROM_ETOOSHORT,
              carom_conn_recv_bytes_into(p.a, small.data(), small.size(), 0, &needed, dl.p));
    EXPECT_EQ(n, needed);
    // Asking again with a buffer that is one byte short still fails...
    EXPECT_EQ(CAROM_ETOOSHORT,
              carom_conn_recv_bytes_into(p.a, big.data(), n + 9, 10, &needed, dl.p));
    // ...and the whole message is still there for a big enough buffer.
    ASSERT_EQ((ssize_t)n, carom_conn_recv_bytes_into(p.a, big.data(), big.size(), 10, nullptr,
                                                     dl.p));
    EXPECT_EQ(0, memcmp(big.data() + 10, v.data(), n));
    EXPECT_EQ(0, reap_code(c));
  }
  // After ETOOSHORT, recv_bytes returns the held message too.
  auto v = pattern(300, 1);
  ASSERT_EQ(0, send_vec(p.b, v));
  char tiny[4];
  EXPECT_EQ(CAROM_ETOOSHORT, carom_conn_recv_bytes_into(p.a, tiny, 4, 0, nullptr, past_deadline()));
  void *m;
  ASSERT_EQ(300, carom_conn_recv_bytes(p.a, 0, &m, past_deadline()));
  EXPECT_EQ(0, memcmp(m, v.data(), 300));
  free(m);
}

namespace {
void peer_killed_mid_message(int duplex) {
  Pair p(duplex);
  carom_conn_t *rx = p.a, *tx = p.b;
  ChildGuard c(fork_child([&] {
    carom_conn_free(rx);
    auto v = pattern(16 << 20, 3);  // far more than any pipe/socket buffer
    send_vec(tx, v);
    return 0;
  }));
  carom_conn_close(tx);
  // Bytes have arrived, and the message cannot be complete: kill the sender.
  ASSERT_EQ(1, carom_conn_poll(rx, Deadline(20).p));
  kill(c.pid(), SIGKILL);
  EXPECT_EQ(1000 + SIGKILL, reap_code(c));
  void *m = nullptr;
  EXPECT_EQ(CAROM_EEOF, carom_conn_recv_bytes(rx, 0, &m, Deadline(20).p));
  EXPECT_EQ(nullptr, m);
  EXPECT_EQ(CAROM_EEOF, carom_conn_recv_bytes(rx, 0, &m, past_deadline()));
}
}  // namespace

TEST(Connection, PeerKilledMidMessageGivesEofNotPartialSocket) { peer_killed_mid_message(1); }
TEST(Connection, PeerKilledMidMessageGivesEofNotPartialPipe) { peer_killed_mid_message(0); }

TEST(Connection, SigpipeDoesNotKill) {
  // SIGPIPE keeps its default action (terminate) during this test.
  struct sigaction old, dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &dfl, &old);
  for (int duplex = 0; duplex < 2; duplex++) {
    Pair p(duplex);
    carom_conn_free(p.a);
    p.a = nullptr;
    EXPECT_EQ(-EPIPE, carom_conn_send_bytes(p.b, "x", 1, 0, 1, nullptr));
    EXPECT_EQ(-EPIPE, carom_conn_send_bytes(p.b, "x", 1, 0, 1, Deadline(1).p));
  }
  sigset_t pend;
  sigpending(&pend);
  EXPECT_FALSE(sigismember(&pend, SIGPIPE));
  sigaction(SIGPIPE, &old, nullptr);
}

TEST(Connection, ReceiveTimesOutAtDeadlineAndResumesPartialMessage) {
  int sv[2];
  ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  carom_conn_t *rx;
  ASSERT_EQ(0, carom_conn_create_fd(sv[0], 1, 1, nullptr, &rx));
  void *m = nullptr;
  uint64_t t0 = carom_now_ns();
  timespec ts;
  EXPECT_EQ(-ETIMEDOUT, carom_conn_recv_bytes(rx, 0, &m, carom_deadline(0.05, &ts)));
  EXPECT_GE(carom_now_ns() - t0, 50000000u);
  // Half a frame: header and 3 of 6 payload bytes; never delivered early.
  const uint8_t part1[] = {0, 0, 0, 6, 'a', 'b', 'c'};
  ASSERT_EQ(7, write(sv[1], part1, 7));
  EXPECT_EQ(-ETIMEDOUT, carom_conn_recv_bytes(rx, 0, &m, past_deadline()));
  // Nothing to receive yet: the partial frame is buffered, the fd is empty.
  EXPECT_EQ(0, carom_conn_poll(rx, past_deadline()));
  ASSERT_EQ(3, write(sv[1], "def", 3));
  ASSERT_EQ(6, carom_conn_recv_bytes(rx, 0, &m, past_deadline()));
  EXPECT_EQ(0, memcmp(m, "abcdef", 6));
  free(m);
  // Same for a message bigger than the read buffer (held in its own buffer).
  auto big = pattern(100000, 4);
  uint8_t hdr[4] = {0, 0x01, 0x86, 0xa0};  // 100000
  ASSERT_EQ(4, write(sv[1], hdr, 4));
  ASSERT_EQ(70000, write(sv[1], big.data(), 70000));
  EXPECT_EQ(-ETIMEDOUT, carom_conn_recv_bytes(rx, 0, &m, past_deadline()));
  ASSERT_EQ(30000, write(sv[1], big.data() + 70000, 30000));
  ASSERT_EQ(100000, carom_conn_recv_bytes(rx, 0, &m, past_deadline()));
  EXPECT_EQ(0, memcmp(m, big.data(), big.size()));
  free(m);
  close(sv[1]);
  carom_conn_free(rx);
}

TEST(Connection, SendCutByDeadlineMarksBrokenAndPeerSeesEof) {
  Pair p(1);
  auto big = pattern(8 << 20, 2);  // nobody reads: the kernel takes only a part
  timespec ts;
  EXPECT_EQ(-ETIMEDOUT, carom_conn_send_bytes(p.a, big.data(), big.size(), 0, big.size(),
                                              carom_deadline(0.05, &ts)));
  EXPECT_EQ(-EPIPE, carom_conn_send_bytes(p.a, "x", 1, 0, 1, nullptr));
  void *m = nullptr;
  EXPECT_EQ(CAROM_EEOF, carom_conn_recv_bytes(p.b, 0, &m, Deadline(20).p));
  // The other direction still works.
  EXPECT_EQ(0, carom_conn_send_bytes(p.b, "ok", 2, 0, 2, nullptr));
  ASSERT_EQ(2, carom_conn_recv_bytes(p.a, 0, &m, past_deadline()));
  free(m);
}

TEST(Connection, SendTimesOutCleanlyWhenNothingWasWritten) {
  Pair p(1);
  // Fill the socket buffer with whole messages.
  std::vector<uint8_t> chunk(4096, 1);
  int sent = 0;
  while (send_vec(p.a, chunk, past_deadline()) == 0) sent++;
  EXPECT_EQ(-ETIMEDOUT, carom_conn_send_bytes(p.a, "y", 1, 0, 1, past_deadline()));
  // Either the last send failed before writing (stream intact) or it cut a
  // frame (broken). Drain and check what the peer sees is consistent.
  void *m;
  int got = 0;
  ssize_t r;
  while ((r = carom_conn_recv_bytes(p.b, 0, &m, past_deadline())) == 4096) {
    free(m);
    got++;
  }
  EXPECT_GE(got, sent);
  EXPECT_TRUE(r == -ETIMEDOUT || r == CAROM_EEOF) << r;
}

TEST(Connection, NonblockingEnds) {
  carom_conn_opts_t o = {sizeof o, 0, 0, 1};
  for (int duplex = 0; duplex < 2; duplex++) {
    Pair p(duplex, &o);
    void *m = nullptr;
    EXPECT_EQ(-EAGAIN, carom_conn_recv_bytes(p.a, 0, &m, nullptr));
    std::vector<uint8_t> chunk(1000, 1);
    int sent = 0, r;
    while ((r = send_vec(p.b, chunk)) == 0) sent++;
    EXPECT_EQ(-EAGAIN, r);
    for (int i = 0; i < sent; i++) {
      ASSERT_EQ(1000, carom_conn_recv_bytes(p.a, 0, &m, nullptr)) << i;
      free(m);
    }
    EXPECT_EQ(-EAGAIN, carom_conn_recv_bytes(p.a, 0, &m, nullptr));
  }
}

TEST(Connection, PassFileDescriptorsAcrossProcesses) {
  int before = count_fds();
  {
    Pair p(1);
    ChildGuard c(fork_child([&] {
      int fd = carom_conn_recv_handle(p.b, nullptr);
      if (fd < 0) return 1;
      if (!(fcntl(fd, F_GETFD) & FD_CLOEXEC)) return 2;
      if (write(fd, "via-fd", 6) != 6) return 3;
      // A plain message where a handle is expected is refused.
      if (carom_conn_recv_handle(p.b, nullptr) != -EPROTO) return 4;
      return 0;
    }));
    // A pipe the child does not have: send its write end, drop our copy.
    int pfd[2];
    ASSERT_EQ(0, pipe2(pfd, O_CLOEXEC));
    ASSERT_EQ(0, carom_conn_send_handle(p.a, pfd[1], nullptr));
    close(pfd[1]);
    ASSERT_EQ(0, carom_conn_send_bytes(p.a, "nope", 4, 0, 4, nullptr));
    EXPECT_EQ(0, reap_code(c));
    char buf[16];
    ASSERT_EQ(6, read(pfd[0], buf, sizeof buf));
    EXPECT_EQ(0, memcmp(buf, "via-fd", 6));
    EXPECT_EQ(0, read(pfd[0], buf, sizeof buf));  // every write end is closed
    close(pfd[0]);
    // One-way pipes cannot carry fds.
    Pair q(0);
    EXPECT_EQ(-ENOTSOCK, carom_conn_send_handle(q.b, 0, nullptr));
  }
  EXPECT_EQ(before, count_fds());
}

TEST(Connection, UnclaimedPassedFdsAreClosedWithTheConnection) {
  int before = count_fds();
  {
    Pair p(1);
    int efd = eventfd(0, EFD_CLOEXEC);
    ASSERT_EQ(0, carom_conn_send_handle(p.a, efd, nullptr));
    close(efd);
    ASSERT_EQ(0, carom_conn_send_bytes(p.a, "m", 1, 0, 1, nullptr));
    void *m;
    // recv_bytes reads the handle frame (and queues its fd) unaware.
    ASSERT_EQ(8, carom_conn_recv_bytes(p.b, 0, &m, past_deadline()));
    free(m);
  }
  EXPECT_EQ(before, count_fds());
}

TEST(Connection, PollAndWaitSeeBufferedMessages) {
  Pair p(1);
  EXPECT_EQ(0, carom_conn_poll(p.b, past_deadline()));
  uint64_t t0 = carom_now_ns();
  timespec ts;
  EXPECT_EQ(0, carom_conn_poll(p.b, carom_deadline(0.03, &ts)));
  EXPECT_GE(carom_now_ns() - t0, 30000000u);
  // Two messages reach the reader in one read; after taking the first, the
  // fd is empty but the second is buffered: poll and wait must see it.
  ASSERT_EQ(0, carom_conn_send_bytes(p.a, "one", 3, 0, 3, nullptr));
  ASSERT_EQ(0, carom_conn_send_bytes(p.a, "two", 3, 0, 3, nullptr));
  EXPECT_EQ(1, carom_conn_poll(p.b, past_deadline()));
  void *m;
  ASSERT_EQ(3, carom_conn_recv_bytes(p.b, 0, &m, past_deadline()));
  free(m);
  struct pollfd pf = {carom_conn_fileno(p.b), POLLIN, 0};
  EXPECT_EQ(0, poll(&pf, 1, 0));  // the fd itself is empty
  EXPECT_EQ(1, carom_conn_poll(p.b, past_deadline()));
  carom_wait_obj_t w[2] = {};
  w[0].kind = CAROM_WAIT_CONN;
  w[0].conn = p.b;
  w[1].kind = CAROM_WAIT_CONN;
  w[1].conn = p.a;
  EXPECT_EQ(1, carom_wait(w, 2, nullptr));  // must not sleep
  EXPECT_EQ(1, w[0].ready);
  EXPECT_EQ(0, w[1].ready);
  ASSERT_EQ(3, carom_conn_recv_bytes(p.b, 0, &m, past_deadline()));
  EXPECT_EQ(0, memcmp(m, "two", 3));
  free(m);
  EXPECT_EQ(0, carom_wait(w, 2, past_deadline()));
}

TEST(Wait, ManyConnectionsFdsAndPidfdSentinels) {
  Pair p1(1), p2(0), p3(1);
  int efd = eventfd(0, EFD_CLOEXEC);
  ChildGuard c(fork_child([&] {
    carom_conn_send_bytes(p2.b, "x", 1, 0, 1, nullptr);
    return 0;
  }));
  int pidfd = (int)syscall(SYS_pidfd_open, c.pid(), 0);
  ASSERT_GE(pidfd, 0);
  carom_wait_obj_t w[5] = {};
  w[0] = {CAROM_WAIT_CONN, -1, p1.a, nullptr, 0};
  w[1] = {CAROM_WAIT_CONN, -1, p2.a, nullptr, 0};
  w[2] = {CAROM_WAIT_CONN, -1, p3.b, nullptr, 0};
  w[3] = {CAROM_WAIT_FD, efd, nullptr, nullptr, 0};
  w[4] = {CAROM_WAIT_FD, pidfd, nullptr, nullptr, 0};
  // Wait until both the message and the child's exit are seen.
  Deadline dl(20);
  int n = 0;
  while (!(w[1].ready && w[4].ready)) {
    n = carom_wait(w, 5, dl.p);
    ASSERT_GT(n, 0);
  }
  EXPECT_EQ(2, n);
  EXPECT_EQ(0, w[0].ready + w[2].ready + w[3].ready);
  uint64_t one = 1;
  ASSERT_EQ(8, write(efd, &one, 8));
  ASSERT_EQ(0, carom_conn_send_bytes(p3.a, "y", 1, 0, 1, nullptr));
  EXPECT_EQ(4, carom_wait(w, 5, past_deadline()));
  EXPECT_EQ(0, w[0].ready);
  EXPECT_EQ(0, reap_code(c));
  // Misuse.
  carom_wait_obj_t bad = {CAROM_WAIT_FD, -1, nullptr, nullptr, 0};
  EXPECT_EQ(-EINVAL, carom_wait(&bad, 1, past_deadline()));
  bad = {CAROM_WAIT_CONN, -1, p2.b, nullptr, 0};  // write-only end
  EXPECT_EQ(-EBADF, carom_wait(&bad, 1, past_deadline()));
  close(efd);
  close(pidfd);
}

TEST(Connection, StreamOfSmallMessagesKeepsExactOrder) {
  Pair p(1);
  const int N = 20000;
  ChildGuard c(fork_child([&] {
    for (int i = 0; i < N; i++) {
      uint32_t v = (uint32_t)i;
      if (carom_conn_send_bytes(p.b, &v, 4, 0, 4, nullptr)) return 1;
    }
    return 0;
  }));
  for (int i = 0; i < N; i++) {
    uint32_t v;
    ASSERT_EQ(4, carom_conn_recv_bytes_into(p.a, &v, 4, 0, nullptr, Deadline(20).p));
    ASSERT_EQ((uint32_t)i, v);
  }
  EXPECT_EQ(0, reap_code(c));
}
