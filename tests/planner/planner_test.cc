// The planner library: cluster descriptions (JSON, validation, presets), the collective
// formulas against hand-computed values, the cost model's FLOP accounting, its monotonicity,
// memory limits in the search, the search's choice on constructed cases, and the calibration
// fits on synthetic measurements.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "planner/calibrate.h"
#include "planner/cluster.h"
#include "planner/collectives.h"
#include "planner/cost_model.h"
#include "planner/search.h"
#include "spec/train_config.h"

namespace grove::planner {
namespace {

std::string SourceDir() {
  const char* d = std::getenv("GROVE_SOURCE_DIR");
  return d ? d : ".";
}

// A node of 8 devices: 100 TFLOP/s fp32, 200 bf16, 80 GiB, 100 GB/s intra (1 us), 25 GB/s per
// device between nodes (5 us).
ClusterSpec TestCluster() {
  ClusterSpec c;
  c.name = "test";
  c.devices_per_node = 8;
  c.device.peak_fp32 = 100e12;
  c.device.peak_bf16 = 200e12;
  c.device.memory_bytes = 80.0 * (1 << 30);
  c.device.memory_bandwidth = 2e12;
  c.device.efficiency = {1.0, 0.0, 1.0, 1.0};
  c.intra = {100e9, 1e-6, 1.0};
  c.inter = {25e9, 5e-6, 1.0};
  c.overlap_collectives = true;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate().message();
  return c;
}

Workload DenseWorkload() {
  Workload w;
  w.model.vocab_size = 8192;
  w.model.d_model = 1024;
  w.model.n_layers = 8;
  w.model.n_heads = 16;
  w.model.max_seq_len = 2048;
  w.seq_len = 1024;
  w.precision = Precision::kBf16;
  return w;
}

Workload MoeWorkload() {
  Workload w = DenseWorkload();
  w.model.moe.num_experts = 16;
  w.model.moe.top_k = 2;
  w.model.moe.every = 1;
  return w;
}

// ---- cluster descriptions ------------------------------------------------------------------

TEST(Cluster, JsonRoundTripAndErrorsNameTheField) {
  const ClusterSpec c = TestCluster();
  auto back = ClusterFromJson(ClusterToJson(c));
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_DOUBLE_EQ(back.value().device.peak_bf16, c.device.peak_bf16);
  EXPECT_DOUBLE_EQ(back.value().inter.bandwidth, c.inter.bandwidth);
  EXPECT_DOUBLE_EQ(back.value().intra.latency, c.intra.latency);
  EXPECT_EQ(back.value().devices_per_node, 8);
  ClusterSpec shared = c;
  shared.intra.sync_latency = 0.018;
  auto synced = ClusterFromJson(ClusterToJson(shared));
  ASSERT_TRUE(synced.ok()) << synced.status().message();
  EXPECT_DOUBLE_EQ(synced.value().intra.sync_latency, 0.018);
  nlohmann::json neg = ClusterToJson(shared);
  neg["intra_node"]["sync_latency_us"] = -1;
  auto negative = ClusterFromJson(neg);
  ASSERT_FALSE(negative.ok());
  EXPECT_NE(negative.status().message().find("intra_node.sync_latency_us"), std::string::npos)
      << negative.status().message();

  nlohmann::json j = ClusterToJson(c);
  j["intra_node"]["bandwidth_gbps"] = -1;
  auto bad = ClusterFromJson(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("intra_node.bandwidth_gbps"), std::string::npos)
      << bad.status().message();

  j = ClusterToJson(c);
  j["device"]["peak_tflop"] = 1;  // typo
  bad = ClusterFromJson(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("device.peak_tflop"), std::string::npos);
  EXPECT_NE(bad.status().message().find("peak_tflops"), std::string::npos);  // the known keys

  j = ClusterToJson(c);
  j["device"]["efficiency"]["gemm_max"] = 1.5;
  bad = ClusterFromJson(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("device.efficiency.gemm_max"), std::string::npos);

  j = ClusterToJson(c);
  j["inter_node"]["topology"] = "torus";
  bad = ClusterFromJson(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("rails or none"), std::string::npos);

  j = ClusterToJson(c);
  j["devices_per_node"] = "8";
  bad = ClusterFromJson(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("devices_per_node must be an integer"), std::string::npos);
}

TEST(Cluster, PresetsLoad) {
  const std::string dir = SourceDir() + "/configs/clusters";
  int n = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    if (f.path().extension() != ".json") continue;
    auto c = LoadCluster(f.path().string());
    EXPECT_TRUE(c.ok()) << f.path() << ": " << c.status().message();
    ++n;
  }
  EXPECT_GE(n, 4);
  auto h100 = LoadClusterOrPreset("h100-sxm-ib400x8", dir);
  ASSERT_TRUE(h100.ok()) << h100.status().message();
  EXPECT_EQ(h100.value().devices_per_node, 8);
  EXPECT_NEAR(h100.value().device.peak_bf16, 989e12, 1e12);
  auto missing = LoadClusterOrPreset("no-such-cluster", dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("h100-sxm-ib400x8"), std::string::npos)
      << missing.status().message();
}

// The published runs of docs/planning.md, reproduced from configs/published at their layouts:
// predicted MFU within ±15% relative of the published figure (the criterion).
TEST(Published, MegatronRunsWithinFifteenPercentOfTheirMfu) {
  struct Run {
    const char* config;
    const char* cluster;
    int tp, ep, dp, pp, global_batch;
    bool shard_optimizer;
    double published_mfu;
  };
  const Run runs[] = {
      {"mtnlg-530b", "a100-80gb-ib200x8", 8, 1, 8, 35, 1920, false, 0.542},
      {"mtnlg-530b", "a100-80gb-ib200x8", 8, 1, 1, 35, 280, false, 0.560},
      {"gpt3-175b", "a100-80gb-ib200x8", 8, 1, 1, 8, 64, false, 0.514},
      {"gpt-1t", "a100-80gb-ib200x8", 8, 1, 1, 64, 512, false, 0.563},
      {"mixtral-8x7b", "h100-sxm-ib400x8", 1, 8, 16, 4, 256, true, 468.0 / 989.0},
  };
  for (const Run& r : runs) {
    auto config = LoadTrainConfig(SourceDir() + "/configs/published/" + r.config + ".json", {});
    ASSERT_TRUE(config.ok()) << r.config << ": " << config.status().message();
    auto cluster = LoadClusterOrPreset(r.cluster, SourceDir() + "/configs/clusters");
    ASSERT_TRUE(cluster.ok()) << cluster.status().message();
    Workload w;
    w.model = config.value().model;
    w.seq_len = config.value().train.seq_len;
    w.precision = Precision::kBf16;
    w.shard_optimizer = r.shard_optimizer;
    Layout l;
    l.tp = r.tp, l.ep = r.ep, l.dp = r.dp, l.pp = r.pp;
    l.recompute = Recompute::kSelective;
    l.micro_batch = 1;
    l.grad_accum = r.global_batch / r.dp;
    ASSERT_TRUE(CheckLayout(w, l, cluster.value()).ok())
        << r.config << ": " << CheckLayout(w, l, cluster.value()).message();
    const double mfu = Predict(w, l, cluster.value()).mfu;
    EXPECT_NEAR(mfu / r.published_mfu, 1.0, 0.15)
        << r.config << " on " << l.world() << ": predicted " << mfu << ", published "
        << r.published_mfu;
  }
}

// ---- collectives ---------------------------------------------------------------------------

TEST(Collectives, SpanFollowsRankOrder) {
  GroupSpan g = SpanOf(8, 1, 8);  // a TP group of 8 in one node
  EXPECT_EQ(g.per_node, 8);
  EXPECT_EQ(g.nodes(), 1);
  g = SpanOf(16, 1, 8);  // 16 consecutive ranks: two nodes
  EXPECT_EQ(g.per_node, 8);
  EXPECT_EQ(g.nodes(), 2);
  g = SpanOf(4, 8, 8);  // a DP group with tp = 8: one rank per node
  EXPECT_EQ(g.per_node, 1);
  EXPECT_EQ(g.nodes(), 4);
  g = SpanOf(8, 2, 8);  // stride 2: 4 per node
  EXPECT_EQ(g.per_node, 4);
  g = SpanOf(2, 2, 8);  // both inside one node
  EXPECT_EQ(g.per_node, 2);
}

TEST(Collectives, HandComputedFormulas) {
  const ClusterSpec c = TestCluster();
  const GroupSpan in_node{4, 4};
  // Ring: 2·3·1us + 2·3/4·1e9/100e9 = 6us + 15 ms; tree: 2·2·1us + 2·10 ms.
  EXPECT_NEAR(AllReduceTime(c, in_node, 1e9, AllReduceAlgo::kRing), 6e-6 + 0.015, 1e-12);
  EXPECT_NEAR(AllReduceTime(c, in_node, 1e9, AllReduceAlgo::kTree), 4e-6 + 0.020, 1e-12);
  EXPECT_NEAR(AllReduceTime(c, in_node, 1e9), 6e-6 + 0.015, 1e-12);       // ring wins, large
  EXPECT_NEAR(AllReduceTime(c, in_node, 8), 4e-6 + 16.0 / 100e9, 1e-12);  // tree wins, small
  // All-gather of 1 GB over 4: 3·1us + 3/4·10 ms.
  EXPECT_NEAR(AllGatherTime(c, in_node, 1e9), 3e-6 + 0.0075, 1e-12);
  EXPECT_NEAR(ReduceScatterTime(c, in_node, 1e9), 3e-6 + 0.0075, 1e-12);
  // Across nodes, one rank per node: the rank's own NIC (25 GB/s), inter latency 5 us.
  const GroupSpan rails{4, 1};
  EXPECT_NEAR(AllReduceTime(c, rails, 1e9, AllReduceAlgo::kRing), 6 * 5e-6 + 1.5 * 1e9 / 25e9,
              1e-12);
  // 8 per node over 2 nodes: 8 NICs (200 GB/s) > NVLink 100 GB/s: the intra link bounds.
  const GroupSpan two_nodes{16, 8};
  EXPECT_NEAR(AllReduceTime(c, two_nodes, 1e9, AllReduceAlgo::kRing),
              2 * 15 * 5e-6 + 2.0 * 15 / 16 * 1e9 / 100e9, 1e-12);
  // All-to-all, 16 ranks over 2 nodes: 7/16 of S inside the node, 8/16 through the NIC.
  EXPECT_NEAR(AllToAllTime(c, two_nodes, 1.6e9), 4 * 5e-6 + 0.8e9 / 25e9, 1e-12);
  EXPECT_NEAR(AllToAllTime(c, in_node, 1e9), 2 * 1e-6 + 0.75e9 / 100e9, 1e-12);
  EXPECT_EQ(AllReduceTime(c, GroupSpan{1, 1}, 1e9), 0.0);
  EXPECT_NEAR(PointToPointTime(c, true, 25e6), 5e-6 + 1e-3, 1e-12);
  // A time-shared node's sync latency is paid once per blocking call, whatever its steps.
  ClusterSpec shared = c;
  shared.intra.sync_latency = 0.02;
  EXPECT_NEAR(AllReduceTime(shared, in_node, 1e9), 0.02 + 6e-6 + 0.015, 1e-12);
  EXPECT_NEAR(AllReduceTime(shared, in_node, 8), 0.02 + 4e-6 + 16.0 / 100e9, 1e-12);
  EXPECT_NEAR(AllGatherTime(shared, in_node, 1e9), 0.02 + 3e-6 + 0.0075, 1e-12);
  EXPECT_NEAR(AllToAllTime(shared, in_node, 1e9), 0.02 + 2 * 1e-6 + 0.75e9 / 100e9, 1e-12);
  EXPECT_NEAR(PointToPointTime(shared, false, 1e8), 0.02 + 1e-6 + 1e-3, 1e-12);
  EXPECT_EQ(AllReduceTime(shared, GroupSpan{1, 1}, 1e9), 0.0);
}

// ---- the cost model --------------------------------------------------------------------------

// With GEMM efficiency 1 at every size, no latency, unbounded links and memory bandwidth, one
// rank's GEMM time is exactly the model's matmul FLOPs (6 per parameter per token, as
// ModelConfig::training_flops counts them) over the peak, and the attention time is the causal
// work: forward 2·S²·d per head, backward 2.5× (P re-formed), against the 12·S²·d of the MFU
// count.
TEST(CostModel, ComputeEqualsHandCountedFlops) {
  ClusterSpec c = TestCluster();
  c.device.memory_bandwidth = 1e30;
  Workload w = DenseWorkload();
  Layout l;
  l.micro_batch = 2;
  l.recompute = Recompute::kSelective;
  const Prediction p = Predict(w, l, c);
  const ModelConfig& m = w.model;
  const double b = 2, S = 1024, tokens = b * S;
  const double attn_dense = 3.0 * 4.0 * S * S * m.head_dim() * m.n_heads * b * m.n_layers;
  // training_flops counts 6 per norm weight per token as well; the model has no GEMM for them.
  const double norms = 6.0 * tokens * (2 * m.n_layers + 1) * m.d_model;
  const double matmul = m.training_flops(b, S) - attn_dense - norms;
  EXPECT_NEAR(p.part("gemm"), matmul / 200e12, 1e-9 * p.part("gemm"));
  EXPECT_NEAR(p.part("attention"), attn_dense * 7.0 / 12.0 / 200e12, 1e-9);
  EXPECT_LT(p.part("memory-bound"), 1e-9);
  EXPECT_EQ(p.part("recompute"), 0.0);
  // MFU = model FLOPs / (step · peak): here the step is the GEMMs and the attention only.
  EXPECT_NEAR(p.mfu, m.training_flops(b, S) / (p.step_s * 200e12), 1e-12);
  EXPECT_NEAR(p.tokens_per_s, tokens / p.step_s, 1e-6);

  // Full recompute re-runs each block's forward: a third of the blocks' GEMMs and the attention
  // forward (2·S²·d per head).
  l.recompute = Recompute::kFull;
  const Prediction f = Predict(w, l, c);
  const double head_matmul = 6.0 * tokens * m.d_model * m.vocab_size;
  const double attn_fwd = 2.0 * S * S * m.head_dim() * m.n_heads * b * m.n_layers;
  EXPECT_NEAR(f.part("recompute"), (matmul - head_matmul) / 3.0 / 200e12 + attn_fwd / 200e12,
              1e-9 * f.part("recompute"));
  // recompute = none keeps P: the attention backward is 2× the forward, not 2.5×.
  l.recompute = Recompute::kNone;
  const Prediction n = Predict(w, l, c);
  EXPECT_NEAR(n.part("attention"), attn_dense * 6.0 / 12.0 / 200e12, 1e-9);

  // GEMM efficiency below 1 at small sizes: every GEMM pays half/peak/gemm_max extra.
  c.device.efficiency.gemm_half_flops = 1e9;
  l.recompute = Recompute::kSelective;
  const Prediction slow = Predict(w, l, c);
  // Per block 7 GEMMs forward, 14 backward; the head 1 + 2.
  const double gemms = m.n_layers * 21 + 3;
  EXPECT_NEAR(slow.part("gemm") - p.part("gemm"), gemms * 1e9 / 200e12, 1e-12);
}

TEST(CostModel, TensorParallelCommunicationCounted) {
  ClusterSpec c = TestCluster();
  Workload w = DenseWorkload();
  Layout l;
  l.tp = 4;
  l.micro_batch = 1;
  const Prediction p = Predict(w, l, c);
  // Per block: forward 2 all-gathers + 2 reduce-scatters, backward 4 + 2, of [N, h] bf16; the
  // embedding RS, the head AG + 3 small all-reduces forward, RS backward, the embedding's AG.
  const double S = 1024 * 1024 * 2.0;  // N·h·2 bytes
  const GroupSpan g{4, 4};
  const double ag = AllGatherTime(c, g, S);
  const double per_block = 10 * ag;  // RS costs as much as AG
  const double head = ag + 3 * AllReduceTime(c, g, 1024 * 4.0) + ag + ag + ag;
  const double finals = 8 * 3 * AllReduceTime(c, g, 1024 * 4.0);
  EXPECT_NEAR(p.part("tp collectives"), 8 * per_block + head + finals, 1e-12);
}

TEST(CostModel, Monotonicity) {
  const ClusterSpec base = TestCluster();
  Workload w = MoeWorkload();
  Layout l;
  l.tp = 2, l.dp = 8, l.ep = 16, l.micro_batch = 2, l.grad_accum = 2;  // ep spans both nodes
  ASSERT_TRUE(CheckLayout(w, l, base).ok()) << CheckLayout(w, l, base).message();
  const Prediction p0 = Predict(w, l, base);

  ClusterSpec faster = base;
  faster.device.peak_bf16 *= 2;
  EXPECT_LT(Predict(w, l, faster).step_s, p0.step_s);

  ClusterSpec slow_net = base;
  slow_net.inter.bandwidth /= 4;
  const Prediction ps = Predict(w, l, slow_net);
  EXPECT_GT(ps.part("ep all-to-all"), p0.part("ep all-to-all"));
  EXPECT_GE(ps.step_s, p0.step_s);

  ClusterSpec slow_nvlink = base;
  slow_nvlink.intra.bandwidth /= 4;
  EXPECT_GT(Predict(w, l, slow_nvlink).part("tp collectives"), p0.part("tp collectives"));

  Workload lsh = w;
  lsh.lsh_ratio = 4;
  const Prediction pl = Predict(lsh, l, base);
  EXPECT_LT(pl.part("ep all-to-all"), p0.part("ep all-to-all"));
  EXPECT_LT(pl.step_s, p0.step_s);

  Layout full = l;
  full.recompute = Recompute::kFull;
  Layout none = l;
  none.recompute = Recompute::kNone;
  const Prediction pf = Predict(w, full, base), pn = Predict(w, none, base);
  EXPECT_GT(pf.step_s, p0.step_s);
  EXPECT_LT(pf.memory.activations, p0.memory.activations);
  EXPECT_LT(p0.memory.activations, pn.memory.activations);

  // More devices for the same global batch: less time per step.
  Layout wide = l;
  wide.dp = 16, wide.ep = 16, wide.grad_accum = 1;
  EXPECT_LT(Predict(w, wide, base).step_s, p0.step_s);

  // Overlap: exposed data-parallel time never exceeds the total; without background
  // progress it is the total.
  EXPECT_LE(p0.part("dp reduction"), p0.dp_reduction_total_s + 1e-15);
  ClusterSpec mpi = base;
  mpi.overlap_collectives = false;
  const Prediction pm = Predict(w, l, mpi);
  EXPECT_NEAR(pm.part("dp reduction"), pm.dp_reduction_total_s, 1e-15);
  EXPECT_GT(pm.dp_reduction_total_s, 0.0);
}

// AdamW reads and writes 38 bytes per local parameter (bf16); a sharded optimizer (distributed
// optimizer, FSDP) updates only its 1/(dp·cp) shard. The optimizer part is that memory pass plus
// the gradient norm's 8-byte all-reduce.
TEST(CostModel, ShardedOptimizerUpdatesItsShard) {
  const ClusterSpec c = TestCluster();
  Workload w = DenseWorkload();
  Layout l;
  l.dp = 4;
  l.cp = 2;
  const double params = PredictMemory(w, l).gradients / 4.0;
  const double norm = AllReduceTime(c, SpanOf(8, 1, 8), 8.0);
  const double bw = c.device.memory_bandwidth * c.device.efficiency.memory;
  EXPECT_NEAR(Predict(w, l, c).part("optimizer"), params * 38.0 / bw + norm, 1e-12);
  w.shard_optimizer = true;
  EXPECT_NEAR(Predict(w, l, c).part("optimizer"), params / 8.0 * 38.0 / bw + norm, 1e-12);
}

TEST(CostModel, LayoutChecksNameTheProblem) {
  const ClusterSpec c = TestCluster();
  Workload w = MoeWorkload();
  Layout l;
  l.tp = 3;
  EXPECT_NE(CheckLayout(w, l, c).message().find("n_heads"), std::string::npos);
  l.tp = 1, l.ep = 32, l.dp = 32;
  EXPECT_NE(CheckLayout(w, l, c).message().find("num_experts"), std::string::npos)
      << CheckLayout(w, l, c).message();
  l.ep = 1, l.dp = 1, l.tp = 2, l.sp = false;
  EXPECT_NE(CheckLayout(w, l, c).message().find("sequence parallelism"), std::string::npos);
  Workload dense = DenseWorkload();
  l = Layout{};
  l.ep = 2, l.dp = 2;
  EXPECT_NE(CheckLayout(dense, l, c).message().find("MoE"), std::string::npos);
  l = Layout{};
  l.cp = 3;
  EXPECT_NE(CheckLayout(dense, l, c).message().find("2·cp"), std::string::npos);
  l = Layout{};
  l.tp = 16;
  l.dp = 2;
  dense.model.n_heads = 16;
  dense.model.vocab_size = 8192;
  EXPECT_NE(CheckLayout(dense, l, c).message().find("devices per node"), std::string::npos)
      << CheckLayout(dense, l, c).message();
}

// ---- the search ----------------------------------------------------------------------------

SearchRequest Request(const Workload& w, int world) {
  SearchRequest r;
  r.workload = w;
  r.world = world;
  r.global_batch = 64;
  r.split = BatchSplit::kFree;
  r.max_results = 0;  // all
  return r;
}

TEST(Search, RanksEveryValidLayoutAndRespectsMemory) {
  const ClusterSpec c = TestCluster();
  SearchRequest r = Request(MoeWorkload(), 16);
  auto all = SearchLayouts(r, c);
  ASSERT_TRUE(all.ok()) << all.status().message();
  ASSERT_GT(all.value().ranked.size(), 10u);
  for (size_t i = 1; i < all.value().ranked.size(); ++i)
    EXPECT_LE(all.value().ranked[i - 1].step_s, all.value().ranked[i].step_s);
  // The first equals the minimum of an independent brute force over the same space.
  double best = 1e30;
  for (int tp : {1, 2, 4, 8, 16})
    for (int cp : {1, 2, 4, 8, 16})
      for (int ep : {1, 2, 4, 8, 16})
        for (int mb : {1, 2, 4, 8, 16, 32, 64})
          for (Recompute rc : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
            if (16 % (tp * cp) != 0) continue;
            Layout l;
            l.tp = tp, l.cp = cp, l.ep = ep, l.dp = 16 / (tp * cp), l.recompute = rc;
            l.micro_batch = mb;
            if (64 % (mb * l.dp) != 0) continue;
            l.grad_accum = 64 / (mb * l.dp);
            if (!CheckLayout(r.workload, l, c).ok()) continue;
            const Prediction p = Predict(r.workload, l, c);
            if (p.fits) best = std::min(best, p.step_s);
          }
  EXPECT_DOUBLE_EQ(all.value().ranked.front().step_s, best);

  // A tight memory limit: every result fits it, and fewer layouts qualify.
  const double limit = 0.5 * all.value().ranked.front().memory.total / kUsableMemoryFraction;
  r.memory_limit_bytes = limit;
  auto tight = SearchLayouts(r, c);
  ASSERT_TRUE(tight.ok()) << tight.status().message();
  EXPECT_GT(tight.value().rejected_memory, 0);
  for (const Prediction& p : tight.value().ranked)
    EXPECT_LE(p.memory.total, kUsableMemoryFraction * limit);
  EXPECT_GE(tight.value().ranked.front().step_s, all.value().ranked.front().step_s);

  r.memory_limit_bytes = 1e6;  // nothing fits: the error says what the smallest needs
  auto none = SearchLayouts(r, c);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("needs"), std::string::npos);
  EXPECT_NE(none.status().message().find("GiB"), std::string::npos);
}

