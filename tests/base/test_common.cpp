// tests/base/test_common.cpp — error codes, deadlines, logging.
#include <gtest/gtest.h>
#include <cmath>
#include <string>
#include <vector>

#include "carom/common.h"

TEST(Errors, EveryCodeHasANameAndMessage) {
#define CHECK_CODE(name, value, msg)                          \
  EXPECT_STREQ(#name, carom_err_name(value));                 \
  EXPECT_STREQ(msg, carom_strerror(value));                   \
  EXPECT_LT((value), 0);
  CAROM_ERRNO_MAP(CHECK_CODE)
#undef CHECK_CODE
}

TEST(Errors, ErrnoAliasesAreNegatedErrno) {
  EXPECT_EQ(-ETIMEDOUT, CAROM_ETIMEDOUT);
  EXPECT_EQ(-EOWNERDEAD, CAROM_EOWNERDEAD);
  EXPECT_LT(CAROM_EWORKERLOST, -4000);
}

TEST(Errors, OtherErrnoValuesAndUnknownCodes) {
  EXPECT_STREQ("ECONNREFUSED", carom_err_name(-ECONNREFUSED));
  EXPECT_STREQ("UNKNOWN", carom_err_name(-4999));
  EXPECT_STREQ("unknown error", carom_strerror(-4999));
  EXPECT_STREQ("OK", carom_err_name(0));
}

TEST(Deadline, RelativeSecondsBecomeAbsoluteMonotonic) {
  struct timespec ts;
  uint64_t before = carom_now_ns();
  ASSERT_EQ(&ts, carom_deadline(1.5, &ts));
  uint64_t d = (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
  EXPECT_GE(d, before + 1500000000ull);
  EXPECT_LT(d, carom_now_ns() + 1500000000ull + 1);
  double rem = carom_deadline_remaining(&ts);
  EXPECT_GT(rem, 1.0);
  EXPECT_LE(rem, 1.5);
}

TEST(Deadline, InfinityMeansNullAndNonPositiveMeansPast) {
  struct timespec ts;
  EXPECT_EQ(nullptr, carom_deadline(INFINITY, &ts));
  EXPECT_TRUE(std::isinf(carom_deadline_remaining(nullptr)));
  ASSERT_EQ(&ts, carom_deadline(0, &ts));
  EXPECT_LE(carom_deadline_remaining(&ts), 0.0);
  ASSERT_EQ(&ts, carom_deadline(-3, &ts));
  EXPECT_LE(carom_deadline_remaining(&ts), 0.0);
  ASSERT_EQ(&ts, carom_deadline(NAN, &ts));
  EXPECT_LE(carom_deadline_remaining(&ts), 0.0);
}

static std::vector<std::pair<int, std::string>> g_logged;
static void sink(carom_log_level_t level, const char *msg, void *arg) {
  g_logged.emplace_back((int)level, msg);
  ++*(int *)arg;
}

TEST(Log, HandlerReceivesMessagesAtOrAboveLevel) {
  int calls = 0;
  g_logged.clear();
  carom_log_set_handler(sink, &calls);
  carom_log_set_level(CAROM_LOG_WARNING);
  carom_log(CAROM_LOG_DEBUG, "dropped %d", 1);
  carom_log(CAROM_LOG_WARNING, "kept %d", 2);
  carom_log(CAROM_LOG_ERROR, "kept %s", "three");
  EXPECT_EQ(2, calls);
  ASSERT_EQ(2u, g_logged.size());
  EXPECT_EQ("kept 2", g_logged[0].second);
  EXPECT_EQ(CAROM_LOG_ERROR, g_logged[1].first);
  EXPECT_EQ(CAROM_LOG_WARNING, carom_log_get_level());
  carom_log_set_handler(nullptr, nullptr);
  carom_log_set_level(CAROM_LOG_OFF);
}
