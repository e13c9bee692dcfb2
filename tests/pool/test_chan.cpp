// tests/pool/test_chan.cpp — the pool's channel ring (pool/chan.c): its soft
// limit and message integrity, driven through tests/pool/test_chan_c.c.
#include <gtest/gtest.h>

extern "C" int carom_test_chan_soft_limit(char *err, size_t errlen);
extern "C" int carom_test_chan_threads(char *err, size_t errlen);

TEST(Chan, SmallMessagesKeepToTheSoftLimitUntilALargeFrame) {
  char err[256] = "";
  EXPECT_EQ(0, carom_test_chan_soft_limit(err, sizeof err)) << err;
}

TEST(Chan, TwoThreadsEveryMessageWholeAndInOrder) {
  char err[256] = "";
  EXPECT_EQ(0, carom_test_chan_threads(err, sizeof err)) << err;
}
