/* proc/boot.c — the child side of process creation, shared by the three start
 * methods: the boot message (target, argument, name, identity, environment,
 * flags) and its wire format, target references that survive exec, the
 * signal and environment reset, running the target, and the constructor that
 * turns an exec'd program image into a spawn child or the forkserver.
 *
 * Invariants:
 * - A spawned child or the forkserver is recognised by an environment variable
 *   (CAROM_SPAWN_FD / CAROM_FORKSERVER_FD) holding the number of an inherited
 *   socket. The constructor removes the variable at once, so nothing below it
 *   (grandchildren, the target) sees it.
 * - The constructor has default priority: with a static libcarom it runs after
 *   every CAROM_ENTRY registration (priority 101) of the program and after the
 *   static initialisers of objects linked before libcarom; it never returns in
 *   a child, so the program's main() never runs there.
 * - Children never return into the caller's stack and never run the parent's
 *   atexit handlers: they run carom's own exit handler, flush stdio, _exit().
 */
#include "proc/internal.h"

#include <elf.h>
#include <link.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------ registry ---- */

static _Atomic(carom_entry_t *) registry;

void carom_entry_register(carom_entry_t *e) {
  carom_entry_t *head = atomic_load_explicit(&registry, memory_order_relaxed);
  do e->next = head;
  while (!atomic_compare_exchange_weak_explicit(&registry, &head, e, memory_order_release,
                                                memory_order_relaxed));
}

carom_process_fn carom_entry_lookup(const char *name) {
  if (!name) return NULL;
  for (carom_entry_t *e = atomic_load_explicit(&registry, memory_order_acquire); e; e = e->next)
    if (!strcmp(e->name, name)) return e->fn;
  return NULL;
}

static const char *entry_name_of(carom_process_fn fn) {
  for (carom_entry_t *e = atomic_load_explicit(&registry, memory_order_acquire); e; e = e->next)
    if (e->fn == fn) return e->name;
  return NULL;
}

/* ------------------------------------------------------ target refs ---- */

typedef struct {
  uintptr_t addr;   /* find: the address; resolve: out */
  const char *want; /* resolve: object name ("" = main program) */
  uint64_t offset;
  int index;
  bool found;
  char *name; /* find: malloc'd object name */
} phdr_arg_t;

/* True when [addr] lies in an executable PT_LOAD segment of the object. */
static bool in_exec_segment(const struct dl_phdr_info *info, uintptr_t addr) {
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (addr >= lo && addr < lo + ph->p_memsz) return true;
  }
  return false;
}

static int find_cb(struct dl_phdr_info *info, size_t size, void *data) {
  phdr_arg_t *a = data;
  int idx = a->index++;
  if (!in_exec_segment(info, a->addr)) return 0;
  /* The first object is the program itself; its name is "" (or may be set to
   * argv[0] by some loaders), so send it as "". */
  a->name = strdup(idx == 0 ? "" : info->dlpi_name ? info->dlpi_name : "");
  a->offset = (uint64_t)(a->addr - info->dlpi_addr);
  a->found = true;
  return 1;
}

static int resolve_cb(struct dl_phdr_info *info, size_t size, void *data) {
  phdr_arg_t *a = data;
  int idx = a->index++;
  bool match = a->want[0] == 0 ? idx == 0 : (info->dlpi_name && !strcmp(info->dlpi_name, a->want));
  if (!match) return 0;
  uintptr_t addr = info->dlpi_addr + (uintptr_t)a->offset;
  if (in_exec_segment(info, addr)) {
    a->addr = addr;
    a->found = true;
  }
  return 1;
}

int carom__target_ref_make(carom_process_fn fn, const char *entry, carom__target_ref_t *ref) {
  memset(ref, 0, sizeof *ref);
  if (entry && !fn) fn = carom_entry_lookup(entry);
  if (!fn) return entry ? -ENOENT : 0; /* no target: the child exits 0 */
  /* Both the name and the offset travel: the name needs no ELF layout, the
   * offset works before the child's registrations ran (shared libcarom). */
  const char *n = entry ? entry : entry_name_of(fn);
  if (n && !(ref->entry = strdup(n))) return -ENOMEM;
  phdr_arg_t a = {.addr = (uintptr_t)fn};
  dl_iterate_phdr(find_cb, &a);
  if (a.found) {
    if (!a.name) {
      carom__target_ref_free(ref);
      return -ENOMEM;
    }
    ref->object = a.name;
    ref->offset = a.offset;
    ref->has_offset = true;
  }
  /* A pointer outside every loaded object (JIT code?) cannot cross exec. It
   * still works for fork; spawn/forkserver refuse it at start. */
  return 0;
}

