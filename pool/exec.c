/* pool/exec.c — the pool's "forkserver" and "spawn" start methods: a template
 * process made by exec'ing the program afresh instead of forking the creator.
 *
 * Why: a forked template is a copy of the creator, so every worker fork pays
 * for the creator's page tables (fork cost grows with the parent's mappings)
 * and inherits whatever locks the creator's other threads held. An exec'd
 * template is a small, clean, single-threaded image: worker forks are cheap
 * and safe whatever the creator looks like. The price: functions cannot
 * travel as plain pointers (ASLR places the image elsewhere), so they travel
 * as (object, offset) like Process targets (proc/boot.c), and the
 * initializer's argument travels as bytes (initarg_len).
 *
 * Parent side (carom__pool_exec_template): fork+exec /proc/self/exe through
 * proc/spawn.c with CAROM_POOL_TEMPLATE_FD naming an inherited socket; send a
 * header carrying the shared-memory memfd, the supervisor's eventfd and the
 * template request socket (SCM_RIGHTS), then the configuration; read back the
 * template's table of loaded objects (name, load address), used to translate
 * task function pointers (carom__pool_fn_translate).
 *
 * Child side: the constructor below takes over before main(), maps the shared
 * region, resolves the initializer, answers, and becomes the template
 * (pool/template.c). Under "spawn" the template does not fork workers from
 * itself but execs the program once more per worker (CAROM_POOL_WORKER_FDS),
 * so each worker is a fresh image; that worker image maps the region and runs
 * carom__pool_worker_main.
 */
#include "pool/internal.h"
#include "proc/internal.h"

#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

enum { XHDR_MAGIC = 0x4c4f4f50u /* "POOL" */, XREP_MAGIC = 0x504c4f4fu, XCFG_MAX = 1u << 30 };
enum { XBOOT_TIMEOUT_MS = 30000 };
/* A translated function: (object index + 1) << 48 | offset in the object. */
#define XFN_SHIFT 48
#define XFN_OFFSET_LIMIT (1ull << XFN_SHIFT)

typedef struct {
  uint32_t magic;
  uint32_t len; /* configuration bytes that follow */
} xhdr_t;

/* ------------------------------------------------------- configuration */

/* Everything a template or worker image needs besides the three fds. */
typedef struct {
  int32_t owner;
  uint32_t method; /* POOL_METHOD_* */
  uint64_t shm_size;
  uint32_t maxtasksperchild;
  uint32_t catch_sigint;
  uint32_t has_init;
  uint64_t init_offset;
  const char *init_object; /* "" = main program */
  const unsigned char *initarg;
  size_t initarg_len;
} xcfg_t;

static void xcfg_encode(carom__wbuf_t *b, const xcfg_t *c) {
  carom__wput_u32(b, (uint32_t)c->owner);
  carom__wput_u32(b, c->method);
  carom__wput_u64(b, c->shm_size);
  carom__wput_u32(b, c->maxtasksperchild);
  carom__wput_u32(b, c->catch_sigint);
  carom__wput_u32(b, c->has_init);
  carom__wput_u64(b, c->init_offset);
  const char *o = c->init_object ? c->init_object : "";
  carom__wput_str(b, o);
  carom__wput_bytes(b, c->initarg, c->initarg_len);
}

static bool xcfg_decode(const unsigned char *p, size_t len, xcfg_t *c) {
  carom__rbuf_t r = {(unsigned char *)p, len, 0, false};
  c->owner = (int32_t)carom__rget_u32(&r);
  c->method = carom__rget_u32(&r);
  c->shm_size = carom__rget_u64(&r);
  c->maxtasksperchild = carom__rget_u32(&r);
  c->catch_sigint = carom__rget_u32(&r);
  c->has_init = carom__rget_u32(&r);
  c->init_offset = carom__rget_u64(&r);
  c->init_object = carom__rget_str(&r);
  c->initarg = carom__rget_bytes(&r, &c->initarg_len);
  return !r.bad && c->init_object && c->initarg;
}

