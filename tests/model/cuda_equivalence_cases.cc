// The layout-equivalence cases of the CUDA-backend model; see cuda_equivalence_cases.h.
#include "tests/model/cuda_equivalence_cases.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "core/rng.h"
#include "model/cuda/cuda_transformer.h"
#include "parallel/grid.h"
#include "tests/common/tensor_compare.h"
#include "tests/model/layout_batch.h"

namespace grove::equivalence {
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
// Capacity and LSH layouts against ep = 1 and the CPU model: the same drops and buckets, only the
// experts' GEMM blocking (and, against the CPU, the kernels) differ.
constexpr double kCompressedTol = 5e-6;

thread_local double t_worst = 0;

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

// Multi-head latent attention: 8 heads of qk 8 + 4 with values of 8 (zero-padded to 12 inside
// attention), a query latent of 24 and a KV latent of 32.
ModelConfig WithMla(ModelConfig c) {
  c.attention = Attention::kMla;
  c.n_kv_heads = 0;
  c.mla = MlaOptions{24, 32, 8, 4, 8};
  return c;
}

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

using testing::Columns;
using testing::GlobalBatch;

// Host copy of (device) weights of the full model.
Weights ToHost(const Weights& w, const ModelConfig& c) {
  Weights out = Weights::Zeros(c);
  std::vector<NamedTensor> src = w.named(), dst = out.named();
  for (size_t i = 0; i < dst.size(); ++i) dst[i].tensor.copy_from(src[i].tensor);
  return out;
}

// Compares every gradient shard of `got` with `want` (host) within tol, noting the worst error.
void CompareGrads(const Weights& got, const Weights& want, double tol, const std::string& suffix) {
  auto got_named = got.named(), want_named = want.named();
  ASSERT_EQ(got_named.size(), want_named.size());
  for (size_t i = 0; i < got_named.size(); ++i) {
    const Tensor gt = got_named[i].tensor.to(Device::kCPU);
    const Tensor& wt = want_named[i].tensor;
    ASSERT_EQ(gt.shape(), wt.shape()) << got_named[i].name;
    EXPECT_TRUE(testing::compare(got_named[i].name + suffix, gt.data<float>(), wt.data<float>(),
                                 gt.numel(), tol));
    note_error(testing::compare_stats(gt.data<float>(), wt.data<float>(), gt.numel()).rel());
  }
}

}  // namespace

double take_worst() {
  const double w = t_worst;
  t_worst = 0;
  return w;
}

void note_error(double rel) {
  t_worst = std::max(t_worst, rel);
}

double compressed_tolerance() {
  return kCompressedTol;
}

std::string Layout::str() const {
  return "tp=" + std::to_string(tp) + " cp=" + std::to_string(cp) +
         (cp > 1 ? std::string(" ") + cp_attention_name(algo) : std::string()) +
         " ep=" + std::to_string(ep) + " dp=" + std::to_string(dp) + " sp=" + std::to_string(sp) +
         " recompute=" + recompute_name(mode) + (moe ? " moe" : "") + (mla ? " mla" : "") +
         (device_groups ? " device groups" : " host groups");
}

std::string CompressedLayout::str() const {
  return "ep=" + std::to_string(ep) + (lsh ? " lsh" : "") + (capacity ? " capacity" : "") +
         (device_groups ? " device groups" : " host groups");
}

std::vector<Layout> tensor_sequence_layouts(int world) {
  std::vector<Layout> out;
  for (int tp : {1, 2, 4}) {
    if (world % tp != 0 || world / tp > 2) continue;  // dp ∈ {1, 2}
    for (bool sp : {false, true}) {
      if (sp && tp == 1) continue;
      for (Recompute mode : {Recompute::kNone, Recompute::kSelective, Recompute::kFull})
        out.push_back(
            Layout{.tp = tp, .dp = world / tp, .sp = sp, .mode = mode, .device_groups = false});
    }
  }
  return out;
}

std::vector<Layout> device_group_layouts(int world) {
  std::vector<Layout> out;
  for (int tp : {1, 2, 4}) {
    if (world % tp != 0 || world / tp > 2) continue;
    for (bool sp : {false, true}) {
      if (sp && tp == 1) continue;
      for (Recompute mode : {Recompute::kSelective, Recompute::kFull})
        out.push_back(Layout{.tp = tp, .dp = world / tp, .sp = sp, .mode = mode});
    }
  }
  const int tp = world >= 2 ? 2 : 1;
  out.push_back(Layout{.tp = tp, .dp = world / tp, .sp = world >= 2, .moe = true});
  return out;
}

