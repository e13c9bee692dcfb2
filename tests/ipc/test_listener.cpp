// tests/ipc/test_listener.cpp — Listener/Client: Unix paths (0600, removed on
// close), abstract names, TCP on loopback (IPv4/IPv6), the HMAC handshake
// (right key, wrong key both ways, hostile lengths, silent clients), peers of
// another uid, many concurrent clients, fd leaks.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "carom/connection.h"
#include "testutil.h"

using namespace carom_test;

namespace {

const char kKey[] = "correct horse battery staple";
const char kBadKey[] = "correct horse battery stapler";

carom_listener_t *make_listener(const char *address, const char *key = nullptr,
                                double hs_timeout = 0) {
  carom_listener_opts_t o = {};
  o.size = sizeof o;
  o.address = address;
  o.authkey = key;
  o.authkey_len = key ? strlen(key) : 0;
  o.handshake_timeout = hs_timeout;
  carom_listener_t *l = nullptr;
  int r = carom_listener_create(&o, &l);
  EXPECT_EQ(0, r) << carom_err_name(r) << " " << (address ? address : "(default)");
  return l;
}

int client(const char *address, const char *key, carom_conn_t **out, double timeout = 20) {
  carom_client_opts_t o = {};
  o.size = sizeof o;
  o.authkey = key;
  o.authkey_len = key ? strlen(key) : 0;
  return carom_conn_create_client(address, &o, Deadline(timeout).p, out);
}

// Child: connect, send "hello <i>", expect the same bytes back, exit 0.
int echo_client(const std::string &addr, const char *key, int i) {
  carom_conn_t *c = nullptr;
  int r = client(addr.c_str(), key, &c);
  if (r) return 10 + (r == CAROM_EAUTH ? 1 : 0);
  std::string msg = "hello " + std::to_string(i);
  if (carom_conn_send_bytes(c, msg.data(), msg.size(), 0, msg.size(), nullptr)) return 2;
  void *m = nullptr;
  ssize_t n = carom_conn_recv_bytes(c, 0, &m, Deadline(20).p);
  int rc = (n == (ssize_t)msg.size() && !memcmp(m, msg.data(), msg.size())) ? 0 : 3;
  free(m);
  carom_conn_free(c);
  return rc;
}

void serve_one_echo(carom_listener_t *l) {
  carom_conn_t *c = nullptr;
  ASSERT_EQ(0, carom_listener_accept(l, Deadline(20).p, &c));
  void *m = nullptr;
  ssize_t n = carom_conn_recv_bytes(c, 0, &m, Deadline(20).p);
  ASSERT_GT(n, 0);
  EXPECT_EQ(0, carom_conn_send_bytes(c, m, (size_t)n, 0, (size_t)n, nullptr));
  free(m);
  carom_conn_free(c);
}

void echo_round(const char *address, const char *key) {
  carom_listener_t *l = make_listener(address, key);
  ASSERT_NE(nullptr, l);
  std::string addr = carom_listener_address(l);
  pid_t c = fork_child([&] { return echo_client(addr, key, 1); });
  serve_one_echo(l);
  EXPECT_EQ(0, reap_code(c));
  carom_listener_free(l);
}

}  // namespace

TEST(Listener, DefaultAddressIsPrivateUnixSocketRemovedOnClose) {
  int before = count_fds();
  carom_listener_t *l = make_listener(nullptr);
  ASSERT_NE(nullptr, l);
  std::string addr = carom_listener_address(l);
  ASSERT_EQ(0u, addr.rfind("unix:", 0)) << addr;
  std::string path = addr.substr(5), dir = path.substr(0, path.rfind('/'));
  struct stat st;
  ASSERT_EQ(0, stat(path.c_str(), &st));
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(0600u, st.st_mode & 0777);
  ASSERT_EQ(0, stat(dir.c_str(), &st));
  EXPECT_EQ(0700u, st.st_mode & 0777);
  pid_t c = fork_child([&] { return echo_client(addr, nullptr, 7); });
  serve_one_echo(l);
  EXPECT_EQ(0, reap_code(c));
  carom_listener_free(l);
  EXPECT_NE(0, stat(path.c_str(), &st));
  EXPECT_NE(0, stat(dir.c_str(), &st));
  EXPECT_EQ(before, count_fds());
}

