/* base/log.c — leveled logging with a replaceable sink. The default sink writes
 * one line per message to stderr, prefixed with the level and pid; it is off
 * unless CAROM_LOG names a level (billiard's log_to_stderr). */
#include "base/internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static pthread_once_t log_once = PTHREAD_ONCE_INIT;
static _Atomic int log_level = CAROM_LOG_OFF;
/* Sink and argument are swapped together under a lock so a message never pairs
 * one sink with another's argument. */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static carom_log_fn log_fn;
static void *log_arg;

static const char *level_name(carom_log_level_t l) {
  if (l >= CAROM_LOG_ERROR) return "ERROR";
  if (l >= CAROM_LOG_WARNING) return "WARNING";
  if (l >= CAROM_LOG_INFO) return "INFO";
  return "DEBUG";
}

static void stderr_sink(carom_log_level_t level, const char *msg, void *arg) {
  (void)arg;
  /* One write(2) per line so lines from several processes never interleave. */
  char line[1200];
  int n = snprintf(line, sizeof line, "[carom %s/%d] %s\n", level_name(level),
                   (int)getpid(), msg);
  if (n < 0) return;
  if ((size_t)n >= sizeof line) n = (int)sizeof line - 1, line[n - 1] = '\n';
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w;
}

static void log_init(void) {
  const char *e = getenv("CAROM_LOG");
  if (!e || !*e) return;
  static const struct { const char *name; int level; } names[] = {
      {"debug", CAROM_LOG_DEBUG}, {"info", CAROM_LOG_INFO},
      {"warning", CAROM_LOG_WARNING}, {"warn", CAROM_LOG_WARNING},
      {"error", CAROM_LOG_ERROR}, {"off", CAROM_LOG_OFF}, {"1", CAROM_LOG_INFO}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcasecmp(e, names[i].name)) {
      atomic_store(&log_level, names[i].level);
      return;
    }
  atomic_store(&log_level, CAROM_LOG_WARNING);
}

void carom_log_set_handler(carom_log_fn fn, void *arg) {
  pthread_once(&log_once, log_init);
  pthread_mutex_lock(&log_mu);
  log_fn = fn;
  log_arg = arg;
  pthread_mutex_unlock(&log_mu);
}

void carom_log_set_level(carom_log_level_t level) {
  pthread_once(&log_once, log_init);
  atomic_store(&log_level, (int)level);
}

carom_log_level_t carom_log_get_level(void) {
  pthread_once(&log_once, log_init);
  return (carom_log_level_t)atomic_load(&log_level);
}

void carom_log_to_stderr(carom_log_level_t level) {
  carom_log_set_handler(NULL, NULL);
  carom_log_set_level(level);
}

void carom_log(carom_log_level_t level, const char *fmt, ...) {
  pthread_once(&log_once, log_init);
  if ((int)level < atomic_load_explicit(&log_level, memory_order_relaxed)) return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&log_mu);
  carom_log_fn fn = log_fn;
  void *arg = log_arg;
  pthread_mutex_unlock(&log_mu);
  (fn ? fn : stderr_sink)(level, msg, arg);
}