/* ------------------------------------------------------ object tables */

typedef struct {
  char *name;
  uintptr_t base;
} xobj_t;

struct pool_objtab {
  xobj_t *v;
  size_t n;
};

typedef struct {
  carom__wbuf_t *b;
  uint32_t n;
} xlist_t;

static int list_cb(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  xlist_t *a = data;
  /* The first object is the program itself: named "" as in proc's refs. */
  const char *name = a->n == 0 ? "" : info->dlpi_name ? info->dlpi_name : "";
  carom__wput_u64(a->b, (uint64_t)info->dlpi_addr);
  carom__wput_str(a->b, name);
  a->n++;
  return 0;
}

void carom__pool_objtab_free(pool_objtab_t *t) {
  if (!t) return;
  for (size_t i = 0; i < t->n; i++) free(t->v[i].name);
  free(t->v);
  free(t);
}

int carom__pool_fn_translate(const pool_objtab_t *t, const void *fn, uint64_t *out) {
  carom_process_fn pf;
  uintptr_t a = (uintptr_t)fn;
  memcpy(&pf, &a, sizeof pf);
  carom__target_ref_t ref;
  int rc = carom__target_ref_make(pf, NULL, &ref);
  if (rc) return rc;
  rc = -ENOENT;
  if (ref.has_offset) {
    for (size_t i = 0; i < t->n; i++) {
      if (strcmp(t->v[i].name, ref.object ? ref.object : "") != 0) continue;
      if (ref.offset >= XFN_OFFSET_LIMIT) break;
      *out = ((uint64_t)(i + 1) << XFN_SHIFT) | ref.offset;
      rc = 0;
      break;
    }
  }
  carom__target_ref_free(&ref);
  return rc;
}

/* Worker side: the object table of this image, built once (a worker runs
 * one image for its whole life). Objects are listed in load order, the same
 * in every exec of the same program with the same environment. */
typedef struct {
  uintptr_t *base;
  size_t n, cap;
} xbases_t;

static int bases_cb(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  xbases_t *b = data;
  if (b->n == b->cap) {
    size_t c = b->cap ? 2 * b->cap : 16;
    uintptr_t *q = realloc(b->base, c * sizeof *q);
    if (!q) return 1;
    b->base = q;
    b->cap = c;
  }
  b->base[b->n++] = info->dlpi_addr;
  return 0;
}

carom_task_fn carom__pool_fn_resolve(uint64_t ref) {
  static xbases_t bases;
  if (!bases.n) dl_iterate_phdr(bases_cb, &bases);
  uint64_t idx = ref >> XFN_SHIFT;
  if (idx == 0 || idx > bases.n) return NULL;
  uintptr_t addr = bases.base[idx - 1] + (uintptr_t)(ref & (XFN_OFFSET_LIMIT - 1));
  carom_task_fn fn;
  memcpy(&fn, &addr, sizeof fn);
  return fn;
}

/* ------------------------------------------------------- parent side */

/* carom__recv_all on a socket with SO_RCVTIMEO: a timeout is -ETIMEDOUT. */
static int recv_timed(int sock, void *buf, size_t len) {
  int rc = carom__recv_all(sock, buf, len);
  return rc == -EAGAIN || rc == -EWOULDBLOCK ? -ETIMEDOUT : rc;
}

