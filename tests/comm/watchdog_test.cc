// The watchdog in one process: a stuck operation ends the process with the named message; a
// completed one never fires; a zero timeout disables it.
#include "comm/watchdog.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace grove::comm {
namespace {

using namespace std::chrono_literals;

OpRecord all_reduce_on_tp() {
  auto g = std::make_shared<GroupInfo>();
  g->name = "tp";
  g->rank = 1;
  g->world_ranks = {2, 3};
  OpRecord op;
  op.kind = OpKind::kAllReduce;
  op.count = 1024;
  op.dtype = DType::kF32;
  op.op = ReduceOp::kSum;
  op.group = g;
  return op;
}

TEST(Watchdog, MessageNamesOperationGroupAndRank) {
  EXPECT_EQ(Watchdog::message(all_reduce_on_tp(), 2000ms),
            "grove comm watchdog: all_reduce(sum, 1024 x f32) on group 'tp' (rank 1 of 2, world "
            "rank 3; members 2,3) did not complete within 2000 ms; aborting the job (a rank "
            "skipped or reordered this collective, or is stuck before it)");
}

TEST(Watchdog, DescribesEveryKind) {
  OpRecord op = all_reduce_on_tp();
  op.kind = OpKind::kBroadcast;
  op.peer = 0;
  EXPECT_EQ(op.describe().substr(0, 24), "broadcast(root 0, 1024 x");
  op.kind = OpKind::kRecv;
  op.peer = 1;
  EXPECT_EQ(op.describe().substr(0, 20), "recv(from 1, 1024 x ");
  op.kind = OpKind::kBarrier;
  EXPECT_EQ(op.describe().substr(0, 20), "barrier() on group '");
  op.kind = OpKind::kAllToAllV;
  op.dtype = DType::kBF16;
  EXPECT_EQ(op.describe().substr(0, 26), "all_to_all_v(1024 x bf16) ");
}

TEST(Watchdog, LongMemberListsAreAbbreviated) {
  GroupInfo g;
  g.name = "dp";
  g.rank = 0;
  for (int i = 0; i < 32; ++i) g.world_ranks.push_back(i * 8);
  EXPECT_EQ(g.describe(),
            "group 'dp' (rank 0 of 32, world rank 0; members 0,8,16,24,32,40,48,56,...,224,232,"
            "240,248)");
}

TEST(Watchdog, CompletedOperationsNeverFire) {
  bool fired = false;
  auto dog = Watchdog::create(100ms, [&](const std::string&) { fired = true; });
  for (int i = 0; i < 100; ++i) {
    Watchdog::Guard g = dog->arm(all_reduce_on_tp());
    EXPECT_EQ(dog->armed(), 1u);
  }
  EXPECT_EQ(dog->armed(), 0u);
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(fired);
}

TEST(Watchdog, MovedGuardDisarmsOnce) {
  auto dog = Watchdog::create(10s, nullptr);
  Watchdog::Guard a = dog->arm(all_reduce_on_tp());
  Watchdog::Guard b = dog->arm(all_reduce_on_tp());
  EXPECT_EQ(dog->armed(), 2u);
  a = std::move(b);  // releases a's operation, takes over b's
  EXPECT_EQ(dog->armed(), 1u);
  a.release();
  a.release();
  EXPECT_EQ(dog->armed(), 0u);
}

TEST(Watchdog, ZeroTimeoutDisables) {
  auto dog = Watchdog::create(0ms, nullptr);
  EXPECT_FALSE(dog->enabled());
  Watchdog::Guard g = dog->arm(all_reduce_on_tp());
  EXPECT_EQ(dog->armed(), 0u);
}

TEST(WatchdogDeathTest, StuckOperationEndsTheProcessWithTheMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        auto dog = Watchdog::create(200ms, nullptr);
        Watchdog::Guard done = dog->arm(all_reduce_on_tp());
        done.release();
        Watchdog::Guard stuck = dog->arm(all_reduce_on_tp());
        std::this_thread::sleep_for(20s);  // far beyond the timeout
      },
      ::testing::ExitedWithCode(kWatchdogExitCode),
      "grove comm watchdog: all_reduce\\(sum, 1024 x f32\\) on group 'tp' \\(rank 1 of 2, world "
      "rank 3; members 2,3\\) did not complete within 200 ms");
}

TEST(WatchdogDeathTest, AbortFunctionReceivesTheMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        auto dog = Watchdog::create(100ms, [](const std::string& msg) {
          std::fprintf(stderr, "abort hook got: %s\n", msg.substr(0, 32).c_str());
          std::fflush(stderr);
          std::_Exit(42);
        });
        Watchdog::Guard stuck = dog->arm(all_reduce_on_tp());
        std::this_thread::sleep_for(20s);
      },
      ::testing::ExitedWithCode(42), "abort hook got: grove comm watchdog: all_reduce");
}

// Abort hooks (device communicators abort their backend there) run on a timeout, in order, before
// the abort function; a failing hook does not stop the others; a removed hook does not run (it
// would exit with 43).
TEST(WatchdogDeathTest, AbortHooksRunBeforeTheAbortFunction) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        auto dog = Watchdog::create(100ms, [](const std::string&) {
          std::fprintf(stderr, "abort function\n");
          std::fflush(stderr);
          std::_Exit(42);
        });
        const uint64_t removed = dog->add_abort_hook([] { std::_Exit(43); });
        dog->add_abort_hook([] { std::fprintf(stderr, "hook one\n"); });
        dog->add_abort_hook([] { throw std::runtime_error("hook two fails"); });
        dog->add_abort_hook([] { std::fprintf(stderr, "hook three\n"); });
        dog->remove_abort_hook(removed);
        Watchdog::Guard stuck = dog->arm(all_reduce_on_tp());
        std::this_thread::sleep_for(20s);
      },
      ::testing::ExitedWithCode(42),
      "did not complete within 100 ms(.|\n)*hook one(.|\n)*an abort hook failed: hook two "
      "fails(.|\n)*hook three(.|\n)*abort function");
}

}  // namespace
}  // namespace grove::comm
