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
// Built against the CUDA emulator (tests/cuda_emu, ctest label emu): the ranks' groups are MPI
// communicators on host memory (every collective staged through host memory,
// parallel/backend_collectives.h) or MPI on the emulator's device memory (the direct path).
// Tolerance: kTol below.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "core/rng.h"
#include "model/cuda/cuda_transformer.h"
#include "parallel/grid.h"
#include "parallel/lsh_dispatcher.h"
#include "tests/comm/mpi_test_env.h"
#include "tests/common/tensor_compare.h"

namespace grove {
namespace {

using Model = CudaTransformerF32;

// Relative tolerance of the loss and of every gradient tensor (max|a - b| / max|b|): the worst
// error measured over every tensor / sequence parallel layout at 1, 2 and 4 ranks is 9.1e-7
// (fp32 summation order); a missing reduction or a wrong slice is O(1).
constexpr double kTol = 5e-6;
// Context parallelism: the attention of each query row is merged from partials over key chunks
// (a different fp32 summation order than one kernel call); measured worst 1.06e-6 over cp 2 and 4,
// tree and ring, with dp and tp + SP; the bound for a layout against one rank in fp32 is 1e-5.
// Finishing the tree's combine with rank 0's lse maximum on every rank (a deliberate break) gives
// gradient errors of O(100).
constexpr double kCpTol = 1e-5;

ModelConfig TestConfig() {
  ModelConfig c;
  c.vocab_size = 64;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 4;  // GQA, still divisible by tp = 4
  c.ffn_hidden = 64;
  c.max_seq_len = 16;
  c.init_std = 0.2f;  // larger than training init so attention is far from uniform
  c.seed = 11;
  return c;
}

ModelConfig MoeConfig() {
  ModelConfig c = TestConfig();
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.every = 2;  // block 1 is MoE, block 0 dense
  c.moe.expert_ffn = 32;
  return c;
}

struct Batch {
  std::vector<int32_t> tokens, targets;  // [s, B]
};

Batch GlobalBatch(const ModelConfig& c, int s, int B) {
  Batch g;
  Rng rng(5);
  for (int i = 0; i < s * B; ++i) {
    g.tokens.push_back(int32_t(rng.next_u64() % c.vocab_size));
    g.targets.push_back(int32_t(rng.next_u64() % c.vocab_size));
  }
  g.targets[3] = -1;  // an ignored target
  return g;
}

// Columns [r·b, (r+1)·b) of a [s, B] batch.
std::vector<int32_t> Columns(const std::vector<int32_t>& x, int s, int B, int r, int b) {
  std::vector<int32_t> out;
  for (int i = 0; i < s; ++i)
    for (int j = 0; j < b; ++j) out.push_back(x[size_t(i) * B + r * b + j]);
  return out;
}

// Host copy of (device) weights of the full model.
Weights ToHost(const Weights& w, const ModelConfig& c) {
  Weights out = Weights::Zeros(c);
  std::vector<NamedTensor> src = w.named(), dst = out.named();
  for (size_t i = 0; i < dst.size(); ++i) dst[i].tensor.copy_from(src[i].tensor);
  return out;
}

// The largest relative gradient error over the layouts of the running test (printed at its end).
double g_worst = 0;

void PrintWorst(const char* what) {
  std::printf("[rank %d/%d] %s: worst gradient error %.3g\n", test::world().rank(),
              test::world().size(), what, g_worst);
  g_worst = 0;
}

// The world the grid is split from: the host MPI world (every TP collective staged through host
// memory), or MPI on the emulator's device memory (comm::mpi_device_communicator: the
// collectives run on the device buffers themselves, parallel/backend_collectives.h's direct path).
std::shared_ptr<comm::Communicator> GridWorld(bool device_groups) {
  if (!device_groups) return std::shared_ptr<comm::Communicator>(test::mpi_session().world());
  return std::shared_ptr<comm::Communicator>(comm::mpi_device_communicator(test::world()));
}

// Multi-head latent attention: 8 heads of qk 8 + 4 with values of 8 (zero-padded to 12 inside
// attention), a query latent of 24 and a KV latent of 32.
ModelConfig WithMla(ModelConfig c) {
  c.attention = Attention::kMla;
  c.n_kv_heads = 0;
  c.mla = MlaOptions{24, 32, 8, 4, 8};
  return c;
}

void RunLayout(int tp, int dp, bool sp, Recompute mode, bool moe = false,
               bool device_groups = false, int cp = 1, CpAttention algo = CpAttention::kTree,
               int ep = 1, bool mla = false) {
  comm::Communicator& world = test::world();
  const ModelConfig c = mla   ? WithMla(moe ? MoeConfig() : TestConfig())
                        : moe ? MoeConfig()
                              : TestConfig();
  const int s = 8, b = 2, B = b * dp;
  SCOPED_TRACE("tp=" + std::to_string(tp) + " cp=" + std::to_string(cp) +
               (cp > 1 ? std::string(" ") + cp_attention_name(algo) : std::string()) + " ep=" +
               std::to_string(ep) + " dp=" + std::to_string(dp) + " sp=" + std::to_string(sp) +
               " recompute=" + recompute_name(mode) + (moe ? " moe" : "") + (mla ? " mla" : "") +
               (device_groups ? " device groups" : " host groups"));
  auto grid = parallel::ParallelGrid::create(GridWorld(device_groups),
                                             parallel::GridShape{world.size(), tp, cp, ep, dp});
  ASSERT_TRUE(grid.ok()) << grid.status().message();
  const parallel::GridCoord& at = grid.value().coord();
  const ModelParallel par{&grid.value(), sp, algo};
  const double tol = cp > 1 ? kCpTol : kTol;
  const Status supported = Model::Supports(c, b, s, par);
  ASSERT_TRUE(supported.ok()) << supported.message();

  const Batch g = GlobalBatch(c, s, B);
  Model ref(c, B, s, mode);
  const float ref_loss = ref.forward(g.tokens.data(), g.targets.data());
  ref.zero_grads();
  ref.backward();
  const Weights ref_grads = ToHost(ref.grads(), c);

  Model model(c, b, s, mode, par);
  const auto tokens = Columns(g.tokens, s, B, at.dp, b);
  const auto targets = Columns(g.targets, s, B, at.dp, b);
  const float loss = model.forward(tokens.data(), targets.data());
  model.zero_grads();
  model.backward();

  EXPECT_TRUE(testing::compare("loss", &loss, &ref_loss, 1, tol));
  if (moe) {
    const float ref_moe = ref.moe_loss(), got_moe = model.moe_loss();
    EXPECT_TRUE(testing::compare("moe aux+z loss", &got_moe, &ref_moe, 1, tol));
  }
  const Weights want = Weights::Shard(ref_grads, c, tp, at.tp, ep, at.ep);
  auto got_named = model.grads().named(), want_named = want.named();
  ASSERT_EQ(got_named.size(), want_named.size());
  for (size_t i = 0; i < got_named.size(); ++i) {
    const Tensor gt = got_named[i].tensor.to(Device::kCPU);
    const Tensor& wt = want_named[i].tensor;
    ASSERT_EQ(gt.shape(), wt.shape()) << got_named[i].name;
    EXPECT_TRUE(
        testing::compare(got_named[i].name, gt.data<float>(), wt.data<float>(), gt.numel(), tol));
    g_worst = std::max(
        g_worst, testing::compare_stats(gt.data<float>(), wt.data<float>(), gt.numel()).rel());
  }
}

TEST(CudaParallelEquivalence, TensorSequenceLayoutsEqualSingleRank) {
  const int world = test::world().size();
  for (int tp : {1, 2, 4}) {
    if (world % tp != 0) continue;
    const int dp = world / tp;
    if (dp > 2) continue;  // dp ∈ {1, 2}
    for (bool sp : {false, true}) {
      if (sp && tp == 1) continue;
      for (Recompute mode : {Recompute::kNone, Recompute::kSelective, Recompute::kFull})
        RunLayout(tp, dp, sp, mode);
    }
  }
  PrintWorst("tensor + sequence parallel layouts");
}

// The same layouts over device communicators (MPI on the emulator's device memory): no staging.
TEST(CudaParallelEquivalence, LayoutsOverDeviceGroupsEqualSingleRank) {
  if (!comm::mpi_device_buffers_supported()) GTEST_SKIP() << "MPI on device memory: emulator only";
  const int world = test::world().size();
  for (int tp : {1, 2, 4}) {
    if (world % tp != 0 || world / tp > 2) continue;
    for (bool sp : {false, true}) {
      if (sp && tp == 1) continue;
      for (Recompute mode : {Recompute::kSelective, Recompute::kFull})
        RunLayout(tp, world / tp, sp, mode, /*moe=*/false, /*device_groups=*/true);
    }
  }
  RunLayout(world >= 2 ? 2 : 1, world >= 2 ? world / 2 : 1, world >= 2, Recompute::kSelective,
            /*moe=*/true, /*device_groups=*/true);
  PrintWorst("layouts over device groups");
}

// Multi-head latent attention on the CUDA backend: heads split over TP, the replicated
// down-projections and latent norms on each rank's rows under SP, context parallelism (tree and
// ring) with the RoPE key at global positions, and an MLA MoE model under TP + SP.
TEST(CudaParallelEquivalence, MlaLayoutsEqualSingleRank) {
  const int world = test::world().size();
  const bool device = comm::mpi_device_buffers_supported();
  for (int tp : {1, 2, 4}) {
    if (world % tp != 0 || world / tp > 2) continue;
    for (bool sp : {false, true}) {
      if (sp && tp == 1) continue;
      for (Recompute mode : {Recompute::kSelective, Recompute::kFull})
        RunLayout(tp, world / tp, sp, mode, false, false, 1, CpAttention::kTree, 1, true);
    }
  }
  if (world >= 2) {
    for (CpAttention algo : {CpAttention::kTree, CpAttention::kRing})
      RunLayout(1, world / 2, false, Recompute::kSelective, false, device, 2, algo, 1, true);
    RunLayout(2, world / 2, true, Recompute::kSelective, true, false, 1, CpAttention::kTree, 1,
              true);
  }
  PrintWorst("MLA layouts");
}

// A dropless MoE block (LocalMoe: every expert on the device) under TP + SP: each TP rank routes
// its own sequence shard; the router's and the experts' gradients are summed over the ranks.
TEST(CudaParallelEquivalence, MoeUnderTensorSequenceParallelEqualsSingleRank) {
  const int world = test::world().size();
  for (int tp : {1, 2}) {
    if (world % tp != 0 || world / tp > 2) continue;
    RunLayout(tp, world / tp, /*sp=*/tp > 1, Recompute::kSelective, /*moe=*/true);
    RunLayout(tp, world / tp, /*sp=*/tp > 1, Recompute::kFull, /*moe=*/true);
  }
  PrintWorst("MoE layouts");
}

// Context parallelism on the CUDA backend: tree and ring attention over the CP group, each rank
// holding its zigzag shard of the sequence (chunks r and 2cp-1-r of 2cp), over device groups (MPI
// on the emulator's device memory, the collectives and ring hops on the device buffers), plus one
// layout over host groups (every collective and ring hop staged through host memory).
TEST(CudaParallelEquivalence, ContextParallelLayoutsEqualSingleRank) {
  const int world = test::world().size();
  if (world < 2) GTEST_SKIP() << "needs 2 ranks";
  const bool device = comm::mpi_device_buffers_supported();
  for (CpAttention algo : {CpAttention::kTree, CpAttention::kRing}) {
    for (int cp : {2, 4}) {
      if (world % cp != 0) continue;
      RunLayout(1, world / cp, false, Recompute::kSelective, false, device, cp, algo);
      if (cp == 2) RunLayout(1, world / cp, false, Recompute::kFull, false, device, cp, algo);
    }
    if (world == 4)  // cp=2 x tp=2 with SP: heads split over tp, sequence over cp and tp
      RunLayout(2, 1, true, Recompute::kSelective, false, device, 2, algo);
  }
  RunLayout(1, world / 2, false, Recompute::kSelective, false, /*device_groups=*/false, 2,
            CpAttention::kRing);
  if (world >= 2)
    RunLayout(1, world / 2, false, Recompute::kSelective, /*moe=*/true, device, 2,
              CpAttention::kTree);
  PrintWorst("context parallel layouts");
}

// Expert parallelism on the CUDA backend (LocalMoe with an ep group: the plain all-to-all
// dispatch of the permuted rows to the experts' ranks and back), dropless, over device groups:
// ep 2 and 4 with dp, with tp=2 + SP, and under full recompute (the re-run forward exchanges
// again); the experts' gradients are summed over edp. Tolerance kTol: measured worst 9.1e-7 at
// 4 ranks; grouping the received rows by the wrong source's counts (a deliberate break) gives a
// loss error of 1.9e-3 and gradient errors of 0.32.
TEST(CudaParallelEquivalence, ExpertParallelLayoutsEqualSingleRank) {
  const int world = test::world().size();
  if (world < 2) GTEST_SKIP() << "needs 2 ranks";
  const bool device = comm::mpi_device_buffers_supported();
  for (int ep : {2, 4}) {
    if (world % ep != 0) continue;
    RunLayout(1, world, false, Recompute::kSelective, /*moe=*/true, device, 1, CpAttention::kTree,
              ep);
  }
  RunLayout(1, world, false, Recompute::kFull, /*moe=*/true, device, 1, CpAttention::kTree, 2);
  RunLayout(1, world, false, Recompute::kSelective, /*moe=*/true, /*device_groups=*/false, 1,
            CpAttention::kTree, 2);
  if (world == 4)
    RunLayout(2, 2, true, Recompute::kSelective, /*moe=*/true, device, 1, CpAttention::kTree, 2);
  PrintWorst("expert parallel layouts");
}

// Capacity dropping and the LSH-compressed all-to-all. Each source rank drops and buckets its
// own tokens, so a layout is compared with ep = 1 on the same data split (dp = world, the same
// tokens per rank): ep 2 and 4 must give the loss and gradients of ep 1 (the same drops, the same
// buckets; only the experts' GEMM blocking differs). The CUDA model is also compared with the CPU
// model (parallel::MoeLayer with the router's capacity and LshDispatcher) at the same layout:
// the same drops and centroids, loss and gradients within kCompressedTol.
// Worst errors measured: see kCompressedTol.
constexpr double kCompressedTol = 5e-6;

ModelConfig CompressedMoeConfig(bool lsh, bool capacity) {
  ModelConfig c = MoeConfig();
  if (capacity) c.moe.capacity_factor = 0.75f;
  if (lsh) {
    c.moe.lsh.enabled = true;
    c.moe.lsh.warmup_steps = 0;
    c.moe.lsh.min_tokens = 2;  // groups here hold about 8 rows
  }
  return c;
}

void RunCompressedLayout(int ep, bool lsh, bool capacity, bool device_groups) {
  comm::Communicator& world = test::world();
  const ModelConfig c = CompressedMoeConfig(lsh, capacity);
  const int s = 8, b = 2, dp = world.size(), B = b * dp;
  SCOPED_TRACE("ep=" + std::to_string(ep) + " dp=" + std::to_string(dp) + (lsh ? " lsh" : "") +
               (capacity ? " capacity" : "") + (device_groups ? " device groups" : " host groups"));
  auto grid1 = parallel::ParallelGrid::create(GridWorld(device_groups),
                                              parallel::GridShape{world.size(), 1, 1, 1, dp});
  auto grid = parallel::ParallelGrid::create(GridWorld(device_groups),
                                             parallel::GridShape{world.size(), 1, 1, ep, dp});
  auto host = parallel::ParallelGrid::create(GridWorld(false),
                                             parallel::GridShape{world.size(), 1, 1, ep, dp});
  ASSERT_TRUE(grid1.ok() && grid.ok() && host.ok());
  const parallel::GridCoord& at = grid.value().coord();
  ASSERT_EQ(grid1.value().coord().dp, at.dp);
  const Batch g = GlobalBatch(c, s, B);
  const auto tokens = Columns(g.tokens, s, B, at.dp, b);
  const auto targets = Columns(g.targets, s, B, at.dp, b);

  Model ref(c, b, s, Recompute::kSelective, ModelParallel{&grid1.value(), false});
  const float ref_loss = ref.forward(tokens.data(), targets.data());
  ref.zero_grads();
  ref.backward();
  const Weights ref_grads = ToHost(ref.grads(), c);

  Model model(c, b, s, Recompute::kSelective, ModelParallel{&grid.value(), false});
  const float loss = model.forward(tokens.data(), targets.data());
  model.zero_grads();
  model.backward();

  Transformer cpu(c, b, s, Recompute::kSelective, ModelParallel{&host.value(), false});
  const float cpu_loss = cpu.forward(tokens.data(), targets.data());
  cpu.zero_grads();
  cpu.backward();

  EXPECT_TRUE(testing::compare("loss (ep 1)", &loss, &ref_loss, 1, kCompressedTol));
  EXPECT_TRUE(testing::compare("loss (cpu)", &loss, &cpu_loss, 1, kCompressedTol));
  const float ref_moe = ref.moe_loss(), got_moe = model.moe_loss(), cpu_moe = cpu.moe_loss();
  EXPECT_TRUE(testing::compare("moe aux+z loss (ep 1)", &got_moe, &ref_moe, 1, kCompressedTol));
  EXPECT_TRUE(testing::compare("moe aux+z loss (cpu)", &got_moe, &cpu_moe, 1, kCompressedTol));
  const Weights want = Weights::Shard(ref_grads, c, 1, 0, ep, at.ep);
  auto got_named = model.grads().named(), want_named = want.named(),
       cpu_named = cpu.grads().named();
  ASSERT_EQ(got_named.size(), want_named.size());
  ASSERT_EQ(got_named.size(), cpu_named.size());
  for (size_t i = 0; i < got_named.size(); ++i) {
    const Tensor gt = got_named[i].tensor.to(Device::kCPU);
    const Tensor& wt = want_named[i].tensor;
    const Tensor& ct = cpu_named[i].tensor;
    ASSERT_EQ(gt.shape(), wt.shape()) << got_named[i].name;
    ASSERT_EQ(gt.shape(), ct.shape()) << got_named[i].name;
    EXPECT_TRUE(testing::compare(got_named[i].name + " (ep 1)", gt.data<float>(), wt.data<float>(),
                                 gt.numel(), kCompressedTol));
    EXPECT_TRUE(testing::compare(got_named[i].name + " (cpu)", gt.data<float>(), ct.data<float>(),
                                 gt.numel(), kCompressedTol));
    g_worst = std::max(
        g_worst, testing::compare_stats(gt.data<float>(), wt.data<float>(), gt.numel()).rel());
    g_worst = std::max(
        g_worst, testing::compare_stats(gt.data<float>(), ct.data<float>(), gt.numel()).rel());
  }
  // The same drops and the same buckets as the CPU layer, and something was dropped / compressed.
  const std::vector<parallel::MoeMetrics> gms = model.moe_metrics(), cms = cpu.moe_metrics();
  ASSERT_EQ(gms.size(), cms.size());
  size_t m = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    ASSERT_LT(m, gms.size());
    const parallel::MoeMetrics& gm = gms[m];
    const parallel::MoeMetrics& cm = cms[m++];
    EXPECT_EQ(gm.dropped_per_expert, cm.dropped_per_expert);
    if (capacity) {
      EXPECT_GT(gm.dropped, 0) << "capacity_factor=0.75 must drop";
    }
    if (lsh) {
      const auto* d = dynamic_cast<const parallel::LshDispatcher*>(&cpu.moe_layer(l)->dispatcher());
      ASSERT_NE(d, nullptr);
      EXPECT_EQ(model.moe_layer(l)->experts_rows(), d->metrics().centroids) << "the same buckets";
      EXPECT_LT(d->metrics().centroids, d->metrics().assignments) << "nothing was compressed";
    }
  }
}

TEST(CudaParallelEquivalence, CapacityAndLshLayoutsEqualEpOneAndTheCpuModel) {
  const int world = test::world().size();
  const bool device = comm::mpi_device_buffers_supported();
  RunCompressedLayout(1, /*lsh=*/true, /*capacity=*/false, /*device_groups=*/false);
  RunCompressedLayout(1, /*lsh=*/false, /*capacity=*/true, /*device_groups=*/false);
  if (world % 2 == 0) {
    RunCompressedLayout(2, /*lsh=*/true, /*capacity=*/false, device);
    RunCompressedLayout(2, /*lsh=*/false, /*capacity=*/true, device);
  }
  if (world % 4 == 0) RunCompressedLayout(4, /*lsh=*/true, /*capacity=*/true, false);
  PrintWorst("capacity and LSH layouts");
}

}  // namespace
}  // namespace grove