int carom__pool_exec_template(const pool_exec_args_t *a, pid_t *pid_out, int *pidfd_out,
                              pool_objtab_t **tab_out, char *err, size_t errlen) {
  *pid_out = -1;
  *pidfd_out = -1;
  *tab_out = NULL;
  err[0] = 0;
  xcfg_t c = {.owner = a->owner, .method = a->method, .shm_size = a->shm_size,
              .maxtasksperchild = a->opts->maxtasksperchild,
              .catch_sigint = a->opts->catch_sigint, .initarg = a->opts->initarg,
              .initarg_len = a->opts->initarg ? a->opts->initarg_len : 0};
  carom__target_ref_t ref = {0};
  if (a->opts->initializer) {
    carom_process_fn pf;
    uintptr_t ia = (uintptr_t)a->opts->initializer;
    memcpy(&pf, &ia, sizeof pf);
    int rc = carom__target_ref_make(pf, NULL, &ref);
    if (rc == 0 && !ref.has_offset) rc = -EINVAL;
    if (rc) {
      carom__target_ref_free(&ref);
      snprintf(err, errlen, "the initializer is not in a loaded object: it cannot cross exec");
      return rc;
    }
    c.has_init = 1;
    c.init_offset = ref.offset;
    c.init_object = ref.object;
  }
  carom__wbuf_t cfg = {0};
  xcfg_encode(&cfg, &c);
  carom__target_ref_free(&ref);
  if (cfg.oom || cfg.len > XCFG_MAX) {
    free(cfg.p);
    return -ENOMEM;
  }

  int chan = -1, pidfd = -1, sentinel = -1;
  pid_t pid = carom__spawn_exec("CAROM_POOL_TEMPLATE_FD", NULL, 0, NULL, false, &chan, &pidfd,
                                &sentinel);
  if (pid < 0) {
    free(cfg.p);
    snprintf(err, errlen, "cannot exec the program for the pool template: %s",
             carom_strerror((int)pid));
    return (int)pid;
  }
  if (sentinel >= 0 && sentinel != pidfd) close(sentinel); /* death pipe: we reap it ourselves */
  /* A program whose start-up never reaches libcarom's constructor must not
   * hang the creator: every send and read below waits at most
   * XBOOT_TIMEOUT_MS (a timeout comes back as -EAGAIN: -ETIMEDOUT). */
  struct timeval tv = {XBOOT_TIMEOUT_MS / 1000, 0};
  int rc = 0;
  if (setsockopt(chan, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      setsockopt(chan, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
    rc = -errno;
  xhdr_t h = {XHDR_MAGIC, (uint32_t)cfg.len};
  int fds[3] = {a->shmfd, a->evfd, a->tplsock};
  if (rc == 0) rc = carom__send_fds(chan, &h, sizeof h, fds, 3);
  if (rc == 0) rc = carom__send_all(chan, cfg.p, cfg.len);
  if (rc == -EAGAIN || rc == -EWOULDBLOCK) rc = -ETIMEDOUT;
  free(cfg.p);

  /* The answer: magic, status, then (status 0) the object table or (else)
   * an error message. */
  uint32_t rep[3] = {0, 0, 0};
  if (rc == 0) rc = recv_timed(chan, rep, sizeof rep);
  if (rc == 0 && rep[0] != XREP_MAGIC) rc = -EPROTO;
  unsigned char *body = NULL;
  if (rc == 0 && rep[2] > XCFG_MAX) rc = -EPROTO;
  if (rc == 0 && !(body = malloc(rep[2] + 1))) rc = -ENOMEM;
  if (rc == 0) rc = recv_timed(chan, body, rep[2]);
  if (rc == 0 && (int32_t)rep[1] < 0) {
    body[rep[2]] = 0;
    snprintf(err, errlen, "%s", (char *)body);
    rc = (int32_t)rep[1];
  }
  pool_objtab_t *t = NULL;
  if (rc == 0) {
    carom__rbuf_t r = {body, rep[2], 0, false};
    uint32_t n = carom__rget_u32(&r);
    t = calloc(1, sizeof *t);
    if (!t || !(t->v = calloc(n ? n : 1, sizeof *t->v))) rc = -ENOMEM;
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
      uint64_t base = carom__rget_u64(&r);
      const char *name = carom__rget_str(&r);
      if (r.bad || !name) {
        rc = -EPROTO;
        break;
      }
      t->v[i].base = (uintptr_t)base;
      if (!(t->v[i].name = strdup(name))) rc = -ENOMEM;
      t->n = i + 1;
    }
  }
  free(body);
  close(chan);
  if (rc) {
    carom__pool_objtab_free(t);
    if (!err[0])
      snprintf(err, errlen, "the pool template did not start: %s", carom_strerror(rc));
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    if (pidfd >= 0) close(pidfd);
    return rc;
  }
  *pid_out = pid;
  *pidfd_out = pidfd;
  *tab_out = t;
  return 0;
}

/* -------------------------------------------------------- child side */

/* The exec'd image's configuration, kept for the template's lifetime (its
 * workers, forked from it, read it too). */
static carom_pool_opts_t x_opts;
static struct pool_worker_cfg x_cfg;
static unsigned char *x_cfgbuf;
static size_t x_cfglen;

/* Map the region, resolve the initializer, fill x_opts/x_cfg. 0 or -errno
 * with a message in err. */
static int x_setup(const xcfg_t *c, int shmfd, int evfd, char *err, size_t errlen) {
  void *shm = mmap(NULL, c->shm_size, PROT_READ | PROT_WRITE, MAP_SHARED, shmfd, 0);
  if (shm == MAP_FAILED) {
    snprintf(err, errlen, "pool template: mmap of the shared region: %s", strerror(errno));
    return -errno;
  }
  x_cfg = (struct pool_worker_cfg){shm, evfd, &x_opts, (int)c->method, -1};
  memset(&x_opts, 0, sizeof x_opts);
  x_opts.size = sizeof x_opts;
  x_opts.maxtasksperchild = c->maxtasksperchild;
  x_opts.catch_sigint = c->catch_sigint != 0;
  if (c->has_init) {
    carom__target_ref_t ref = {.object = (char *)c->init_object, .offset = c->init_offset,
                               .has_offset = true};
    carom_process_fn pf = carom__target_ref_resolve(&ref);
    if (!pf) {
      snprintf(err, errlen, "pool template: the initializer (object \"%s\", offset %#llx) is "
               "not in this program image", c->init_object, (unsigned long long)c->init_offset);
      return -ENOENT;
    }
    memcpy(&x_opts.initializer, &pf, sizeof pf);
    x_opts.initarg = c->initarg_len ? (void *)c->initarg : NULL;
    x_opts.initarg_len = c->initarg_len;
  }
  return 0;
}

static void x_reply(int fd, int status, const char *err) {
  carom__wbuf_t body = {0};
  if (status == 0) {
    carom__wput_u32(&body, 0); /* count, patched below */
    xlist_t a = {&body, 0};
    dl_iterate_phdr(list_cb, &a);
    if (!body.oom) memcpy(body.p, &a.n, 4);
  } else {
    carom__wput(&body, err, strlen(err) + 1);
  }
  uint32_t rep[3] = {XREP_MAGIC, (uint32_t)status, (uint32_t)body.len};
  carom__wbuf_t b = {0};
  carom__wput(&b, rep, sizeof rep);
  carom__wput(&b, body.p, body.len);
  if (!b.oom && !body.oom) (void)carom__send_all(fd, b.p, b.len);
  free(b.p);
  free(body.p);
}


__attribute__((noreturn)) static void x_template(int fd) {
  xhdr_t h;
  int fds[3] = {-1, -1, -1};
  char err[ERRMSG_MAX] = "";
  int rc = carom__recv_fds(fd, &h, sizeof h, fds, 3);
  if (rc == 0 && (fds[0] < 0 || fds[1] < 0 || fds[2] < 0)) rc = -EPROTO;
  if (rc == 0 && (h.magic != XHDR_MAGIC || h.len > XCFG_MAX)) rc = -EPROTO;
  if (rc == 0 && !(x_cfgbuf = malloc(h.len ? h.len : 1))) rc = -ENOMEM;
  if (rc == 0) rc = carom__recv_all(fd, x_cfgbuf, h.len);
  x_cfglen = h.len;
  xcfg_t c;
  if (rc == 0 && !xcfg_decode(x_cfgbuf, x_cfglen, &c)) rc = -EPROTO;
  if (rc) {
    snprintf(err, sizeof err, "pool template: bad start message: %s", carom_strerror(rc));
  } else {
    rc = x_setup(&c, fds[0], fds[1], err, sizeof err);
  }
  x_reply(fd, rc, err);
  close(fd);
  if (rc) _exit(EX_SETUP);
  if (c.method == POOL_METHOD_SPAWN) x_cfg.shmfd = fds[0]; /* each worker image maps it again */
  else close(fds[0]);
  carom__pool_template_main(fds[2], (pid_t)c.owner, &x_cfg);
}

/* ---- spawn: one exec per worker -------------------------------------- */

extern char **environ;

void carom__pool_exec_worker(unsigned slot, const struct pool_worker_cfg *cfg) {
  /* Runs in a fresh fork of the (single-threaded) template. The worker image
   * gets the region's memfd, the eventfd and the configuration (a memfd). */
  int cfd = memfd_create("carom-pool-cfg", MFD_CLOEXEC);
  if (cfd < 0 || write(cfd, x_cfgbuf, x_cfglen) != (ssize_t)x_cfglen) _exit(EX_SETUP);
  int keep[3] = {cfg->shmfd, cfg->evfd, cfd};
  for (int i = 0; i < 3; i++)
    if (fcntl(keep[i], F_SETFD, 0) != 0) _exit(EX_SETUP);
  char var[96];
  snprintf(var, sizeof var, "CAROM_POOL_WORKER_FDS=%u,%d,%d,%d", slot, keep[0], keep[1], keep[2]);
  size_t n = 0;
  while (environ && environ[n]) n++;
  char **envp = calloc(n + 2, sizeof *envp);
  if (!envp) _exit(EX_SETUP);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "CAROM_POOL_WORKER_FDS=", 22) != 0) envp[k++] = environ[i];
  envp[k++] = var;
  envp[k] = NULL;
  char *argv[] = {program_invocation_name, NULL};
  execve("/proc/self/exe", argv, envp);
  _exit(EX_SETUP);
}