std::vector<Layout> moe_tensor_layouts(int world) {
  std::vector<Layout> out;
  for (int tp : {1, 2}) {
    if (world % tp != 0 || world / tp > 2) continue;
    for (Recompute mode : {Recompute::kSelective, Recompute::kFull})
      out.push_back(Layout{.tp = tp,
                           .dp = world / tp,
                           .sp = tp > 1,
                           .mode = mode,
                           .moe = true,
                           .device_groups = false});
  }
  return out;
}

std::vector<Layout> context_parallel_layouts(int world, bool device) {
  std::vector<Layout> out;
  if (world < 2) return out;
  for (CpAttention algo : {CpAttention::kTree, CpAttention::kRing}) {
    for (int cp : {2, 4}) {
      if (world % cp != 0) continue;
      out.push_back(Layout{.dp = world / cp, .device_groups = device, .cp = cp, .algo = algo});
      if (cp == 2)
        out.push_back(Layout{.dp = world / cp,
                             .mode = Recompute::kFull,
                             .device_groups = device,
                             .cp = cp,
                             .algo = algo});
    }
    if (world == 4)  // cp=2 x tp=2 with SP: heads split over tp, sequence over cp and tp
      out.push_back(Layout{.tp = 2, .sp = true, .device_groups = device, .cp = 2, .algo = algo});
  }
  out.push_back(
      Layout{.dp = world / 2, .device_groups = false, .cp = 2, .algo = CpAttention::kRing});
  out.push_back(Layout{.dp = world / 2, .moe = true, .device_groups = device, .cp = 2});
  return out;
}

std::vector<Layout> expert_parallel_layouts(int world, bool device) {
  std::vector<Layout> out;
  if (world < 2) return out;
  for (int ep : {2, 4})
    if (world % ep == 0)
      out.push_back(Layout{.dp = world, .moe = true, .device_groups = device, .ep = ep});
  out.push_back(
      Layout{.dp = world, .mode = Recompute::kFull, .moe = true, .device_groups = device, .ep = 2});
  out.push_back(Layout{.dp = world, .moe = true, .device_groups = false, .ep = 2});
  if (world == 4)
    out.push_back(
        Layout{.tp = 2, .dp = 2, .sp = true, .moe = true, .device_groups = device, .ep = 2});
  return out;
}

// Heads split over TP, the replicated down-projections and latent norms on each rank's rows under
// SP, context parallelism (tree and ring) with the RoPE key at global positions, and an MLA MoE
// model under TP + SP.
std::vector<Layout> mla_layouts(int world, bool device) {
  std::vector<Layout> out;
  for (int tp : {1, 2, 4}) {
    if (world % tp != 0 || world / tp > 2) continue;
    for (bool sp : {false, true}) {
      if (sp && tp == 1) continue;
      for (Recompute mode : {Recompute::kSelective, Recompute::kFull})
        out.push_back(Layout{.tp = tp,
                             .dp = world / tp,
                             .sp = sp,
                             .mode = mode,
                             .device_groups = false,
                             .mla = true});
    }
  }
  if (world >= 2) {
    for (CpAttention algo : {CpAttention::kTree, CpAttention::kRing})
      out.push_back(
          Layout{.dp = world / 2, .device_groups = device, .cp = 2, .algo = algo, .mla = true});
    out.push_back(Layout{
        .tp = 2, .dp = world / 2, .sp = true, .moe = true, .device_groups = false, .mla = true});
  }
  return out;
}

std::vector<CompressedLayout> compressed_layouts(int world, bool device) {
  std::vector<CompressedLayout> out = {
      {.ep = 1, .lsh = true, .device_groups = false},
      {.ep = 1, .capacity = true, .device_groups = false},
  };
  if (world % 2 == 0) {
    out.push_back({.ep = 2, .lsh = true, .device_groups = device});
    out.push_back({.ep = 2, .capacity = true, .device_groups = device});
  }
  if (world % 4 == 0)
    out.push_back({.ep = 4, .lsh = true, .capacity = true, .device_groups = false});
  return out;
}

