// Every layout of the CUDA-backend model against its single-rank model, with the ranks as threads
// of one process on one CUDA device (the test-only thread transport, comm/thread_communicator.h;
// each rank has its own stream), so that a machine with one GPU and no MPI checks the parallel
// engine on the hardware. The cases are tests/model/cuda_equivalence_cases.h's (the same ones the
// MPI driver, cuda_parallel_equivalence_test.cc, runs under mpirun), at 1, 2 and 4 ranks:
// tp {1,2,4} x SP x recompute, a dropless MoE block under tp + SP, cp {2,4} tree and ring (alone,
// with dp, with tp=2 + SP, with MoE), ep {2,4} plain (with full recompute, with tp=2 + SP), and
// capacity dropping and the LSH-compressed all-to-all at ep {1,2,4} against ep = 1. NCCL at one
// rank: cuda_nccl_equivalence_test.cc (its own binary, so that this one needs no libnccl).
//
// Not here (the MPI driver has them): the layouts over host groups (every collective staged
// through host memory: the thread transport's groups are device groups), and the comparison of
// the capacity / LSH layouts with the CPU model (it needs OpenBLAS, absent on a GPU machine).
//
// Built twice: against CUDA (label gpu; exit 77 without a device, tests/common/gpu_skip.h) and
// against the CUDA emulator (label emu). Tolerances: the cases'.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "comm/thread_communicator.h"
#include "core/status.h"
#include "tests/model/cuda_equivalence_cases.h"

namespace grove {
namespace {

using equivalence::CompressedLayout;
using equivalence::Layout;
using namespace std::chrono_literals;

class CudaThreadEquivalence : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device: the thread transport needs one";
  }
};

// The env of a thread rank: every grid is split from its world (device groups).
equivalence::Env ThreadEnv(comm::Communicator& w) {
  // Non-owning: the world outlives every grid of the case.
  std::shared_ptr<comm::Communicator> world(&w, [](comm::Communicator*) {});
  return equivalence::Env{&w, [world](bool) { return world; }};
}

// A failed ASSERT returns from the case on one rank only; the others would wait in its next
// collective. Throwing aborts the transport, so every rank ends (run_thread_ranks rethrows).
void EndRankOnFatalFailure(const std::string& what) {
  if (::testing::Test::HasFatalFailure()) throw Error("fatal failure in " + what);
}

// Runs `run(env, world size)` on 1, 2 and 4 thread ranks and prints each rank's worst error.
void OnThreadRanks(const char* what, const std::function<void(const equivalence::Env&, int)>& run) {
  for (int n : {1, 2, 4}) {
    comm::ThreadTransportOptions options;
    options.comm.timeout = 120s;  // well inside ctest's limit, far above one collective
    try {
      comm::run_thread_ranks(
          n,
          [&](comm::Communicator& w) {
            SCOPED_TRACE("thread rank " + std::to_string(w.rank()) + " of " + std::to_string(n));
            run(ThreadEnv(w), n);
            std::printf("[thread rank %d/%d] %s: worst gradient error %.3g\n", w.rank(), n, what,
                        equivalence::take_worst());
          },
          options);
    } catch (const std::exception& e) {
      ADD_FAILURE() << n << " thread ranks: " << e.what();
      return;
    }
  }
}

void RunDeviceLayouts(const equivalence::Env& env, const std::vector<Layout>& layouts) {
  for (Layout l : layouts) {
    if (!l.device_groups) continue;  // host groups: the MPI driver's
    equivalence::run_layout(env, l);
    EndRankOnFatalFailure(l.str());
  }
}

// tp {1,2,4} x SP x recompute none/selective/full, and a MoE model at tp=2 + SP (the MPI driver
// runs these lists over host groups; here they run over the thread transport's device groups).
TEST_F(CudaThreadEquivalence, TensorSequenceLayoutsEqualSingleRank) {
  OnThreadRanks("tensor + sequence parallel layouts", [](const equivalence::Env& env, int n) {
    std::vector<Layout> layouts = equivalence::tensor_sequence_layouts(n);
    for (const Layout& l : equivalence::moe_tensor_layouts(n)) layouts.push_back(l);
    for (Layout& l : layouts) l.device_groups = true;
    RunDeviceLayouts(env, layouts);
  });
}

TEST_F(CudaThreadEquivalence, ContextParallelLayoutsEqualSingleRank) {
  OnThreadRanks("context parallel layouts", [](const equivalence::Env& env, int n) {
    RunDeviceLayouts(env, equivalence::context_parallel_layouts(n, /*device=*/true));
  });
}

TEST_F(CudaThreadEquivalence, ExpertParallelLayoutsEqualSingleRank) {
  OnThreadRanks("expert parallel layouts", [](const equivalence::Env& env, int n) {
    RunDeviceLayouts(env, equivalence::expert_parallel_layouts(n, /*device=*/true));
  });
}

TEST_F(CudaThreadEquivalence, MlaLayoutsEqualSingleRank) {
  OnThreadRanks("MLA layouts", [](const equivalence::Env& env, int n) {
    std::vector<Layout> layouts = equivalence::mla_layouts(n, /*device=*/true);
    for (Layout& l : layouts) l.device_groups = true;
    RunDeviceLayouts(env, layouts);
  });
}

TEST_F(CudaThreadEquivalence, CapacityAndLshLayoutsEqualEpOne) {
  OnThreadRanks("capacity and LSH layouts", [](const equivalence::Env& env, int n) {
    for (CompressedLayout l : equivalence::compressed_layouts(n, /*device=*/true)) {
      l.device_groups = true;
      equivalence::run_compressed_layout(env, l);
      EndRankOnFatalFailure(l.str());
    }
  });
}

}  // namespace
}  // namespace grove