TEST(Listener, ExplicitUnixPathIs0600EvenWithPermissiveUmask) {
  char dir[] = "/tmp/carom-test-XXXXXX";
  ASSERT_NE(nullptr, mkdtemp(dir));
  std::string path = std::string(dir) + "/s";
  mode_t old = umask(0);
  carom_listener_t *l = make_listener(path.c_str());
  umask(old);
  ASSERT_NE(nullptr, l);
  struct stat st;
  ASSERT_EQ(0, stat(path.c_str(), &st));
  EXPECT_EQ(0600u, st.st_mode & 0777);
  // A second listener on the same path fails.
  carom_listener_opts_t o = {};
  o.size = sizeof o;
  o.address = path.c_str();
  carom_listener_t *l2 = nullptr;
  EXPECT_EQ(-EADDRINUSE, carom_listener_create(&o, &l2));
  EXPECT_EQ(nullptr, l2);
  // A forked child freeing its copy must not remove the parent's socket.
  pid_t c = fork_child([&] {
    carom_listener_free(l);
    return 0;
  });
  EXPECT_EQ(0, reap_code(c));
  EXPECT_EQ(0, stat(path.c_str(), &st));
  carom_listener_free(l);
  EXPECT_NE(0, stat(path.c_str(), &st));
  rmdir(dir);
}

TEST(Listener, AbstractNamespace) {
  std::string name = "abstract:carom-test-" + std::to_string(getpid());
  echo_round(name.c_str(), kKey);
}

TEST(Listener, TcpLoopbackIPv4) { echo_round("tcp:127.0.0.1:0", kKey); }

TEST(Listener, TcpLoopbackIPv6) {
  carom_listener_opts_t o = {};
  o.size = sizeof o;
  o.address = "[::1]:0";
  carom_listener_t *l = nullptr;
  int r = carom_listener_create(&o, &l);
  if (r == -EADDRNOTAVAIL || r == -EAFNOSUPPORT || r == -EINVAL) GTEST_SKIP() << "no IPv6 loopback";
  ASSERT_EQ(0, r);
  std::string addr = carom_listener_address(l);
  EXPECT_EQ(0u, addr.rfind("tcp:[::1]:", 0)) << addr;
  pid_t c = fork_child([&] { return echo_client(addr, nullptr, 2); });
  serve_one_echo(l);
  EXPECT_EQ(0, reap_code(c));
  carom_listener_free(l);
}

TEST(Listener, BadAddressesAndNobodyListening) {
  carom_listener_opts_t o = {};
  o.size = sizeof o;
  carom_listener_t *l = nullptr;
  for (const char *bad : {"tcp:127.0.0.1", "tcp:127.0.0.1:x", "[::1:5", "abstract:"}) {
    o.address = bad;
    EXPECT_EQ(-EINVAL, carom_listener_create(&o, &l)) << bad;
  }
  std::string longp = "/tmp/" + std::string(200, 'a');
  o.address = longp.c_str();
  EXPECT_EQ(-ENAMETOOLONG, carom_listener_create(&o, &l));
  carom_conn_t *c = nullptr;
  EXPECT_EQ(-ENOENT, client("/nonexistent/carom.sock", nullptr, &c));
  // A TCP port that was just released: nobody listens there.
  carom_listener_t *t = make_listener("tcp:127.0.0.1:0");
  std::string addr = carom_listener_address(t);
  carom_listener_free(t);
  EXPECT_EQ(-ECONNREFUSED, client(addr.c_str(), nullptr, &c));
  EXPECT_EQ(nullptr, c);
}

TEST(Listener, AuthenticatedRoundTripUnix) { echo_round(nullptr, kKey); }

TEST(Listener, WrongKeyFailsOnBothSides) {
  int before = count_fds();
  for (int client_wrong = 0; client_wrong < 2; client_wrong++) {
    const char *server_key = client_wrong ? kKey : kBadKey;
    const char *client_key = client_wrong ? kBadKey : kKey;
    carom_listener_t *l = make_listener(nullptr, server_key);
    std::string addr = carom_listener_address(l);
    pid_t c = fork_child([&] {
      carom_conn_t *conn = nullptr;
      int r = client(addr.c_str(), client_key, &conn);
      return r == CAROM_EAUTH && conn == nullptr ? 0 : 1;
    });
    carom_conn_t *conn = nullptr;
    EXPECT_EQ(CAROM_EAUTH, carom_listener_accept(l, Deadline(20).p, &conn));
    EXPECT_EQ(nullptr, conn);
    EXPECT_EQ(0, reap_code(c));
    carom_listener_free(l);
  }
  EXPECT_EQ(before, count_fds());
}