void run_layout(const Env& env, const Layout& l) {
  comm::Communicator& world = *env.world;
  const ModelConfig c = l.mla   ? WithMla(l.moe ? MoeConfig() : TestConfig())
                        : l.moe ? MoeConfig()
                                : TestConfig();
  const int s = 8, b = 2, B = b * l.dp;
  SCOPED_TRACE(l.str());
  auto grid = parallel::ParallelGrid::create(
      env.grid_world(l.device_groups), parallel::GridShape{world.size(), l.tp, l.cp, l.ep, l.dp});
  ASSERT_TRUE(grid.ok()) << grid.status().message();
  const parallel::GridCoord& at = grid.value().coord();
  const ModelParallel par{&grid.value(), l.sp, l.algo};
  const double tol = l.cp > 1 ? kCpTol : kTol;
  const Status supported = Model::Supports(c, b, s, par);
  ASSERT_TRUE(supported.ok()) << supported.message();

  const testing::LayoutBatch g = GlobalBatch(c, s, B);
  Model ref(c, B, s, l.mode);
  const float ref_loss = ref.forward(g.tokens.data(), g.targets.data());
  ref.zero_grads();
  ref.backward();
  const Weights ref_grads = ToHost(ref.grads(), c);

  Model model(c, b, s, l.mode, par);
  const auto tokens = Columns(g.tokens, s, B, at.dp, b);
  const auto targets = Columns(g.targets, s, B, at.dp, b);
  const float loss = model.forward(tokens.data(), targets.data());
  model.zero_grads();
  model.backward();

  EXPECT_TRUE(testing::compare("loss", &loss, &ref_loss, 1, tol));
  if (l.moe) {
    const float ref_moe = ref.moe_loss(), got_moe = model.moe_loss();
    EXPECT_TRUE(testing::compare("moe aux+z loss", &got_moe, &ref_moe, 1, tol));
  }
  CompareGrads(model.grads(), Weights::Shard(ref_grads, c, l.tp, at.tp, l.ep, at.ep), tol, "");
}

CompressedResult run_compressed_layout(const Env& env, const CompressedLayout& l) {
  comm::Communicator& world = *env.world;
  CompressedResult r;
  r.config = CompressedMoeConfig(l.lsh, l.capacity);
  const ModelConfig& c = r.config;
  r.s = 8;
  r.b = 2;
  const int dp = world.size(), B = r.b * dp;
  SCOPED_TRACE(l.str());
  auto grid1 = parallel::ParallelGrid::create(env.grid_world(l.device_groups),
                                              parallel::GridShape{world.size(), 1, 1, 1, dp});
  auto grid = parallel::ParallelGrid::create(env.grid_world(l.device_groups),
                                             parallel::GridShape{world.size(), 1, 1, l.ep, dp});
  EXPECT_TRUE(grid1.ok() && grid.ok());
  if (!grid1.ok() || !grid.ok()) return r;
  const parallel::GridCoord& at = grid.value().coord();
  EXPECT_EQ(grid1.value().coord().dp, at.dp);
  const testing::LayoutBatch g = GlobalBatch(c, r.s, B);
  r.tokens = Columns(g.tokens, r.s, B, at.dp, r.b);
  r.targets = Columns(g.targets, r.s, B, at.dp, r.b);

  Model ref(c, r.b, r.s, Recompute::kSelective, ModelParallel{&grid1.value(), false});
  const float ref_loss = ref.forward(r.tokens.data(), r.targets.data());
  ref.zero_grads();
  ref.backward();
  const Weights ref_grads = ToHost(ref.grads(), c);

  Model model(c, r.b, r.s, Recompute::kSelective, ModelParallel{&grid.value(), false});
  r.loss = model.forward(r.tokens.data(), r.targets.data());
  model.zero_grads();
  model.backward();

  EXPECT_TRUE(testing::compare("loss (ep 1)", &r.loss, &ref_loss, 1, kCompressedTol));
  const float ref_moe = ref.moe_loss();
  r.moe_loss = model.moe_loss();
  EXPECT_TRUE(testing::compare("moe aux+z loss (ep 1)", &r.moe_loss, &ref_moe, 1, kCompressedTol));
  CompareGrads(model.grads(), Weights::Shard(ref_grads, c, 1, 0, l.ep, at.ep), kCompressedTol,
               " (ep 1)");
  for (const NamedTensor& t : model.grads().named()) {
    r.grad_names.push_back(t.name);
    r.grads.push_back(t.tensor.to(Device::kCPU));
  }
  r.metrics = model.moe_metrics();
  size_t m = 0;
  for (int layer = 0; layer < c.n_layers; ++layer) {
    if (!c.is_moe_layer(layer)) continue;
    r.experts_rows.push_back(model.moe_layer(layer)->experts_rows());
    // The LSH layer runs its experts on the centroids: fewer rows than the routed assignments.
    if (l.lsh) {
      EXPECT_LT(r.experts_rows.back(), int64_t(r.s) * r.b * c.moe.top_k)
          << "nothing was compressed";
    }
    // Something was dropped (capacity_factor 0.75 < 1 must drop).
    if (l.capacity && m < r.metrics.size()) {
      EXPECT_GT(r.metrics[m].dropped, 0) << "capacity_factor=0.75 must drop";
    }
    ++m;
  }
  return r;
}

}  // namespace grove::equivalence
