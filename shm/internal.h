/* shm/internal.h — private parts of shm/ (never installed): the resource
 * tracker's registration calls (usable by higher layers for any named object
 * that is a file path, e.g. a Unix socket path) and the heap's internals that
 * tests reach for. */
#ifndef CAROM_SHM_INTERNAL_H
#define CAROM_SHM_INTERNAL_H

#include "base/internal.h"
#include "carom/shm.h"

/* Directory holding named segments (what glibc's shm_open uses). */
#define CAROM__SHM_DIR "/dev/shm"
/* Longest path the tracker accepts (one message must fit PIPE_BUF-sized
 * datagrams comfortably). */
#define CAROM__TRACK_PATH_MAX 1024

/* Register `path` with the family's tracker, starting the tracker on first
 * use. At family end the tracker unlinks path if it still names inode `ino`
 * (0: whatever it names). 0, or a negated errno when no tracker could be
 * started (the caller decides whether to go on untracked). Thread-safe. */
int carom__tracker_register(const char *path, uint64_t ino);
/* Forget path (the owner unlinked it itself). 0, or a negated errno. */
int carom__tracker_unregister(const char *path);
/* pid of this family's tracker, or 0 if none was started (tests). */
pid_t carom__tracker_pid(void);

/* The heap's Lock (tests simulate a death inside alloc/free with it). */
carom_lock_t *carom__heap_lock(carom_heap_t *h);

#endif
