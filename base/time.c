/* base/time.c — the timeout convention: relative seconds become an absolute
 * CLOCK_MONOTONIC deadline once, at the outer call. */
#include "base/internal.h"

#include <math.h>

uint64_t carom_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return carom__ts_ns(&ts);
}

struct timespec *carom_deadline(double seconds, struct timespec *out) {
  if (isinf(seconds) && seconds > 0) return NULL;
  uint64_t now = carom_now_ns();
  if (!(seconds > 0)) { /* <= 0 or NaN: already passed, try once */
    carom__ns_ts(now, out);
    return out;
  }
  double ns = seconds * 1e9;
  /* Anything beyond ~292 years is "forever" in practice; clamp, don't wrap. */
  if (ns > (double)(UINT64_MAX / 2)) ns = (double)(UINT64_MAX / 2);
  carom__ns_ts(now + (uint64_t)ns, out);
  return out;
}

double carom_deadline_remaining(const struct timespec *deadline) {
  if (!deadline) return INFINITY;
  return ((double)carom__ts_ns(deadline) - (double)carom_now_ns()) / 1e9;
}

bool carom__deadline_passed(const struct timespec *deadline) {
  return deadline && carom_now_ns() >= carom__ts_ns(deadline);
}

const struct timespec *carom__deadline_cap(const struct timespec *deadline, uint64_t ns,
                                           struct timespec *out) {
  uint64_t cap = carom_now_ns() + ns;
  if (deadline && carom__ts_ns(deadline) <= cap) return deadline;
  carom__ns_ts(cap, out);
  return out;
}

const struct timespec *carom__timeout_of(const struct timespec *deadline, struct timespec *rel) {
  if (!deadline) return NULL;
  uint64_t now = carom_now_ns(), d = carom__ts_ns(deadline);
  carom__ns_ts(d > now ? d - now : 0, rel);
  return rel;
}