extern "C" void carom__auth_force_no_crypto(bool missing);

// libcrypto is loaded on first use; when it cannot be, a Listener or Client
// with a key fails at creation with -ELIBACC (not an authentication failure,
// and before any peer is involved), and a Listener whose library goes missing
// later fails its accept the same way. Nothing leaks.
TEST(Listener, MissingLibcryptoFailsClearly) {
  int before = count_fds();
  struct Restore {
    ~Restore() { carom__auth_force_no_crypto(false); }
  } restore;
  carom_listener_t *l = make_listener(nullptr, kKey);  // while libcrypto loads
  ASSERT_NE(nullptr, l);
  std::string addr = carom_listener_address(l);
  carom__auth_force_no_crypto(true);
  carom_listener_opts_t o = {};
  o.size = sizeof o;
  o.authkey = kKey;
  o.authkey_len = strlen(kKey);
  carom_listener_t *l2 = nullptr;
  EXPECT_EQ(-ELIBACC, carom_listener_create(&o, &l2));
  EXPECT_EQ(nullptr, l2);
  carom_conn_t *conn = nullptr;
  EXPECT_EQ(-ELIBACC, client(addr.c_str(), kKey, &conn));
  EXPECT_EQ(nullptr, conn);
  // A client without a key gets through to accept, whose handshake fails.
  pid_t c = fork_child([&] {
    carom_conn_t *cc = nullptr;
    int r = client(addr.c_str(), nullptr, &cc);
    if (r) return 1;
    void *m = nullptr;
    ssize_t n = carom_conn_recv_bytes(cc, 0, &m, Deadline(20).p);  // the server hangs up
    free(m);
    carom_conn_free(cc);
    return n == CAROM_EEOF ? 0 : 2;
  });
  EXPECT_EQ(-ELIBACC, carom_listener_accept(l, Deadline(20).p, &conn));
  EXPECT_EQ(nullptr, conn);
  EXPECT_EQ(0, reap_code(c));
  carom_listener_free(l);
  EXPECT_EQ(before, count_fds());
}

TEST(Listener, ClientWithoutKeyCannotGetPayloadParsed) {
  // The client skips the handshake and sends a payload at once: the server
  // takes it as a (wrong) handshake reply, never as a message.
  carom_listener_t *l = make_listener(nullptr, kKey);
  std::string addr = carom_listener_address(l);
  pid_t c = fork_child([&] {
    carom_conn_t *conn = nullptr;
    if (client(addr.c_str(), nullptr, &conn)) return 1;
    carom_conn_send_bytes(conn, "payload", 7, 0, 7, nullptr);
    void *m = nullptr;
    ssize_t n = carom_conn_recv_bytes(conn, 0, &m, Deadline(20).p);  // the challenge
    free(m);
    carom_conn_free(conn);
    return n > 0 ? 0 : 2;
  });
  carom_conn_t *conn = nullptr;
  EXPECT_EQ(CAROM_EAUTH, carom_listener_accept(l, Deadline(20).p, &conn));
  EXPECT_EQ(0, reap_code(c));
  carom_listener_free(l);
}

TEST(Listener, HostileHandshakeLengthIsRejectedWithoutReadingIt) {
  carom_listener_t *l = make_listener(nullptr, kKey);
  std::string addr = carom_listener_address(l);
  std::string path = addr.substr(5);
  pid_t c = fork_child([&] {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un un = {};
    un.sun_family = AF_UNIX;
    strcpy(un.sun_path, path.c_str());
    if (connect(fd, (sockaddr *)&un, sizeof un)) return 1;
    // A reply header claiming 4 GiB, then nothing: only the cap stops it.
    uint8_t hdr[12] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 0};
    if (write(fd, hdr, sizeof hdr) != 12) return 2;
    char buf[512];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    return 0;
  });
  carom_conn_t *conn = nullptr;
  uint64_t t0 = carom_now_ns();
  EXPECT_EQ(CAROM_EAUTH, carom_listener_accept(l, Deadline(20).p, &conn));
  EXPECT_LT(carom_now_ns() - t0, (uint64_t)(4e9 * slow_factor()));  // not the 5 s handshake bound
  EXPECT_EQ(0, reap_code(c));
  carom_listener_free(l);
}

