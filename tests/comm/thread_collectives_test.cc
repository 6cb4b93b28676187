// The thread transport (comm/thread_communicator.h): the shared collective cases
// (collectives_cases.h) at 1, 2, 3 and 4 thread ranks on one CUDA device, and what is particular
// to it: reductions in rank order (bit-identical on every rank), calls that do not match, a rank
// that fails, the watchdog ending the process with a named message when a rank never joins, and
// split_like (comm/communicator.h) mirroring groups. Built twice: against CUDA (label gpu; skips
// without a device) and against the CUDA emulator (label emu; runs on every CUDA build).
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "comm/thread_communicator.h"
#include "tests/comm/collectives_cases.h"

namespace grove::comm {
namespace {

using namespace std::chrono_literals;

class ThreadComm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device: the thread transport needs one";
  }
};
using ThreadCommDeathTest = ThreadComm;

// Runs `body` on n thread ranks with a watchdog well inside ctest's limit; failures inside name
// the thread rank.
void run_ranks(int n, const std::function<void(Communicator&)>& body) {
  ThreadTransportOptions options;
  options.comm.timeout = 60s;
  run_thread_ranks(
      n,
      [&](Communicator& w) {
        SCOPED_TRACE("thread rank " + std::to_string(w.rank()) + " of " + std::to_string(n));
        body(w);
      },
      options);
}

TEST_F(ThreadComm, WorldIsThreadTransportOnDeviceMemory) {
  run_ranks(2, [](Communicator& w) {
    EXPECT_EQ(w.device(), Device::kCUDA);
    EXPECT_STREQ(w.backend_name(), "thread");
    EXPECT_EQ(w.name(), "world");
  });
}

#define GROVE_COMM_THREAD_CASE(name)              \
  TEST_F(ThreadComm, name) {                      \
    for (int n : {1, 2, 3, 4}) {                  \
      SCOPED_TRACE(std::to_string(n) + " ranks"); \
      run_ranks(n, cases::name);                  \
    }                                             \
  }
GROVE_COMM_CASES(GROVE_COMM_THREAD_CASE)
#undef GROVE_COMM_THREAD_CASE

Tensor device_f32(const std::vector<float>& v) {
  Tensor h = Tensor::empty({static_cast<int64_t>(v.size())});
  std::memcpy(h.raw(), v.data(), v.size() * sizeof(float));
  return h.to(Device::kCUDA);
}

float first_f32(const Tensor& t) {
  return t.to(Device::kCPU).data<float>()[0];
}

// fp32 addition is not associative: 1e8 + 1 rounds back to 1e8. With rank 0: 1e8, rank 1: -1e8,
// rank 2: 1 the rank-order sum ((1e8 - 1e8) + 1) is 1; the reverse order ((1 - 1e8) + 1e8) and
// any order that adds 1 to 1e8 first give 0. Every rank must get exactly the rank-order result,
// in all_reduce and reduce_scatter alike.
TEST_F(ThreadComm, ReductionsRunInRankOrderOnEveryRank) {
  const float x[3] = {1e8f, -1e8f, 1.0f};
  volatile float a = x[0], b = x[1], c = x[2];
  const float in_order = (a + b) + c;
  ASSERT_EQ(in_order, 1.0f);
  ASSERT_NE((c + b) + a, in_order);  // the data does tell the orders apart
  ASSERT_NE((a + c) + b, in_order);
  for (int round = 0; round < 3; ++round) {
    run_ranks(3, [&](Communicator& w) {
      Tensor t = device_f32({x[w.rank()], 2.0f * x[w.rank()]});
      w.all_reduce(t, ReduceOp::kSum);
      std::vector<float> got(2);
      std::memcpy(got.data(), t.to(Device::kCPU).raw(), 8);
      EXPECT_EQ(got[0], in_order);
      EXPECT_EQ(got[1], 2.0f * in_order);
      std::vector<float> blocks(3, x[w.rank()]);
      Tensor in = device_f32(blocks), out = device_f32({-1.0f});
      w.reduce_scatter(in, out, ReduceOp::kSum);
      EXPECT_EQ(first_f32(out), in_order);
    });
  }
}

