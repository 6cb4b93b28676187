// Tensor + sequence + data parallelism against the single-rank model (docs/tensor_parallel.md),
// for multi-head attention (GQA) and multi-head latent attention (MLA, with and without the query
// latent: heads split over TP, the replicated down-projections and latent norms on each rank's
// rows under SP, g / f before the up-projections).
//
// Every rank builds the tp=1, dp=1 reference model on the global batch and the sharded model of
// its layout from the same seed (full weights initialised once, then sliced). Loss and every
// gradient shard must equal the matching slice of the reference, fp32 <= 1e-5 relative, for every
// (tp, dp) with tp·dp = world, SP off/on, and recompute none/selective/full. Why 1e-5: the
// sharded model sums the same terms in another order (row-parallel partial sums, reduce-scatter,
// vocabulary-split softmax), which moves fp32 results by ~1e-7..1e-6 relative; a missing
// reduction or a wrong slice moves them by O(1).
// Also: the activation stash of each layout equals the memory formula (spec/memory.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <type_traits>
#include <vector>

#include "comm/mpi_communicator.h"
#include "core/rng.h"
#include "kernels/cpu/bf16.h"
#include "model/transformer.h"
#include "parallel/grid.h"
#include "spec/memory.h"
#include "tests/comm/mpi_test_env.h"
#include "tests/common/tensor_compare.h"
#include "tests/model/layout_batch.h"