TEST(Listener, SilentClientDoesNotBlockAccept) {
  const double hs = 0.3;
  carom_listener_t *l = make_listener(nullptr, kKey, hs * slow_factor());
  std::string addr = carom_listener_address(l);
  std::string path = addr.substr(5);
  int go[2];
  ASSERT_EQ(0, pipe(go));
  ChildGuard silent(fork_child([&] {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un un = {};
    un.sun_family = AF_UNIX;
    strcpy(un.sun_path, path.c_str());
    if (connect(fd, (sockaddr *)&un, sizeof un)) return 1;
    if (write(go[1], "x", 1) != 1) return 2;
    pause();  // says nothing, holds the connection until killed
    return 0;
  }));
  char b;
  ASSERT_TRUE(fd_readable(go[0], (int)(10000 * slow_factor()))) << "silent client never connected";
  ASSERT_EQ(1, read(go[0], &b, 1));
  // Only the silent client: accept gives up at its own deadline.
  carom_conn_t *conn = nullptr;
  uint64_t t0 = carom_now_ns();
  timespec ts;
  EXPECT_EQ(-ETIMEDOUT, carom_listener_accept(l, carom_deadline(0.2 * slow_factor(), &ts), &conn));
  double took = (double)(carom_now_ns() - t0) / 1e9;
  EXPECT_GE(took, 0.2 * slow_factor() - 0.01);
  EXPECT_LT(took, 3.0 * slow_factor());
  // A silent client and then a good one: the good one gets served after the
  // silent one's handshake bound, well before the caller's 20 s deadline.
  ChildGuard silent2(fork_child([&] {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un un = {};
    un.sun_family = AF_UNIX;
    strcpy(un.sun_path, path.c_str());
    if (connect(fd, (sockaddr *)&un, sizeof un)) return 1;
    if (write(go[1], "x", 1) != 1) return 2;
    pause();
    return 0;
  }));
  ASSERT_TRUE(fd_readable(go[0], (int)(10000 * slow_factor()))) << "silent client never connected";
  ASSERT_EQ(1, read(go[0], &b, 1));
  ChildGuard good(fork_child([&] { return echo_client(addr, kKey, 3); }));
  t0 = carom_now_ns();
  serve_one_echo(l);
  EXPECT_LT((double)(carom_now_ns() - t0) / 1e9, 10.0 * slow_factor());
  EXPECT_EQ(0, reap_code(good));
  kill(silent.pid(), SIGKILL);
  kill(silent2.pid(), SIGKILL);
  EXPECT_EQ(1000 + SIGKILL, reap_code(silent));
  EXPECT_EQ(1000 + SIGKILL, reap_code(silent2));
  close(go[0]);
  close(go[1]);
  carom_listener_free(l);
}

TEST(Listener, PeerOfAnotherUidIsRefusedOnAbstractSocket) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a child as another uid";
  std::string name = "abstract:carom-uid-" + std::to_string(getpid());
  carom_listener_t *l = make_listener(name.c_str());
  pid_t c = fork_child([&] {
    if (setgid(65534) || setuid(65534)) return 1;
    carom_conn_t *conn = nullptr;
    if (client(name.c_str(), nullptr, &conn)) return 2;
    void *m = nullptr;
    // The server drops us: EOF, never a message.
    int r = (int)carom_conn_recv_bytes(conn, 0, &m, Deadline(20).p);
    carom_conn_free(conn);
    return r == CAROM_EEOF ? 0 : 3;
  });
  carom_conn_t *conn = nullptr;
  timespec ts;
  EXPECT_EQ(-ETIMEDOUT, carom_listener_accept(l, carom_deadline(0.5 * slow_factor(), &ts), &conn));
  EXPECT_EQ(0, reap_code(c));
  carom_listener_free(l);
}