void carom__target_ref_free(carom__target_ref_t *ref) {
  free(ref->entry);
  free(ref->object);
  memset(ref, 0, sizeof *ref);
}

carom_process_fn carom__target_ref_resolve(const carom__target_ref_t *ref) {
  if (ref->entry && ref->entry[0]) {
    carom_process_fn fn = carom_entry_lookup(ref->entry);
    if (fn) return fn;
  }
  if (!ref->has_offset) return NULL;
  phdr_arg_t a = {.want = ref->object ? ref->object : "", .offset = ref->offset};
  dl_iterate_phdr(resolve_cb, &a);
  if (!a.found) return NULL;
  carom_process_fn fn;
  uintptr_t addr = a.addr;
  memcpy(&fn, &addr, sizeof fn);
  return fn;
}

/* --------------------------------------------------------- wire format ---- */

enum { BOOT_MAGIC = 0x314d5243u /* "CRM1" */, BOOT_MAX = 1u << 30 };

int carom__boot_encode(const carom__boot_t *b, unsigned char **out, size_t *len) {
  if (b->arg_len > BOOT_MAX) return -EMSGSIZE;
  carom__wbuf_t w = {0};
  carom__wput_u32(&w, 0); /* length, patched below */
  carom__wput_u32(&w, BOOT_MAGIC);
  carom__wput_str(&w, b->ref.entry);
  carom__wput_str(&w, b->ref.object);
  uint8_t flags = (uint8_t)((b->ref.has_offset ? 1 : 0) | (b->daemon ? 2 : 0) |
                            (b->ignore_sigint ? 4 : 0));
  carom__wput_u64(&w, b->ref.offset);
  carom__wput(&w, &flags, 1);
  carom__wput_bytes(&w, b->arg, b->arg_len);
  carom__wput_str(&w, b->name);
  carom__wput_str(&w, b->identity);
  carom__wput_u32(&w, (uint32_t)b->parent_pid);
  carom__wput_str(&w, b->parent_name);
  uint32_t nenv = 0;
  while (b->env && b->env[nenv]) nenv++;
  carom__wput_u32(&w, nenv);
  for (uint32_t i = 0; i < nenv; i++) carom__wput_str(&w, b->env[i]);
  if (w.oom || w.len - 4 > BOOT_MAX) {
    free(w.p);
    return w.oom ? -ENOMEM : -EMSGSIZE;
  }
  uint32_t body = (uint32_t)(w.len - 4);
  memcpy(w.p, &body, 4);
  *out = w.p;
  *len = w.len;
  return 0;
}

enum { FDS_MAX = 4 };

int carom__send_fds(int sock, const void *data, size_t len, const int *fds, int nfds) {
  if (nfds < 0 || nfds > FDS_MAX) return -EINVAL;
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * FDS_MAX)];
    struct cmsghdr align;
  } u;
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    memset(&u, 0, sizeof u);
    mh.msg_control = u.buf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  for (;;) {
    ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n >= 0) return n == (ssize_t)len ? 0 : -EIO;
    if (errno != EINTR) return -errno;
  }
}

int carom__recv_fds(int sock, void *data, size_t len, int *fds, int nfds) {
  if (nfds < 0 || nfds > FDS_MAX) return -EINVAL;
  for (int i = 0; i < nfds; i++) fds[i] = -1;
  struct iovec iov = {.iov_base = data, .iov_len = len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * FDS_MAX)];
    struct cmsghdr align;
  } u;
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                      .msg_controllen = sizeof u.buf};
  ssize_t n;
  do n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  int got = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (got < nfds) fds[got++] = fd;
      else close(fd); /* more than asked for: never leak one */
    }
  }
  int rc = n == 0 ? CAROM_EEOF : 0;
  if (rc == 0 && (size_t)n < len) /* stream: the rest follows without ancillary data */
    rc = carom__recv_all(sock, (char *)data + n, len - (size_t)n);
  if (rc)
    for (int i = 0; i < got; i++) {
      close(fds[i]);
      fds[i] = -1;
    }
  return rc;
}