TEST(Search, PicksTheAnalyticallyBestLayout) {
  Workload w = DenseWorkload();
  // (1) Links so slow that any communication dominates, memory plentiful: a fixed global
  // micro-batch of 16 over 4 devices is best split by dp (one gradient all-reduce) rather than
  // tp (4 collectives per block and micro-batch), and without recompute.
  ClusterSpec slow = TestCluster();
  slow.intra.bandwidth = 1e6;
  // (Without background progress: with it, a longer backward hides as much of the gradient
  // sum as it adds, and full recompute would tie and win on memory.)
  slow.overlap_collectives = false;
  SearchRequest r = Request(w, 4);
  r.split = BatchSplit::kFixedGlobalMicroBatch;
  r.global_micro_batch = 16;
  r.global_batch = 16;
  auto p = SearchLayouts(r, slow);
  ASSERT_TRUE(p.ok()) << p.status().message();
  const Layout& best = p.value().ranked.front().layout;
  EXPECT_EQ(best.tp, 1);
  EXPECT_EQ(best.cp, 1);
  EXPECT_EQ(best.dp, 4);
  EXPECT_NE(best.recompute, Recompute::kFull);

  // (2) MoE on 2 nodes of 8 with a slow fabric and many tokens per step: the expert
  // all-to-all stays inside a node (ep <= 8), and ep = 16, whose all-to-all crosses the fabric
  // four times per MoE layer and micro-batch, is slower (it saves only the experts' gradient
  // sum over edp, once per step).
  ClusterSpec fabric = TestCluster();
  fabric.inter.bandwidth = 1e9;
  Workload moe = MoeWorkload();
  SearchRequest rm = Request(moe, 16);
  rm.global_batch = 1024;
  rm.tp = 1, rm.cp = 1;
  rm.recompute = Recompute::kSelective;
  auto pm = SearchLayouts(rm, fabric);
  ASSERT_TRUE(pm.ok()) << pm.status().message();
  EXPECT_LE(pm.value().ranked.front().layout.ep, 8);
  Layout across = pm.value().ranked.front().layout;
  across.ep = 16;
  EXPECT_GT(Predict(moe, across, fabric).step_s, pm.value().ranked.front().step_s);

  // (3) Memory forces the choice: with room for none of the tp = 1 layouts, the fastest
  // fitting one has tp > 1 or full recompute.
  SearchRequest rt = Request(w, 8);
  rt.global_batch = 8;
  rt.split = BatchSplit::kFixedGlobalMicroBatch;
  rt.global_micro_batch = 8;
  ClusterSpec c = TestCluster();
  Layout tp1;
  tp1.dp = 8, tp1.micro_batch = 1, tp1.recompute = Recompute::kFull;
  rt.memory_limit_bytes = 0.9 * Predict(w, tp1, c).memory.total / kUsableMemoryFraction;
  auto pt = SearchLayouts(rt, c);
  ASSERT_TRUE(pt.ok()) << pt.status().message();
  EXPECT_GT(pt.value().ranked.front().layout.tp * pt.value().ranked.front().layout.cp, 1);
}

