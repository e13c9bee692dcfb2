/* ipc/ring_internal.h — what ipc/queue.c needs from ipc/ring.c beyond the
 * public API (never installed). */
#ifndef CAROM_IPC_RING_INTERNAL_H
#define CAROM_IPC_RING_INTERNAL_H

#include "base/internal.h"
#include "carom/ring.h"

/* carom_ring_put with a hook for JoinableQueue: when `count` is not NULL it
 * is incremented (relaxed) after the item is copied and before it is
 * published, so no consumer can take (and task_done) an item that is not yet
 * counted. */
int carom__ring_put_counted(carom_ring_t *r, const void *data, size_t len,
                            const struct timespec *deadline, bool try_only,
                            _Atomic uint32_t *count);

#endif
