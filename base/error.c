/* base/error.c — names and messages for carom's return codes (one X-macro table,
 * CAROM_ERRNO_MAP in carom/common.h, generates both) and carom__die(). */
#include "base/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *carom_strerror(int code) {
  switch (code) {
#define CAROM__ERR_MSG(name, value, msg) \
  case (value):                          \
    return msg;
    CAROM_ERRNO_MAP(CAROM__ERR_MSG)
#undef CAROM__ERR_MSG
  case 0:
    return "success";
  default:
    break;
  }
  /* Other negated errno values: strerrordesc_np is thread-safe and static. */
  if (code < 0 && code > -4000) {
    const char *s = strerrordesc_np(-code);
    if (s) return s;
  }
  return "unknown error";
}

const char *carom_err_name(int code) {
  switch (code) {
#define CAROM__ERR_NAME(name, value, msg) \
  case (value):                           \
    return #name;
    CAROM_ERRNO_MAP(CAROM__ERR_NAME)
#undef CAROM__ERR_NAME
  case 0:
    return "OK";
  default:
    break;
  }
  if (code < 0 && code > -4000) {
    const char *s = strerrorname_np(-code);
    if (s) return s;
  }
  return "UNKNOWN";
}

void carom__die_at(const char *file, int line, const char *fmt, ...) {
  char buf[512];
  int n = snprintf(buf, sizeof buf, "carom: fatal at %s:%d: ", file, line);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof buf) n = (int)sizeof buf - 1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
  va_end(ap);
  carom_log(CAROM_LOG_ERROR, "%s", buf);
  /* Always reach stderr, whatever the log level: this is the last word. */
  fprintf(stderr, "%s\n", buf);
  abort();
}