TEST(Listener, ManyClientsConcurrentlyWithWait) {
  int before = count_fds();
  const int N = 8, M = 50;
  carom_listener_t *l = make_listener(nullptr, kKey);
  std::string addr = carom_listener_address(l);
  std::vector<ChildGuard> kids;
  for (int i = 0; i < N; i++) {
    kids.emplace_back(fork_child([&, i] {
      carom_conn_t *c = nullptr;
      if (client(addr.c_str(), kKey, &c)) return 1;
      for (int k = 0; k < M; k++) {
        int v[2] = {i, k};
        if (carom_conn_send_bytes(c, v, sizeof v, 0, sizeof v, nullptr)) return 2;
        int back[2];
        if (carom_conn_recv_bytes_into(c, back, sizeof back, 0, nullptr, Deadline(20).p) != 8 ||
            back[0] != i || back[1] != k + 1000)
          return 3;
      }
      carom_conn_free(c);
      return 0;
    }));
  }
  // Serve everyone from one thread: wait() over the listener and every client.
  std::vector<carom_conn_t *> conns;
  std::vector<int> next(N, 0);
  int accepted = 0, done = 0;
  Deadline dl(30);
  while (done < N) {
    std::vector<carom_wait_obj_t> w;
    w.push_back({CAROM_WAIT_LISTENER, -1, nullptr, l, 0});
    for (auto *c : conns) w.push_back({CAROM_WAIT_CONN, -1, c, nullptr, 0});
    int n = carom_wait(w.data(), w.size(), dl.p);
    ASSERT_GT(n, 0);
    if (w[0].ready && accepted < N) {
      carom_conn_t *c = nullptr;
      ASSERT_EQ(0, carom_listener_accept(l, Deadline(20).p, &c));
      conns.push_back(c);
      accepted++;
    }
    for (size_t j = 1; j < w.size(); j++) {
      if (!w[j].ready) continue;
      carom_conn_t *c = w[j].conn;
      int v[2];
      ssize_t r = carom_conn_recv_bytes_into(c, v, sizeof v, 0, nullptr, past_deadline());
      if (r == CAROM_EEOF) {
        done++;
        for (auto &x : conns)
          if (x == c) x = nullptr;
        carom_conn_free(c);
        continue;
      }
      if (r == -ETIMEDOUT) continue;
      ASSERT_EQ(8, r);
      ASSERT_EQ(next[v[0]], v[1]) << "client " << v[0];
      next[v[0]]++;
      v[1] += 1000;
      ASSERT_EQ(0, carom_conn_send_bytes(c, v, sizeof v, 0, sizeof v, nullptr));
    }
    conns.erase(std::remove(conns.begin(), conns.end(), nullptr), conns.end());
  }
  for (int i = 0; i < N; i++) EXPECT_EQ(M, next[i]);
  for (auto &k : kids) EXPECT_EQ(0, reap_code(k));
  carom_listener_free(l);
  EXPECT_EQ(before, count_fds());
}

TEST(Listener, FdPassingOverAcceptedUnixConnection) {
  carom_listener_t *l = make_listener(nullptr);
  std::string addr = carom_listener_address(l);
  ChildGuard c(fork_child([&] {
    carom_conn_t *conn = nullptr;
    if (client(addr.c_str(), nullptr, &conn)) return 1;
    int fd = carom_conn_recv_handle(conn, Deadline(20).p);
    if (fd < 0) return 2;
    int rc = write(fd, "z", 1) == 1 ? 0 : 3;
    close(fd);
    carom_conn_free(conn);
    return rc;
  }));
  carom_conn_t *conn = nullptr;
  ASSERT_EQ(0, carom_listener_accept(l, Deadline(20).p, &conn));
  int p[2];
  ASSERT_EQ(0, pipe2(p, O_CLOEXEC));
  ASSERT_EQ(0, carom_conn_send_handle(conn, p[1], nullptr));
  close(p[1]);
  EXPECT_EQ(0, reap_code(c));
  char b = 0;
  EXPECT_EQ(1, read(p[0], &b, 1));
  EXPECT_EQ('z', b);
  close(p[0]);
  carom_conn_free(conn);
  // TCP connections cannot pass fds.
  carom_listener_t *t = make_listener("tcp:127.0.0.1:0");
  std::string taddr = carom_listener_address(t);
  carom_conn_t *tc = nullptr;
  ASSERT_EQ(0, client(taddr.c_str(), nullptr, &tc));
  EXPECT_EQ(-ENOTSOCK, carom_conn_send_handle(tc, 0, nullptr));
  carom_conn_free(tc);
  carom_listener_free(t);
  carom_listener_free(l);
}