namespace grove {
namespace {

ModelConfig TestConfig() {
  ModelConfig c;
  c.vocab_size = 64;
  c.d_model = 64;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 4;  // GQA, still divisible by tp = 4
  c.max_seq_len = 16;
  c.init_std = 0.2f;  // larger than training init so attention is far from uniform
  c.seed = 11;
  return c;
}

using testing::Columns;
using testing::GlobalBatch;

ModelConfig MoeConfig() {
  ModelConfig c = TestConfig();
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.every = 2;  // block 1 is MoE, block 0 dense
  c.moe.expert_ffn = 48;
  return c;
}

// Backend = CpuBf16Backend: both models round their GEMM operands to bf16, and the sharded one's
// other summation order moves an fp32 value across a bf16 rounding boundary now and then (2^-8
// relative), so loss and gradients are compared norm-wise within kBf16Tolerance instead.
constexpr double kBf16Tolerance = 2e-2;

// Multi-head latent attention: 8 heads of qk 8 + 4 with values of 8 (zero-padded to 12 inside
// attention), a KV latent of 32 and, with `q_lora`, a query latent of 24.
enum class Mla { kOff, kQLora, kNoQLora };
ModelConfig WithMla(ModelConfig c, Mla mla) {
  if (mla == Mla::kOff) return c;
  c.attention = Attention::kMla;
  c.n_kv_heads = 0;
  c.mla = MlaOptions{mla == Mla::kQLora ? 24 : 0, 32, 8, 4, 8};
  return c;
}

template <class Backend = CpuBackend>
void RunLayout(int tp, int dp, bool sp, Recompute mode, int ep = 1, bool moe = false, int cp = 1,
               CpAttention algo = CpAttention::kTree, Mla mla = Mla::kOff) {
  constexpr bool bf16 = !std::is_same_v<Backend, CpuBackend>;
  comm::Communicator& world = test::world();
  const ModelConfig c = WithMla(moe ? MoeConfig() : TestConfig(), mla);
  const int s = 8, b = 2, B = b * dp;
  SCOPED_TRACE("tp=" + std::to_string(tp) + " cp=" + std::to_string(cp) + " dp=" +
               std::to_string(dp) + " ep=" + std::to_string(ep) + " sp=" + std::to_string(sp) +
               " recompute=" + recompute_name(mode) + (moe ? " moe" : "") +
               (mla == Mla::kOff     ? ""
                : mla == Mla::kQLora ? " mla"
                                     : " mla(no q_lora)") +
               (cp > 1 ? std::string(" ") + cp_attention_name(algo) : ""));
  auto grid = parallel::ParallelGrid::create(
      std::shared_ptr<comm::Communicator>(test::mpi_session().world()),
      parallel::GridShape{world.size(), tp, cp, ep, dp});
  ASSERT_TRUE(grid.ok()) << grid.status().message();
  const parallel::GridCoord& at = grid.value().coord();

  const testing::LayoutBatch g = GlobalBatch(c, s, B);
  TransformerT<Backend> ref(c, B, s, mode);
  const float ref_loss = ref.forward(g.tokens.data(), g.targets.data());
  ref.zero_grads();
  ref.backward();

  TransformerT<Backend> model(c, b, s, mode, {&grid.value(), sp, algo});
  const auto tokens = Columns(g.tokens, s, B, at.dp, b);
  const auto targets = Columns(g.targets, s, B, at.dp, b);
  const float loss = model.forward(tokens.data(), targets.data());
  model.zero_grads();
  model.backward();

  if constexpr (bf16) {
    EXPECT_NEAR(loss, ref_loss, kBf16Tolerance * std::abs(ref_loss));
  } else {
    EXPECT_TRUE(testing::compare("loss", &loss, &ref_loss, 1, 1e-5));
  }
  if (moe) {
    const float ref_moe = ref.moe_loss(), got_moe = model.moe_loss();
    EXPECT_TRUE(testing::compare("moe aux+z loss", &got_moe, &ref_moe, 1, 1e-5));
  }
  const Weights want = Weights::Shard(ref.grads(), c, tp, at.tp, ep, at.ep);
  auto got_named = model.grads().named(), want_named = want.named();
  double worst_bf16 = 0;
  ASSERT_EQ(got_named.size(), want_named.size());
  for (size_t i = 0; i < got_named.size(); ++i) {
    const Tensor& gt = got_named[i].tensor;
    const Tensor& wt = want_named[i].tensor;
    ASSERT_EQ(gt.shape(), wt.shape()) << got_named[i].name;
    if constexpr (bf16) {
      const std::vector<double> w64(wt.data<float>(), wt.data<float>() + wt.numel());
      const double rel = testing::norm_rel(gt.data<float>(), w64.data(), gt.numel());
      EXPECT_LT(rel, kBf16Tolerance) << got_named[i].name;
      worst_bf16 = std::max(worst_bf16, rel);
    } else {
      EXPECT_TRUE(testing::compare(got_named[i].name, gt.data<float>(), wt.data<float>(),
                                   gt.numel(), 1e-5));
    }
  }
  if constexpr (bf16) {
    if (world.rank() == 0)
      std::printf(
          "bf16 tp=%d dp=%d cp=%d sp=%d %s: loss %.6f vs one rank %.6f, worst gradient "
          "%.3g\n",
          tp, dp, cp, int(sp), recompute_name(mode), loss, ref_loss, worst_bf16);
  }

  if (moe || cp > 1) return;  // expert stash: routing-dependent; CP: shards of the sequence
  // The stash of this layout equals the memory formula.
  const MemoryEstimate e = EstimateMemory(c, MemoryLayout{b, s, tp, sp && tp > 1, mode});
  const ActivationReport r = model.activation_report();
  EXPECT_EQ(size_t(e.activations_per_layer), r.per_layer[0]);
  EXPECT_EQ(size_t(e.activations_transient), r.transient);
  EXPECT_EQ(size_t(e.activations_head), r.head);
}

TEST(ParallelEquivalence, EveryLayoutEqualsSingleRank) {
  const int world = test::world().size();
  for (int tp : {1, 2, 4}) {
    if (world % tp != 0) continue;
    const int dp = world / tp;
    if (dp > 2) continue;  // dp ∈ {1, 2}
    for (bool sp : {false, true}) {
      if (sp && tp == 1) continue;
      for (Recompute mode : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
        RunLayout<>(tp, dp, sp, mode);
        RunLayout<>(tp, dp, sp, mode, 1, false, 1, CpAttention::kTree, Mla::kQLora);
      }
      RunLayout<>(tp, dp, sp, Recompute::kSelective, 1, false, 1, CpAttention::kTree,
                  Mla::kNoQLora);
    }
  }
}

// Context parallelism (zigzag shards, tree and ring attention), alone and with TP+SP and DP, and
// with MoE: every layout equals the single-rank model.
TEST(ParallelEquivalence, ContextParallelLayoutsEqualSingleRank) {
  const int world = test::world().size();
  for (int cp : {2, 4}) {
    for (int tp : {1, 2}) {
      if (world % (cp * tp) != 0) continue;
      const int dp = world / (cp * tp);
      if (dp > 2) continue;
      for (auto algo : {CpAttention::kTree, CpAttention::kRing}) {
        RunLayout<>(tp, dp, tp > 1, Recompute::kSelective, 1, false, cp, algo);
        RunLayout<>(tp, dp, tp > 1, Recompute::kFull, 1, false, cp, algo);
        RunLayout<>(tp, dp, tp > 1, Recompute::kSelective, 1, false, cp, algo, Mla::kQLora);
        RunLayout<>(tp, dp, tp > 1, Recompute::kFull, 1, false, cp, algo, Mla::kNoQLora);
      }
      RunLayout<>(tp, dp, tp > 1, Recompute::kSelective, world % 2 == 0 ? 2 : 1, true, cp);
    }
  }
}

// Mixture of experts: expert parallelism folded over the same ranks (ep x edp = tp x dp), with
// TP+SP where tp = 2. Loss, aux/z loss and every gradient (expert shards against the slice of
// the reference's experts) equal the single-rank MoE model.
TEST(ParallelEquivalence, MoeLayoutsEqualSingleRank) {
  const int world = test::world().size();
  for (int tp : {1, 2}) {
    if (world % tp != 0 || world / tp > 2) continue;
    const int dp = world / tp;
    for (int ep : {1, 2, 4}) {
      if (world % ep != 0) continue;
      RunLayout<>(tp, dp, /*sp=*/tp > 1, Recompute::kSelective, ep, /*moe=*/true);
      RunLayout<>(tp, dp, /*sp=*/tp > 1, Recompute::kFull, ep, /*moe=*/true);
      RunLayout<>(tp, dp, tp > 1, Recompute::kSelective, ep, true, 1, CpAttention::kTree,
                  Mla::kQLora);
    }
  }
}

// train.precision=bf16 on the CPU (CpuBf16Backend): TP with and without SP, DP, and CP against
// the single-rank bf16 model (the parallel ops are backend templates).
TEST(ParallelEquivalence, Bf16LayoutsEqualSingleRankBf16) {
  if (!cpu::bf16_gemm_supported())
    GTEST_SKIP() << "this CPU has no bf16 GEMMs (" << cpu::bf16_gemm_describe() << ")";
  const int world = test::world().size();
  for (int tp : {1, 2}) {
    if (world % tp != 0 || world / tp > 2) continue;
    const int dp = world / tp;
    for (bool sp : {false, true}) {
      if (sp && tp == 1) continue;
      RunLayout<CpuBf16Backend>(tp, dp, sp, Recompute::kSelective);
      RunLayout<CpuBf16Backend>(tp, dp, sp, Recompute::kFull);
    }
  }
  if (world == 2) RunLayout<CpuBf16Backend>(1, 1, false, Recompute::kSelective, 1, false, 2);
}

}  // namespace
}  // namespace grove
