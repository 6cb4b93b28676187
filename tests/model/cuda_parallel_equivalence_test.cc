// Tensor, sequence and context parallelism on the CUDA backend (TransformerT<CudaBackend<float>>)
// against the single-rank model of the same backend (docs/tensor_parallel.md, docs/attention.md),
// under mpirun: every rank builds the tp=1, cp=1, dp=1 model on the global batch and the sharded
// model of its layout from the same seed. Loss and every gradient shard must equal the matching
// slice of the single-rank model, fp32, for every (tp, dp) with tp·dp = world and tp ∈ {1, 2, 4},
// SP off/on, recompute none/selective/full; a dropless MoE block at tp=2 + SP; cp ∈ {2, 4}
// with tree and ring attention (zigzag shards), alone, with dp and with tp=2 + SP; and expert
// parallelism ep ∈ {2, 4} (the plain all-to-all dispatch); capacity dropping and the
// LSH-compressed all-to-all at ep ∈ {1, 2, 4} against ep = 1 and against the CPU model.
//
// The cases (layouts, model, batch, tolerances) are tests/model/cuda_equivalence_cases.h's, shared
// with the thread-transport driver (cuda_thread_equivalence_test.cc); this file runs them with the
// ranks as MPI processes and adds the CPU model's check of the capacity and LSH layouts.
// Built against the CUDA emulator (tests/cuda_emu, ctest label emu): the ranks' groups are MPI
// communicators on host memory (every collective staged through host memory,
// parallel/backend_collectives.h) or MPI on the emulator's device memory (the direct path).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "model/transformer.h"
#include "parallel/grid.h"
#include "parallel/lsh_dispatcher.h"
#include "tests/comm/mpi_test_env.h"
#include "tests/common/tensor_compare.h"
#include "tests/model/cuda_equivalence_cases.h"

