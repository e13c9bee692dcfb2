/* carom/process.h — processes (Python's multiprocessing.Process), start
 * methods and contexts, the identity of the calling process, cpu_count.
 *
 * A Process runs a target, `int fn(const void *arg, size_t len)`, in a new
 * process. The argument is a byte string, copied when the Process is created.
 * The child's exit status is the target's return value (the kernel keeps the
 * low 8 bits); a target that calls exit()/_exit() itself exits with that code.
 * Python's exitcode convention is kept: unknown while running, the exit status
 * once it exited, minus the signal number when a signal killed it.
 *
 * Start methods (exactly multiprocessing's three):
 *   "fork"       fork() the caller; the child runs the target in a copy of the
 *                caller's memory. Default. Unsafe from a parent that already runs
 *                threads when those threads may hold locks the target needs.
 *   "spawn"      fork() + execve("/proc/self/exe"): a fresh copy of the program
 *                image. A constructor in libcarom recognises the spawned child
 *                (environment variable CAROM_SPAWN_FD) before main() runs, reads
 *                the target, argument, name and identity from an inherited
 *                socket, runs the target and exits: main() never runs in the
 *                child (this is what lets a GoogleTest binary spawn itself).
 *   "forkserver" a single-threaded server, itself spawned fresh on first use,
 *                forks children on request. Safe from a threaded parent, and
 *                cheaper than spawn per child.
 * The same target works under all three without code changes, because a target
 * is named in a way that survives exec: by its CAROM_ENTRY registration name if
 * it has one, else by its address relative to the load address of the ELF
 * object (the program or a shared library) that contains it.
 *
 * Sentinel: every started Process has a file descriptor that becomes readable
 * when the process has ended (a pidfd for fork/spawn children; for forkserver
 * children, the status channel on which the server reports the exit status).
 * Poll it together with other fds to wait for messages and deaths in one call.
 *
 * Daemonic children: at normal exit of the parent (atexit, as Python) daemonic
 * children are terminated (SIGTERM) and joined, then every other child is
 * joined. A daemonic child also gets PR_SET_PDEATHSIG(SIGKILL), so it dies when
 * its parent is killed outright. Linux sends that signal when the *thread* that
 * created the child ends: start daemonic processes from a thread that outlives
 * them (the main thread, a pool's supervisor). A daemonic process may not start
 * children of its own (Python's rule): carom_process_start returns -EPERM.
 *
 * Thread safety: every function may be called from any thread. Two threads may
 * join, poll or signal the same Process at once; free/close race with nothing
 * only if the caller guarantees it (as for any free). Process handles belong to
 * the process that created them: in a forked child they answer CAROM_EFORKED.
 * Not async-signal-safe, except where a prototype says so.
 */
#ifndef CAROM_PROCESS_H
#define CAROM_PROCESS_H

#include "carom/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A process target. Returns the child's exit status. */
typedef int (*carom_process_fn)(const void *arg, size_t len);

/* ------------------------------------------------------------ entries ----
 * Named entry points. A target registered with CAROM_ENTRY(name, fn) is sent
 * to spawn and forkserver children by name, which needs nothing from the ELF
 * layout; unregistered function pointers are sent as (object, offset) and work
 * as long as the child runs the same program image, which spawn guarantees.
 * A registered entry can also be named as a string (opts.entry), e.g. from a
 * configuration file. Registration runs in constructors of priority 101, before
 * libcarom's spawn hook (default priority) when libcarom is linked statically.
 * With a shared libcarom the hook runs before the program's constructors: name
 * lookup then falls back to the offset, and targets must not rely on the
 * program's own static initialisers. */
typedef struct carom_entry {
  const char *name;
  carom_process_fn fn;
  struct carom_entry *next; /* private */
} carom_entry_t;

/* Add e to the registry. e must live forever (static). Thread-safe. */
CAROM_EXTERN void carom_entry_register(carom_entry_t *e);
/* The registered function of that name, or NULL. */
CAROM_EXTERN carom_process_fn carom_entry_lookup(const char *name);

#define CAROM_ENTRY(name, fn)                                                    \
  static carom_entry_t carom__entry_##name = {#name, fn, 0};                     \
  __attribute__((constructor(101))) static void carom__entry_reg_##name(void) { \
    carom_entry_register(&carom__entry_##name);                                  \
  }

/* ------------------------------------------------------------ contexts ----
 * A context fixes a start method (multiprocessing.get_context). Contexts are
 * static objects owned by carom; never freed. */
typedef struct carom_context carom_context_t;

/* The context of `method` ("fork", "spawn", "forkserver"), or of the default
 * start method when method is NULL (fixing it, as Python's get_context() does).
 * 0, or -EINVAL for an unknown method. */
CAROM_EXTERN int carom_get_context(const char *method, carom_context_t **out);
/* The context's start method name. */
CAROM_EXTERN const char *carom_context_start_method(const carom_context_t *ctx);
/* Set the default start method. Once the default is fixed (by a previous call,
 * by carom_get_start_method(false), or by starting a Process on the default
 * context) this fails with -EBUSY unless force is true. method NULL with force
 * true unsets it. 0, -EINVAL (unknown method), -EBUSY. */
CAROM_EXTERN int carom_set_start_method(const char *method, bool force);
/* The default start method's name. With allow_none true, NULL if it is not
 * fixed yet; with false, fixes it to "fork" if it was not set. */
CAROM_EXTERN const char *carom_get_start_method(bool allow_none);
/* Fill out[0..cap) with the supported start methods, the default first.
 * Returns how many exist (3). */
