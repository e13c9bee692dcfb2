/* carom/carom.h — the umbrella header: every public carom module. */
#ifndef CAROM_CAROM_H
#define CAROM_CAROM_H

#include "carom/common.h"
#include "carom/sync.h"
#include "carom/ring.h"
#include "carom/queue.h"
#include "carom/shm.h"
#include "carom/pool.h"
#include "carom/connection.h"
#include "carom/process.h"

#endif