// Two groups reducing at the same time: their reductions run concurrently, launched from two
// host threads (under the emulator this is what its runtime's locking is for).
TEST_F(ThreadComm, GroupsReduceConcurrently) {
  run_ranks(4, [](Communicator& w) {
    auto pair = w.split(w.rank() / 2, w.rank(), "pair");
    const int n = 4096, base = w.rank() / 2 * 2;
    for (int it = 0; it < 8; ++it) {
      std::vector<float> v(n);
      for (int i = 0; i < n; ++i) v[i] = float((w.rank() + 1) * (i % 97) + it);
      Tensor t = device_f32(v);
      pair->all_reduce(t, ReduceOp::kSum);
      Tensor h = t.to(Device::kCPU);
      const float* got = h.data<float>();
      int wrong = 0;
      for (int i = 0; i < n; ++i)
        wrong += got[i] != float((base + 1 + base + 2) * (i % 97) + 2 * it);
      ASSERT_EQ(wrong, 0) << "iteration " << it;
    }
  });
}

TEST_F(ThreadComm, CallsThatDoNotMatchFailOnEveryRank) {
  std::string error;
  try {
    run_ranks(2, [](Communicator& w) {
      Tensor t = Tensor::zeros({4}, DType::kF32, Device::kCUDA);
      Tensor out = Tensor::zeros({8}, DType::kF32, Device::kCUDA);
      if (w.rank() == 0) w.all_reduce(t, ReduceOp::kSum);
      if (w.rank() == 1) w.all_gather(t, out);
    });
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("on group 'world'"), std::string::npos) << error;
  EXPECT_NE(error.find("the ranks' calls do not match: rank 0 called all_reduce(sum, 4 x f32), "
                       "rank 1 called all_gather(4 x f32)"),
            std::string::npos)
      << error;
}

TEST_F(ThreadComm, AllToAllVCountsThatDisagreeAreAnError) {
  std::string error;
  try {
    run_ranks(2, [](Communicator& w) {
      Tensor t = Tensor::zeros({4}, DType::kI32, Device::kCUDA);
      // Consistent but for rank 0 expecting 3 elements from rank 1, which sends 1.
      std::vector<int64_t> sc = {1, 1}, rc = {1, w.rank() == 0 ? 3 : 1};
      w.all_to_all_v(t, sc, t, rc);
    });
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("rank 1 sends 1 elements to rank 0, which expects 3 from it"),
            std::string::npos)
      << error;
}