CAROM_EXTERN int carom_get_all_start_methods(const char **out, int cap);
/* Entries (CAROM_ENTRY names) the forkserver calls, with an empty argument,
 * when it starts, so that its children inherit what they set up. Takes effect
 * for a server started after the call. names NULL-terminated; copied.
 * 0, -ENOMEM. */
CAROM_EXTERN int carom_set_forkserver_preload(const char *const *names);

/* ------------------------------------------------------------- Process ----*/
typedef struct carom_process carom_process_t;

typedef struct carom_process_opts {
  size_t size;             /* sizeof(carom_process_opts_t) */
  carom_process_fn target; /* what to run; NULL with entry NULL: exit 0 */
  const char *entry;       /* or: the CAROM_ENTRY name of the target */
  const void *arg;         /* argument bytes, copied at create */
  size_t arg_len;
  const char *name;        /* NULL: "Process-<identity>", e.g. "Process-1:2" */
  bool daemon;
  carom_context_t *ctx;    /* NULL: the default context, resolved at start */
  /* Environment changes applied in the child before the target runs
   * (deadpool's propagate_environ): NULL-terminated strings, "KEY=VALUE" sets,
   * "KEY" unsets. Copied at create. */
  const char *const *env;
  /* Ignore SIGINT in the child (pool workers leave ^C to their parent). Every
   * other signal disposition is reset to default and the mask is emptied. */
  bool ignore_sigint;
} carom_process_opts_t;

/* Create a Process (not started). Pair with carom_process_free().
 * 0; -EINVAL (bad opts, or both target and entry set); -ENOENT (entry not
 * registered); -ENOMEM. */
CAROM_EXTERN int carom_process_create(const carom_process_opts_t *opts, carom_process_t **out);
/* Start it with the start method of its context. Blocks while the child is
 * created (spawn: until exec succeeded or failed). 0; -EINVAL already started
 * or closed; CAROM_EFORKED created by another process; -EPERM the caller is a
 * daemonic process; a negative errno from fork/exec/socket or the forkserver
 * (-EPIPE: the forkserver died; the next start starts a new one). */
CAROM_EXTERN int carom_process_start(carom_process_t *p);
/* Wait until the process ended, or the deadline. 0 ended (exitcode known);
 * -ETIMEDOUT; -EINVAL not started or closed; CAROM_EFORKED. Reaps the child. */
CAROM_EXTERN int carom_process_join(carom_process_t *p, const struct timespec *deadline);
/* True between a successful start and the process's end (reaps if ended). */
CAROM_EXTERN bool carom_process_is_alive(carom_process_t *p);
/* The exit code: 0 and *code = status or -signal once ended; CAROM_ENOTREADY
 * while running or not started; -EINVAL closed. 255 is reported when the
 * status was lost (a forkserver that died, a child reaped by someone else). */
CAROM_EXTERN int carom_process_exitcode(carom_process_t *p, int *code);
/* pid once started, else 0. async-signal-safe. */
CAROM_EXTERN pid_t carom_process_pid(const carom_process_t *p);
/* Send SIGTERM / SIGKILL unless it already ended (pidfd_send_signal where the
 * kernel has it, so a recycled pid is never hit). 0; -EINVAL not started. */
CAROM_EXTERN int carom_process_terminate(carom_process_t *p);
CAROM_EXTERN int carom_process_kill(carom_process_t *p);
/* The sentinel fd (readable once the process ended), or -EINVAL before start
 * or after close. Owned by the Process: do not close it. */
CAROM_EXTERN int carom_process_sentinel(const carom_process_t *p);
/* Release the fds of an ended (or never started) process: Python's close().
 * Afterwards only free is useful; other calls answer -EINVAL.
 * 0; -EBUSY still running (or being started). */
CAROM_EXTERN int carom_process_close(carom_process_t *p);
/* Free the handle. A started process that has not been reaped stays in the
 * parent's children list (like Python's _children) and is reaped by
 * carom_active_children() or joined at exit; it is not killed. NULL is fine. */
CAROM_EXTERN void carom_process_free(carom_process_t *p);
CAROM_EXTERN const char *carom_process_name(const carom_process_t *p);
/* "1:2" for the second child of the first child of the main process. */
CAROM_EXTERN const char *carom_process_identity(const carom_process_t *p);
CAROM_EXTERN bool carom_process_daemon(const carom_process_t *p);

/* Live children of the caller, after reaping the finished ones (Python's
 * active_children()). Fills out[0..cap) with handles the caller has not freed
 * (borrowed: valid until freed) and returns how many live children with handles
 * exist; children whose handles were freed are reaped but not counted. */
CAROM_EXTERN int carom_active_children(carom_process_t **out, int cap);

/* ---------------------------------------------------- current process ----*/
/* "MainProcess" in the main process, the Process name in a child. */
CAROM_EXTERN const char *carom_current_process_name(void);
/* "" in the main process, "1", "1:2", ... in children. */
CAROM_EXTERN const char *carom_current_process_identity(void);
CAROM_EXTERN bool carom_current_process_daemon(void);
/* The parent carom process's pid, or 0 in the main process (Python's
 * parent_process() is None there). */
CAROM_EXTERN pid_t carom_parent_process_pid(void);
/* The parent's name, or NULL in the main process. */
CAROM_EXTERN const char *carom_parent_process_name(void);

/* ------------------------------------------------------------ cpu_count ----
 * CPUs this process may use: the affinity mask (sched_getaffinity), else the
 * online CPUs, capped by the cgroup v2 CPU quota (cpu.max of the process's
 * cgroup and its ancestors, rounded up). Always >= 1. */
CAROM_EXTERN int carom_cpu_count(void);

#ifdef __cplusplus
}
#endif
#endif /* CAROM_PROCESS_H */
