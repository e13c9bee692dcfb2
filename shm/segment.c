/* shm/segment.c — anonymous and named shared segments.
 *
 * Anonymous: a memfd sized with ftruncate and reserved with fallocate, mapped
 * MAP_SHARED; fork children inherit the mapping at the same address. No
 * /dev/shm involved. Without memfd (old kernels, seccomp) a MAP_SHARED |
 * MAP_ANONYMOUS mapping populated with MADV_POPULATE_WRITE does the same.
 *
 * Named: a file in /dev/shm, the directory glibc's shm_open() uses, so the
 * names are Python's. Creation never exposes a half-made segment: the file is
 * made nameless (O_TMPFILE), given its full size and its blocks (fallocate:
 * a too-small tmpfs fails here with ENOSPC rather than with SIGBUS on a later
 * page fault), registered with the resource tracker, and only then linked
 * under its name with linkat(), which fails with EEXIST if the name exists —
 * an exclusive create with no window where an attacher sees size 0. On a
 * filesystem without O_TMPFILE we fall back to O_CREAT|O_EXCL (with that
 * window). Invariant: a handle's created flag is true only for the process
 * whose linkat() published the name; only that handle unregisters it.
 */
#include "shm/internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct carom_shm {
  void *addr;
  size_t size;
  int fd;
  bool tracked; /* this handle created the name and registered it */
  char name[CAROM_SHM_NAME_MAX + 1];
  char path[sizeof CAROM__SHM_DIR + CAROM_SHM_NAME_MAX + 2];
};

static int new_handle(carom_shm_t **out) {
  carom_shm_t *s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->fd = -1;
  *out = s;
  return 0;
}

/* posix_fallocate returns an error number; map the ones that mean "no room". */
static int reserve(int fd, size_t size) {
  int e = posix_fallocate(fd, 0, (off_t)size);
  if (e == 0) return 0;
  if (e == EFBIG) return -ENOSPC;
  return -e;
}

int carom_shm_anon_create(size_t size, carom_shm_t **out) {
  if (size == 0 || size > (size_t)PTRDIFF_MAX) return -EINVAL;
  carom_shm_t *s;
  int rc = new_handle(&s);
  if (rc < 0) return rc;
  s->size = size;
  int fd = (int)syscall(SYS_memfd_create, "carom-anon", MFD_CLOEXEC);
  if (fd >= 0) {
    if (ftruncate(fd, (off_t)size) != 0) {
      rc = -errno;
      goto fail_fd;
    }
    if ((rc = reserve(fd, size)) < 0) goto fail_fd;
    s->addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s->addr == MAP_FAILED) {
      rc = -errno;
      goto fail_fd;
    }
    s->fd = fd;
    *out = s;
    return 0;
  fail_fd:
    close(fd);
    free(s);
    return rc;
  }
  /* No memfd: anonymous shared memory, populated now so a shortage is an
   * error here. MADV_POPULATE_WRITE reports what a fault would have turned
   * into SIGBUS as EFAULT/ENOMEM. */
  s->addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (s->addr == MAP_FAILED) {
    rc = -errno;
    free(s);
    return rc;
  }
  if (madvise(s->addr, size, MADV_POPULATE_WRITE) != 0 && errno != EINVAL) {
    rc = errno == EFAULT ? -ENOMEM : -errno;
    munmap(s->addr, size);
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

/* Validate and normalise a name into s->name and s->path. */
static int set_name(carom_shm_t *s, const char *name) {
  if (!name) return -EINVAL;
  if (name[0] == '/') name++;
  size_t n = strlen(name);
  if (n == 0 || n > CAROM_SHM_NAME_MAX || strchr(name, '/') || strcmp(name, ".") == 0 ||
      strcmp(name, "..") == 0)
    return -EINVAL;
  memcpy(s->name, name, n + 1);
  snprintf(s->path, sizeof s->path, "%s/%s", CAROM__SHM_DIR, name);
  return 0;
}

/* ENOENT about a name: is it the name, or is there no /dev/shm at all? */
static int name_errno(int e) {
  if (e == ENOENT) {
    struct stat st;
    if (stat(CAROM__SHM_DIR, &st) != 0 || !S_ISDIR(st.st_mode)) return -ENODEV;
  }
  return -e;
}

static int link_tmpfile(int fd, const char *path) {
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0) return 0;
  int e = errno;
  if (e != ENOENT) return -e;
  /* No /proc: AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH). */
  if (linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH) == 0) return 0;
  return -errno;
}