// A rank that fails must not leave the others waiting: they are woken with an error, every
// thread is joined and the failing rank's own exception comes out.
TEST_F(ThreadComm, AFailingRankAbortsTheOthers) {
  std::string error;
  const auto start = std::chrono::steady_clock::now();
  try {
    run_ranks(3, [](Communicator& w) {
      if (w.rank() == 1) throw Error("rank 1 gave up");
      Tensor t = Tensor::zeros({4}, DType::kF32, Device::kCUDA);
      w.all_reduce(t, ReduceOp::kSum);  // would wait for rank 1 forever
    });
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_EQ(error, "rank 1 gave up");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
  // The others saw the abort as an error naming their operation.
  std::vector<std::string> seen(2);
  try {
    run_ranks(2, [&](Communicator& w) {
      if (w.rank() == 0) {
        std::this_thread::sleep_for(50ms);
        throw Error("rank 0 failed");
      }
      try {
        w.barrier();
      } catch (const Error& e) {
        seen[1] = e.what();
      }
    });
  } catch (const Error&) {
  }
  EXPECT_NE(seen[1].find("barrier on group 'world' (rank 1 of 2"), std::string::npos) << seen[1];
  EXPECT_NE(seen[1].find("the thread transport was aborted: thread rank 0 failed"),
            std::string::npos)
      << seen[1];
}

// split_like: the groups of one world mirrored on another world of the same ranks (as the NCCL
// world mirrors the MPI grid's groups): same names, members and order, and they communicate.
TEST_F(ThreadComm, SplitLikeMirrorsGroups) {
  run_ranks(4, [](Communicator& w) {
    const int r = w.rank();
    // Two "host" groups: pairs {0,1} {2,3}, and the even / odd ranks in descending order.
    auto pairs = w.split(r / 2, r, "tp");
    auto parity = w.split(r % 2, -r, "dp");
    std::vector<Communicator*> host = {pairs.get(), parity.get()};
    std::vector<std::unique_ptr<Communicator>> mirrored = split_like(w, host);
    ASSERT_EQ(mirrored.size(), 2u);
    for (size_t g = 0; g < host.size(); ++g) {
      ASSERT_TRUE(mirrored[g]);
      EXPECT_EQ(mirrored[g]->name(), host[g]->name());
      EXPECT_EQ(mirrored[g]->info().world_ranks, host[g]->info().world_ranks);
      EXPECT_EQ(mirrored[g]->rank(), host[g]->rank());
      Tensor mine = device_f32({float(r)});
      Tensor all = Tensor::zeros({mirrored[g]->size()}, DType::kF32, Device::kCUDA);
      mirrored[g]->all_gather(mine, all);
      Tensor h = all.to(Device::kCPU);
      for (int q = 0; q < mirrored[g]->size(); ++q)
        EXPECT_EQ(h.data<float>()[q], float(host[g]->info().world_ranks[q]));
    }
  });
}

TEST_F(ThreadComm, SplitLikeRefusesGroupsOfAnotherWorld) {
  run_ranks(2, [](Communicator& w) {
    GroupInfo stranger;
    stranger.name = "tp";
    stranger.world_ranks = {w.rank(), 7};
    stranger.rank = 0;
    std::string error;
    try {
      split_like(w, std::vector<const GroupInfo*>{&stranger});
    } catch (const Error& e) {
      error = e.what();
    }
    EXPECT_NE(error.find("group 'tp'"), std::string::npos) << error;
    EXPECT_NE(error.find("world rank 7 is not a member of group 'world'"), std::string::npos)
        << error;
  });
}

// The watchdog: a rank that never joins a collective ends the process with the watchdog's message
// naming the collective, the group and the rank, after aborting the transport; not a hang.
TEST_F(ThreadCommDeathTest, RankThatNeverJoinsEndsTheProcessWithANamedError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ThreadTransportOptions options;
        options.comm.timeout = 400ms;
        run_thread_ranks(
            2,
            [](Communicator& w) {
              if (w.rank() == 1) {
                std::this_thread::sleep_for(30s);  // stuck elsewhere
                return;
              }
              Tensor t = Tensor::zeros({4}, DType::kF32, Device::kCUDA);
              w.all_reduce(t, ReduceOp::kSum);
            },
            options);
      },
      ::testing::ExitedWithCode(kWatchdogExitCode),
      "grove comm watchdog: all_reduce\\(sum, 4 x f32\\) on group 'world' \\(rank 0 of 2, world "
      "rank 0; members 0,1\\) did not complete within 400 ms(.|\n)*grove comm: aborting the "
      "thread transport of group 'world' \\(rank 0 of 2");
}

TEST_F(ThreadCommDeathTest, RankThatNeverJoinsASubGroupCollectiveIsNamed) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ThreadTransportOptions options;
        options.comm.timeout = 400ms;
        run_thread_ranks(
            4,
            [](Communicator& w) {
              auto pair = w.split(w.rank() / 2, w.rank(), "pair");
              if (w.rank() == 3) {
                std::this_thread::sleep_for(30s);
                return;
              }
              Tensor in = Tensor::zeros({2}, DType::kI32, Device::kCUDA);
              Tensor out = Tensor::zeros({4}, DType::kI32, Device::kCUDA);
              pair->all_gather(in, out);
              if (w.rank() != 2) std::this_thread::sleep_for(30s);
            },
            options);
      },
      ::testing::ExitedWithCode(kWatchdogExitCode),
      "grove comm watchdog: all_gather\\(2 x i32\\) on group 'pair' \\(rank 0 of 2, world rank 2; "
      "members 2,3\\) did not complete within 400 ms");
}

}  // namespace
}  // namespace grove::comm
