/* proc/spawn.c — the spawn start method's parent side: fork() + execve() of
 * /proc/self/exe, a boot message over an inherited socket, exec failure
 * reported through a CLOEXEC pipe (libuv's technique). Also used to start the
 * forkserver, which is a spawned program image too.
 *
 * Between fork() and execve() the child makes syscalls only (prctl, getppid,
 * sigaction, sigprocmask, fcntl, execve, write, _exit): the parent may run
 * threads, and only async-signal-safe calls are defined there. Everything the
 * child needs (argv, envp) is built before fork().
 *
 * The exec'd child learns it is a carom child from the environment variable
 * `var` = the socket's fd number; proc/boot.c's constructor takes over before
 * main() and reads the boot message. The parent writes the message after the
 * exec succeeded; a child that dies before reading it makes the send fail with
 * EPIPE, which is not an error of start(): join() reports how it died.
 */
#include "proc/internal.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static bool key_eq(const char *kv, const char *key, size_t klen) {
  return !strncmp(kv, key, klen) && (kv[klen] == '=' || kv[klen] == 0);
}

static size_t key_len(const char *kv) {
  const char *eq = strchr(kv, '=');
  return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* environ minus the keys that `changes` or `var` set or unset, plus the
 * changes' "K=V" and var=fd. Pointers into environ/changes; `own` is the one
 * string allocated here. */
static char **build_envp(char *const *changes, const char *var, int fd, char **own) {
  size_t n = 0, m = 0;
  while (environ && environ[n]) n++;
  while (changes && changes[m]) m++;
  char **envp = calloc(n + m + 2, sizeof *envp);
  size_t vl = strlen(var);
  char *mine = malloc(vl + 16);
  if (!envp || !mine) {
    free(envp);
    free(mine);
    return NULL;
  }
  snprintf(mine, vl + 16, "%s=%d", var, fd);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (key_eq(environ[i], var, vl)) continue;
    bool drop = false;
    for (size_t j = 0; j < m && !drop; j++) drop = key_eq(environ[i], changes[j], key_len(changes[j]));
    if (!drop) envp[k++] = environ[i];
  }
  for (size_t j = 0; j < m; j++)
    if (strchr(changes[j], '=')) envp[k++] = changes[j];
  envp[k++] = mine;
  envp[k] = NULL;
  *own = mine;
  return envp;
}

pid_t carom__spawn_exec(const char *var, const unsigned char *msg, size_t msg_len, char *const *env,
                        bool daemon, int *chan, int *pidfd, int *sentinel) {
  int sv[2], ep[2], dp[2] = {-1, -1};
  *pidfd = *sentinel = -1;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
  if (pipe2(ep, O_CLOEXEC) != 0) {
    int e = errno;
    close(sv[0]);
    close(sv[1]);
    return -e;
  }
  char *own = NULL;
  char **envp = build_envp(env, var, sv[1], &own);
  char *argv[] = {program_invocation_name, NULL};
  int rc = envp ? 0 : -ENOMEM;
  pid_t pid = -1;
  pthread_mutex_lock(&carom__fork_mu);
  if (rc == 0 && !carom__use_pidfd() && pipe2(dp, O_CLOEXEC) != 0) rc = -errno;
  pid_t parent = getpid();
  if (rc == 0) {
    pid = fork();
    if (pid == 0) {
      /* Child: syscalls only until execve. */
      carom__child_deathsig(daemon, parent);
      carom__signals_reset(false);
      int err = 0;
      if (fcntl(sv[1], F_SETFD, 0) != 0) err = errno;
      if (!err && dp[1] >= 0 && fcntl(dp[1], F_SETFD, 0) != 0) err = errno;
      if (!err) {
        execve("/proc/self/exe", argv, envp);
        err = errno;
      }
      (void)!write(ep[1], &err, sizeof err);
      _exit(127);
    }
    if (pid < 0) rc = -errno;
  }
  pthread_mutex_unlock(&carom__fork_mu);
  close(sv[1]);
  close(ep[1]);
  if (dp[1] >= 0) close(dp[1]);
  free(envp);
  free(own);
  if (rc == 0) {
    int err = 0;
    ssize_t n;
    do n = read(ep[0], &err, sizeof err);
    while (n < 0 && errno == EINTR);
    if (n > 0) { /* exec failed: the child wrote errno and exits 127 */
      while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
      }
      rc = err ? -err : -ECHILD;
    }
  }
  close(ep[0]);
  if (rc == 0) {
    if (dp[0] >= 0) {
      *sentinel = dp[0];
      dp[0] = -1;
    } else {
      int fd = carom__pidfd_open(pid);
      if (fd < 0) { /* cannot watch it: undo */
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        rc = fd;
      } else {
        *pidfd = *sentinel = fd;
      }
    }
  }
  if (rc == 0) {
    /* EPIPE here means the child died before reading: join() tells how. */
    (void)carom__send_all(sv[0], msg, msg_len);
  }
  if (dp[0] >= 0) close(dp[0]);
  if (rc == 0 && chan) {
    *chan = sv[0];
  } else {
    close(sv[0]);
  }
  return rc ? rc : pid;
}