__attribute__((noreturn)) static void x_worker(const char *spec) {
  unsigned slot;
  int shmfd, evfd, cfd;
  if (sscanf(spec, "%u,%d,%d,%d", &slot, &shmfd, &evfd, &cfd) != 4) _exit(EX_SETUP);
  int fds[3] = {shmfd, evfd, cfd};
  for (int i = 0; i < 3; i++) (void)fcntl(fds[i], F_SETFD, FD_CLOEXEC);
  off_t len = lseek(cfd, 0, SEEK_END);
  if (len <= 0 || len > XCFG_MAX || !(x_cfgbuf = malloc((size_t)len))) _exit(EX_SETUP);
  if (pread(cfd, x_cfgbuf, (size_t)len, 0) != len) _exit(EX_SETUP);
  close(cfd);
  x_cfglen = (size_t)len;
  xcfg_t c;
  char err[ERRMSG_MAX];
  if (!xcfg_decode(x_cfgbuf, x_cfglen, &c)) _exit(EX_SETUP);
  if (x_setup(&c, shmfd, evfd, err, sizeof err) != 0) {
    if (x_cfg.shm) memcpy(pool_slot(x_cfg.shm, slot)->errmsg, err, sizeof err);
    _exit(EX_SETUP);
  }
  close(shmfd);
  carom__pool_worker_main(slot, &x_cfg);
}

/* The hook: an exec'd pool template or worker image never reaches main(). */
__attribute__((constructor)) static void carom__pool_exec_hook(void) {
  const char *w = getenv("CAROM_POOL_WORKER_FDS");
  if (w) {
    char spec[96];
    snprintf(spec, sizeof spec, "%s", w);
    unsetenv("CAROM_POOL_WORKER_FDS");
    x_worker(spec);
  }
  int fd = carom__env_fd("CAROM_POOL_TEMPLATE_FD");
  if (fd >= 0) x_template(fd);
}