namespace grove {
namespace {

using equivalence::CompressedLayout;
using equivalence::Layout;

void PrintWorst(const char* what) {
  std::printf("[rank %d/%d] %s: worst gradient error %.3g\n", test::world().rank(),
              test::world().size(), what, equivalence::take_worst());
}

// The world the grid is split from: the host MPI world (every TP collective staged through host
// memory), or MPI on the emulator's device memory (comm::mpi_device_communicator: the
// collectives run on the device buffers themselves, parallel/backend_collectives.h's direct path).
std::shared_ptr<comm::Communicator> GridWorld(bool device_groups) {
  if (!device_groups) return std::shared_ptr<comm::Communicator>(test::mpi_session().world());
  return std::shared_ptr<comm::Communicator>(comm::mpi_device_communicator(test::world()));
}

equivalence::Env MpiEnv() {
  return equivalence::Env{&test::world(), GridWorld};
}

void RunAll(const std::vector<Layout>& layouts) {
  for (const Layout& l : layouts) equivalence::run_layout(MpiEnv(), l);
}

TEST(CudaParallelEquivalence, TensorSequenceLayoutsEqualSingleRank) {
  RunAll(equivalence::tensor_sequence_layouts(test::world().size()));
  PrintWorst("tensor + sequence parallel layouts");
}

// The same layouts over device communicators (MPI on the emulator's device memory): no staging.
TEST(CudaParallelEquivalence, LayoutsOverDeviceGroupsEqualSingleRank) {
  if (!comm::mpi_device_buffers_supported()) GTEST_SKIP() << "MPI on device memory: emulator only";
  RunAll(equivalence::device_group_layouts(test::world().size()));
  PrintWorst("layouts over device groups");
}

// A dropless MoE block (LocalMoe: every expert on the device) under TP + SP: each TP rank routes
// its own sequence shard; the router's and the experts' gradients are summed over the ranks.
TEST(CudaParallelEquivalence, MoeUnderTensorSequenceParallelEqualsSingleRank) {
  RunAll(equivalence::moe_tensor_layouts(test::world().size()));
  PrintWorst("MoE layouts");
}

// Context parallelism on the CUDA backend: tree and ring attention over the CP group, each rank
// holding its zigzag shard of the sequence (chunks r and 2cp-1-r of 2cp), over device groups (MPI
// on the emulator's device memory, the collectives and ring hops on the device buffers), plus one
// layout over host groups (every collective and ring hop staged through host memory).
TEST(CudaParallelEquivalence, ContextParallelLayoutsEqualSingleRank) {
  if (test::world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  RunAll(equivalence::context_parallel_layouts(test::world().size(),
                                               comm::mpi_device_buffers_supported()));
  PrintWorst("context parallel layouts");
}

// Multi-head latent attention on the CUDA backend: heads split over TP, the replicated
// down-projections and latent norms on each rank's rows under SP, context parallelism (tree and
// ring) with the RoPE key at global positions, and an MLA MoE model under TP + SP.
TEST(CudaParallelEquivalence, MlaLayoutsEqualSingleRank) {
  RunAll(equivalence::mla_layouts(test::world().size(), comm::mpi_device_buffers_supported()));
  PrintWorst("MLA layouts");
}

// Expert parallelism on the CUDA backend (LocalMoe with an ep group: the plain all-to-all
// dispatch of the permuted rows to the experts' ranks and back), dropless, over device groups:
// ep 2 and 4 with dp, with tp=2 + SP, and under full recompute (the re-run forward exchanges
// again); the experts' gradients are summed over edp. Tolerance kTol: measured worst 9.1e-7 at
// 4 ranks; grouping the received rows by the wrong source's counts (a deliberate break) gives a
// loss error of 1.9e-3 and gradient errors of 0.32.
TEST(CudaParallelEquivalence, ExpertParallelLayoutsEqualSingleRank) {
  if (test::world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  RunAll(equivalence::expert_parallel_layouts(test::world().size(),
                                              comm::mpi_device_buffers_supported()));
  PrintWorst("expert parallel layouts");
}

// Capacity dropping and the LSH-compressed all-to-all. Each source rank drops and buckets its
// own tokens, so a layout is compared with ep = 1 on the same data split (dp = world, the same
// tokens per rank): ep 2 and 4 must give the loss and gradients of ep 1 (the same drops, the same
// buckets; only the experts' GEMM blocking differs; equivalence::run_compressed_layout). Here the
// CUDA model is also compared with the CPU model (parallel::MoeLayer with the router's capacity
// and LshDispatcher) at the same layout: the same drops and centroids, loss and gradients within
// the same tolerance.
void CompareWithCpuModel(const CompressedLayout& l, const equivalence::CompressedResult& r) {
  comm::Communicator& world = test::world();
  const ModelConfig& c = r.config;
  SCOPED_TRACE(l.str() + " against the CPU model");
  const double tol = equivalence::compressed_tolerance();
  auto host = parallel::ParallelGrid::create(
      GridWorld(false), parallel::GridShape{world.size(), 1, 1, l.ep, world.size()});
  ASSERT_TRUE(host.ok());
  Transformer cpu(c, r.b, r.s, Recompute::kSelective, ModelParallel{&host.value(), false});
  const float cpu_loss = cpu.forward(r.tokens.data(), r.targets.data());
  cpu.zero_grads();
  cpu.backward();
  EXPECT_TRUE(testing::compare("loss (cpu)", &r.loss, &cpu_loss, 1, tol));
  const float cpu_moe = cpu.moe_loss();
  EXPECT_TRUE(testing::compare("moe aux+z loss (cpu)", &r.moe_loss, &cpu_moe, 1, tol));
  auto cpu_named = cpu.grads().named();
  ASSERT_EQ(r.grads.size(), cpu_named.size());
  for (size_t i = 0; i < r.grads.size(); ++i) {
    const Tensor& gt = r.grads[i];
    const Tensor& ct = cpu_named[i].tensor;
    ASSERT_EQ(gt.shape(), ct.shape()) << r.grad_names[i];
    EXPECT_TRUE(testing::compare(r.grad_names[i] + " (cpu)", gt.data<float>(), ct.data<float>(),
                                 gt.numel(), tol));
    equivalence::note_error(
        testing::compare_stats(gt.data<float>(), ct.data<float>(), gt.numel()).rel());
  }
  // The same drops and the same buckets as the CPU layer, and something was compressed.
  const std::vector<parallel::MoeMetrics> cms = cpu.moe_metrics();
  ASSERT_EQ(r.metrics.size(), cms.size());
  size_t m = 0;
  for (int layer = 0; layer < c.n_layers; ++layer) {
    if (!c.is_moe_layer(layer)) continue;
    ASSERT_LT(m, cms.size());
    EXPECT_EQ(r.metrics[m].dropped_per_expert, cms[m].dropped_per_expert);
    if (l.lsh) {
      const auto* d =
          dynamic_cast<const parallel::LshDispatcher*>(&cpu.moe_layer(layer)->dispatcher());
      ASSERT_NE(d, nullptr);
      EXPECT_EQ(r.experts_rows[m], d->metrics().centroids) << "the same buckets";
      EXPECT_LT(d->metrics().centroids, d->metrics().assignments) << "nothing was compressed";
    }
    ++m;
  }
}

TEST(CudaParallelEquivalence, CapacityAndLshLayoutsEqualEpOneAndTheCpuModel) {
  for (const CompressedLayout& l : equivalence::compressed_layouts(
           test::world().size(), comm::mpi_device_buffers_supported())) {
    const equivalence::CompressedResult r = equivalence::run_compressed_layout(MpiEnv(), l);
    if (::testing::Test::HasFatalFailure()) return;
    CompareWithCpuModel(l, r);
  }
  PrintWorst("capacity and LSH layouts");
}

}  // namespace
}  // namespace grove