int carom_shm_create(const char *name, size_t size, unsigned flags, carom_shm_t **out) {
  if (size == 0 || size > (size_t)PTRDIFF_MAX || (flags & ~(unsigned)CAROM_SHM_UNTRACKED))
    return -EINVAL;
  carom_shm_t *s;
  int rc = new_handle(&s);
  if (rc < 0) return rc;
  if ((rc = set_name(s, name)) < 0) goto out_free;
  s->size = size;
  bool track = !(flags & CAROM_SHM_UNTRACKED);

  bool tmpfile = true;
  int fd = open(CAROM__SHM_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    tmpfile = false; /* filesystem without O_TMPFILE */
    fd = open(s->path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
  }
  if (fd < 0) {
    rc = name_errno(errno);
    goto out_free;
  }
  /* From here on, `published` says whether the name exists and is ours. */
  bool published = !tmpfile, registered = false;
  if (ftruncate(fd, (off_t)size) != 0) {
    rc = -errno;
    goto out_fd;
  }
  if ((rc = reserve(fd, size)) < 0) goto out_fd;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = -errno;
    goto out_fd;
  }
  if (track) {
    /* Before the name is visible: a creator killed right after linkat()
     * still has its name cleaned up. */
    if ((rc = carom__tracker_register(s->path, (uint64_t)st.st_ino)) < 0) goto out_fd;
    registered = true;
  }
  if (tmpfile) {
    if ((rc = link_tmpfile(fd, s->path)) < 0) goto out_fd;
    published = true;
  }
  s->addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (s->addr == MAP_FAILED) {
    rc = -errno;
    goto out_fd;
  }
  s->fd = fd;
  s->tracked = track;
  *out = s;
  return 0;

out_fd:
  if (published) unlink(s->path);
  if (registered) carom__tracker_unregister(s->path);
  close(fd);
out_free:
  free(s);
  return rc;
}

int carom_shm_attach(const char *name, size_t size, carom_shm_t **out) {
  carom_shm_t *s;
  int rc = new_handle(&s);
  if (rc < 0) return rc;
  if ((rc = set_name(s, name)) < 0) goto out_free;
  int fd = open(s->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    rc = name_errno(errno);
    goto out_free;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = -errno;
    goto out_fd;
  }
  if ((size_t)st.st_size < size) {
    rc = -EOVERFLOW;
    goto out_fd;
  }
  if (size == 0) size = (size_t)st.st_size;
  if (size == 0) {
    rc = -EOVERFLOW; /* an empty file is not a segment (or its creator is mid-way) */
    goto out_fd;
  }
  s->addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (s->addr == MAP_FAILED) {
    rc = -errno;
    goto out_fd;
  }
  s->size = size;
  s->fd = fd;
  *out = s;
  return 0;
out_fd:
  close(fd);
out_free:
  free(s);
  return rc;
}

void *carom_shm_addr(const carom_shm_t *s) { return s->addr; }
size_t carom_shm_size(const carom_shm_t *s) { return s->size; }
const char *carom_shm_name(const carom_shm_t *s) { return s->name[0] ? s->name : NULL; }
int carom_shm_fd(const carom_shm_t *s) { return s->fd; }

int carom_shm_unlink(carom_shm_t *s) {
  if (!s->name[0]) return -EINVAL;
  int rc = unlink(s->path) == 0 ? 0 : name_errno(errno);
  if (s->tracked) {
    carom__tracker_unregister(s->path);
    s->tracked = false;
  }
  return rc;
}

int carom_shm_unlink_name(const char *name) {
  carom_shm_t tmp;
  memset(&tmp, 0, sizeof tmp);
  int rc = set_name(&tmp, name);
  if (rc < 0) return rc;
  return unlink(tmp.path) == 0 ? 0 : name_errno(errno);
}

void carom_shm_close(carom_shm_t *s) {
  if (!s) return;
  if (s->addr && s->addr != MAP_FAILED) munmap(s->addr, s->size);
  if (s->fd >= 0) close(s->fd);
  free(s);
}
