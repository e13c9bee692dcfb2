// tests/sync/sync_testutil.h — helpers shared by the sync/ tests
// (wait_until_sleeping lives in tests/support/testutil.h).
#pragma once
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "carom/common.h"
#include "testutil.h"

namespace carom_test {

inline double secs_since(uint64_t t0) { return (double)(carom_now_ns() - t0) / 1e9; }

}  // namespace carom_test