int carom__boot_read(int fd, carom__boot_t *b, unsigned char **buf) {
  uint32_t body;
  int rc = carom__recv_all(fd, &body, 4);
  if (rc) return rc;
  if (body > BOOT_MAX + 4096u) return -EMSGSIZE;
  carom__rbuf_t r = {.p = malloc(body ? body : 1), .len = body};
  if (!r.p) return -ENOMEM;
  if ((rc = carom__recv_all(fd, r.p, body))) {
    free(r.p);
    return rc;
  }
  memset(b, 0, sizeof *b);
  if (carom__rget_u32(&r) != BOOT_MAGIC) r.bad = true;
  b->ref.entry = carom__rget_str(&r);
  b->ref.object = carom__rget_str(&r);
  b->ref.offset = carom__rget_u64(&r);
  const uint8_t *flags = carom__rget(&r, 1);
  if (flags) {
    b->ref.has_offset = *flags & 1;
    b->daemon = *flags & 2;
    b->ignore_sigint = *flags & 4;
  }
  b->arg = carom__rget_bytes(&r, &b->arg_len);
  b->name = carom__rget_str(&r);
  b->identity = carom__rget_str(&r);
  b->parent_pid = (pid_t)carom__rget_u32(&r);
  b->parent_name = carom__rget_str(&r);
  uint32_t nenv = carom__rget_u32(&r);
  char **env = NULL;
  if (!r.bad && nenv <= body / 5) {
    env = calloc((size_t)nenv + 1, sizeof *env);
    if (!env) r.bad = true;
    for (uint32_t i = 0; env && i < nenv; i++) env[i] = carom__rget_str(&r);
  } else {
    r.bad = true;
  }
  b->env = env;
  if (r.bad) {
    free(env);
    free(r.p);
    return -EINVAL;
  }
  *buf = r.p;
  return 0;
}

/* ------------------------------------------------------ child set-up ---- */

void carom__signals_reset(bool ignore_sigint) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; s++) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    sigaction(s, &sa, NULL); /* EINVAL for the C library's reserved ones */
  }
  if (ignore_sigint) {
    sa.sa_handler = SIG_IGN;
    sigaction(SIGINT, &sa, NULL);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
}

void carom__env_apply(char *const *env) {
  for (size_t i = 0; env && env[i]; i++) {
    const char *eq = strchr(env[i], '=');
    if (!eq) {
      unsetenv(env[i]);
      continue;
    }
    char key[256];
    size_t k = (size_t)(eq - env[i]);
    if (k == 0 || k >= sizeof key) continue;
    memcpy(key, env[i], k);
    key[k] = 0;
    setenv(key, eq + 1, 1);
  }
}

void carom__child_deathsig(bool daemon, pid_t parent) {
  if (!daemon) return;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* The parent may have died before the prctl: then we were re-parented and
   * the signal will never come. */
  if (getppid() != parent) kill(getpid(), SIGKILL);
}

void carom__child_run(const carom__boot_t *b, carom_process_fn fn) {
  carom__current_set(b->name, b->identity, b->daemon, b->parent_pid, b->parent_name);
  carom__env_apply(b->env);
  int rc = fn ? fn(b->arg, b->arg_len) : 0;
  carom__proc_exit_handlers();
  fflush(NULL);
  _exit(rc);
}

/* Read the boot message from fd and become the Process. Used by spawn children
 * (fd inherited over exec) and forkserver children (fd from the server). */
__attribute__((noreturn)) static void boot_from_fd(int fd, pid_t expect_parent) {
  carom__boot_t b;
  unsigned char *buf = NULL;
  int rc = carom__boot_read(fd, &b, &buf);
  close(fd);
  if (rc) _exit(255); /* the parent went away before sending: nobody listens */
  carom__signals_reset(b.ignore_sigint);
  carom__child_deathsig(b.daemon, expect_parent ? expect_parent : b.parent_pid);
  carom_process_fn fn = carom__target_ref_resolve(&b.ref);
  if (!fn && (b.ref.has_offset || (b.ref.entry && b.ref.entry[0]))) {
    char msg[512];
    int n = snprintf(msg, sizeof msg,
                     "carom: cannot resolve process target '%s' (object '%s', offset %llu)\n",
                     b.ref.entry, b.ref.object, (unsigned long long)b.ref.offset);
    if (n > 0) (void)!write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    _exit(127);
  }
  carom__child_run(&b, fn);
}

/* Public for the forkserver's children. */
__attribute__((noreturn)) void carom__boot_from_fd(int fd, pid_t expect_parent);
void carom__boot_from_fd(int fd, pid_t expect_parent) { boot_from_fd(fd, expect_parent); }

int carom__env_fd(const char *var) {
  const char *s = getenv(var);
  if (!s) return -1;
  char *end;
  long v = strtol(s, &end, 10);
  unsetenv(var);
  return (*end || v < 0 || v > INT_MAX) ? -1 : (int)v;
}

/* The spawn / forkserver hook: see the file comment. */
__attribute__((constructor)) static void carom__boot_hook(void) {
  int fd = carom__env_fd("CAROM_SPAWN_FD");
  if (fd >= 0) boot_from_fd(fd, 0);
  fd = carom__env_fd("CAROM_FORKSERVER_FD");
  if (fd >= 0) carom__forkserver_main(fd);
}