// ---- calibration ---------------------------------------------------------------------------

TEST(Calibration, FitsRecoverKnownParameters) {
  // GEMM samples drawn from time = (F + H) / P, P = 50 GFLOP/s, H = 0.2 GFLOP.
  std::vector<GemmSample> g;
  for (double f : {1e8, 4e8, 2e9, 1e10}) g.push_back({f, f / ((f + 2e8) / 50e9) / 1e9});
  auto fit = FitGemm(g);
  ASSERT_TRUE(fit.ok()) << fit.status().message();
  EXPECT_NEAR(fit.value().throughput, 50e9, 1e6);
  EXPECT_NEAR(fit.value().half_flops, 2e8, 1e4);

  // Collectives inside one node from alpha = 20 us and a node bandwidth of 8 GB/s shared by n.
  std::vector<CollectiveSample> cs;
  for (int n : {2, 4})
    for (double s : {4096.0, 65536.0, 1048576.0, 16777216.0}) {
      const double inv = n / 8e9;
      cs.push_back({"all_reduce", n, s, 2.0 * (n - 1) * 20e-6 + 2.0 * (n - 1) / n * s * inv});
      cs.push_back({"all_gather", n, s, (n - 1) * 20e-6 + (n - 1.0) / n * s * inv});
      cs.push_back(
          {"all_to_all_v", n, s, std::ceil(std::log2(n)) * 20e-6 + (n - 1.0) / n * s * inv});
    }
  auto link = FitSharedLink(cs);
  ASSERT_TRUE(link.ok()) << link.status().message();
  EXPECT_NEAR(link.value().latency, 20e-6, 1e-9);
  EXPECT_NEAR(link.value().node_bandwidth, 8e9, 1e5);

  // The calibrated cluster reproduces the measured step of its calibration layout.
  BenchSamples samples;
  samples.gemm = g;
  samples.collectives = cs;
  samples.attention = {{1e9, 0.1}};
  Workload w = MoeWorkload();
  w.precision = Precision::kFp32;
  w.model.d_model = 256;
  w.model.n_heads = 8;
  w.seq_len = 128;
  Layout l;
  l.micro_batch = 8;
  auto c = CalibrateCpuCluster(samples, w, l, 20.0, 2, 8, "cpu-test");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_NEAR(Predict(w, l, c.value()).step_s, 20.0, 1e-9);
  EXPECT_NEAR(c.value().device.efficiency.attention, 10e9 / c.value().device.peak_fp32, 1e-9);
  // An in-step collective latency replaces the fitted alpha; the 1-rank step is still reproduced
  // (one rank has no collectives).
  auto slow = CalibrateCpuCluster(samples, w, l, 20.0, 2, 8, "cpu-test", 0.02);
  ASSERT_TRUE(slow.ok()) << slow.status().message();
  EXPECT_NEAR(slow.value().intra.latency, 20e-6, 1e-9);
  EXPECT_NEAR(slow.value().intra.sync_latency, 0.02 - 20e-6, 1e-9);
  EXPECT_NEAR(Predict(w, l, slow.value()).step_s, 20.0, 1e-9);
  EXPECT_FALSE(CalibrateCpuCluster(samples, w, l, 20.0, 2, 8, "cpu-test", -1.0).ok());
  // A fractional compute capacity (concurrent GEMMs on 2 vCPUs summing to 1.14 of one alone):
  // 2 ranks each compute at 1.14 / 2 of the calibrated speed; 1 rank is not slowed.
  auto frac = CalibrateCpuCluster(samples, w, l, 20.0, 1.14, 8, "cpu-test");
  ASSERT_TRUE(frac.ok()) << frac.status().message();
  EXPECT_DOUBLE_EQ(frac.value().shared_cores, 1.14);
  EXPECT_NEAR(Predict(w, l, frac.value()).step_s, 20.0, 1e-9);
  EXPECT_DOUBLE_EQ(EffectiveCluster(frac.value(), 2).device.peak_fp32,
                   frac.value().device.peak_fp32 * 0.57);
  EXPECT_DOUBLE_EQ(EffectiveCluster(frac.value(), 1).device.peak_fp32,
                   frac.value().device.peak_fp32);
  auto back = ClusterFromJson(ClusterToJson(frac.value()));
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_DOUBLE_EQ(back.value().shared_cores, 1.14);
  EXPECT_FALSE(CalibrateCpuCluster(samples, w, l, 20.0, 0.0, 8, "cpu-test").ok());
  // A step shorter than the GEMMs alone cannot be explained: an error, not a negative bandwidth.
  EXPECT_FALSE(CalibrateCpuCluster(samples, w, l, 1e-6, 2, 8, "cpu-test").ok());

  // Benchmark lines parse; a broken one is named by its line number.
  auto parsed = ParseBenchLines(
      "{\"name\":\"sgemm\",\"config\":{\"M\":2,\"N\":3,\"K\":4},\"value\":1.5}\n"
      "not json\n"
      "{\"name\":\"comm/all_reduce\",\"config\":{\"np\":2,\"bytes\":1024},\"time_us\":3}\n");
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  ASSERT_EQ(parsed.value().gemm.size(), 1u);
  EXPECT_DOUBLE_EQ(parsed.value().gemm[0].flops, 48);
  ASSERT_EQ(parsed.value().collectives.size(), 1u);
  EXPECT_DOUBLE_EQ(parsed.value().collectives[0].seconds, 3e-6);
  auto broken = ParseBenchLines("{\"name\":\"sgemm\",\"config\":{\"M\":2}, \"value\":1}\n");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("line 1"), std::string::npos);
}

}  // namespace
}  // namespace grove::planner
