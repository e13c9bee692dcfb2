/* proc/internal.h — private declarations of the process layer.
 *
 * Files: process.c (Process objects, children list, contexts, current process,
 * atexit), boot.c (the child side: boot message, signal/env reset, target
 * resolution, the spawn/forkserver constructor), spawn.c (fork+exec),
 * forkserver.c (server and client), cpu.c (cpu_count).
 */
#ifndef CAROM_PROC_INTERNAL_H
#define CAROM_PROC_INTERNAL_H

#include "base/internal.h"
#include "carom/process.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum carom__method { CAROM__FORK = 0, CAROM__SPAWN = 1, CAROM__FORKSERVER = 2 };

/* CREATED -> STARTING -> STARTED -> ENDED -> CLOSED (STARTING -> CREATED when
 * start fails; CREATED -> CLOSED). */
enum carom__pstate { CAROM__CREATED, CAROM__STARTING, CAROM__STARTED, CAROM__ENDED, CAROM__CLOSED };

/* How a target travels across exec: a registry name, else (object, offset).
 * object is "" for the main program, else the dl_iterate_phdr name. */
typedef struct {
  char *entry;
  char *object;
  uint64_t offset;
  bool has_offset;
} carom__target_ref_t;

struct carom_process {
  pthread_mutex_t mu; /* guards state, fds and reaping */
  /* configuration, fixed at create */
  carom_process_fn fn;
  carom__target_ref_t ref;
  unsigned char *arg;
  size_t arg_len;
  char *name;
  char *identity;
  char **env; /* NULL-terminated */
  bool daemon, ignore_sigint;
  carom_context_t *ctx;
  pid_t creator;
  /* state */
  _Atomic int state; /* enum carom__pstate; read without mu by quick checks */
  int method;
  pid_t pid;
  int pidfd;    /* -1 if none (no kernel support, or forkserver without one) */
  int sentinel; /* pidfd, death-pipe read end, or forkserver status channel */
  int exitcode;
  /* children list (guarded by the list lock) */
  bool listed, detached;
  struct carom_process *next;
};

/* What a child needs to become the Process (sent over a socket for spawn and
 * forkserver children, taken from memory for fork children). */
typedef struct {
  carom__target_ref_t ref;
  const unsigned char *arg;
  size_t arg_len;
  const char *name, *identity;
  char *const *env;
  bool daemon, ignore_sigint;
  pid_t parent_pid;
  const char *parent_name;
} carom__boot_t;

/* ---- boot.c ---- */
/* Serialise b into a malloc'd buffer (first 4 bytes: length of the rest). */
int carom__boot_encode(const carom__boot_t *b, unsigned char **out, size_t *len);
/* Read one boot message from fd into *b (strings point into *buf, which the
 * caller frees). 0 or negative errno. */
int carom__boot_read(int fd, carom__boot_t *b, unsigned char **buf);
/* sendmsg of len bytes carrying nfds (<= 4) descriptors as SCM_RIGHTS.
 * 0 or -errno. */
int carom__send_fds(int sock, const void *data, size_t len, const int *fds, int nfds);
/* Receive exactly len bytes; fds[0..nfds) get the passed descriptors in
 * order (CLOEXEC), -1 where fewer came; extra ones are closed. 0, CAROM_EEOF
 * or -errno (then no descriptor is kept). */
int carom__recv_fds(int sock, void *data, size_t len, int *fds, int nfds);
/* Resolve fn into a reference that survives exec. 0, -EINVAL (address not in
 * any loaded object). */
int carom__target_ref_make(carom_process_fn fn, const char *entry, carom__target_ref_t *ref);
void carom__target_ref_free(carom__target_ref_t *ref);
carom_process_fn carom__target_ref_resolve(const carom__target_ref_t *ref);
/* The fd number in environment variable var, removed from the environment
 * at once (so nothing exec'd later sees it); -1 if absent or malformed. */
int carom__env_fd(const char *var);
/* Reset signal dispositions and the mask (async-signal-safe). */
void carom__signals_reset(bool ignore_sigint);
/* Apply "K=V" / "K" changes to the environment (not async-signal-safe). */
void carom__env_apply(char *const *env);
/* Become the Process described by b, run fn, run the exit handlers, _exit. */
__attribute__((noreturn)) void carom__child_run(const carom__boot_t *b, carom_process_fn fn);
/* Death-signal setup in a fresh child: PDEATHSIG(SIGKILL) for daemons, then
 * make sure the parent did not die before it took effect. async-signal-safe. */
void carom__child_deathsig(bool daemon, pid_t parent);

/* ---- process.c ---- */
/* The identity of the calling process. */
void carom__current_set(const char *name, const char *identity, bool daemon, pid_t parent_pid,
                        const char *parent_name);
/* In a freshly forked child of the caller: forget the parent's children and
 * forkserver (close their fds). Runs single-threaded. */
void carom__proc_after_fork_child(void);
/* The carom exit handler (terminate daemonic, join all children, stop the
 * forkserver); also run by children after their target returns. */
void carom__proc_exit_handlers(void);
/* Serialises carom's own fork() calls against each other, so an fd meant for
 * one child (exec-failure pipe, death pipe) is never inherited by a sibling. */
extern pthread_mutex_t carom__fork_mu;
/* Death pipe fallback: pipe2(O_CLOEXEC); child keeps [1], parent [0]. */

/* ---- spawn.c ---- */
/* fork+exec /proc/self/exe with the env marker `var`=fd of an inherited
 * socket, sending `msg` on it. With chan non-NULL the parent's end of that
 * socket is kept and returned there (the forkserver's command channel), else
 * closed. Returns the pid, *pidfd (-1 if none) and *sentinel, or -errno. */
pid_t carom__spawn_exec(const char *var, const unsigned char *msg, size_t msg_len, char *const *env,
                        bool daemon, int *chan, int *pidfd, int *sentinel);

/* ---- forkserver.c ---- */
/* Ask the forkserver (starting it if needed) for a child running msg.
 * Returns the pid, *pidfd (-1 if none) and *chan (sentinel/status channel). */
pid_t carom__forkserver_start_child(const unsigned char *msg, size_t msg_len, int *pidfd,
                                    int *chan);
/* Run the server loop on the command socket fd; never returns. */
__attribute__((noreturn)) void carom__forkserver_main(int fd);
void carom__forkserver_stop(void);
/* Tests: the server's pid (0: none), and how long a start waits for its
 * answer before killing it (default 30 s). */
pid_t carom__forkserver_pid(void);
void carom__forkserver_set_reply_timeout(double seconds);
void carom__forkserver_after_fork_child(void);

/* ---- cpu.c ---- */
/* The CPU limit of cgroup `path` (relative to the cgroup2 mount `root`),
 * minimum over it and its ancestors: ceil(quota/period), or 0 if none. */
int carom__cgroup_cpu_limit(const char *root, const char *path);

#endif /* CAROM_PROC_INTERNAL_H */
