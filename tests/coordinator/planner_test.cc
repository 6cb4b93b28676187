// Layout planner: choices follow the memory formula, rejections name the field and the fix, and
// rank coordinates equal parallel/grid.h's.
#include "coordinator/planner.h"

#include <gtest/gtest.h>

#include "parallel/grid.h"
#include "planner/search.h"

namespace grove::coordinator {
namespace {

TrainConfig Demo() {
  TrainConfig c;
  c.model.vocab_size = 8192;
  c.model.d_model = 256;
  c.model.n_layers = 4;
  c.model.n_heads = 8;
  c.model.max_seq_len = 256;
  c.train.batch_size = 8;
  c.train.seq_len = 128;
  return c;
}

// Bytes per rank at (tp, dp, ep): the rank's micro-batch is train.batch_size / dp.
int64_t Bytes(const TrainConfig& c, int tp, Recompute r, int dp = 1, int ep = 1) {
  MemoryLayout l;
  l.batch = c.train.batch_size / dp;
  l.ep = ep;
  l.seq = c.train.seq_len;
  l.tp = tp;
  l.sp = tp > 1;
  l.recompute = r;
  return EstimateMemory(c.model, l).total;
}

double GiBFor(int64_t bytes) {
  return double(bytes) / kUsableMemoryFraction / (1 << 30) * 1.0001;
}

TEST(Planner, NoLimitKeepsConfiguredRecomputeAtTp1) {
  PlanRequest r;
  r.world_size = 4;
  auto p = PlanLayout(Demo(), r);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->tp, 1);
  EXPECT_EQ(p->dp, 4);
  EXPECT_EQ(p->recompute, Recompute::kSelective);
  EXPECT_EQ(p->memory.total, Bytes(Demo(), 1, Recompute::kSelective, 4));
}

TEST(Planner, PicksLeastRecomputeThatFitsThenWiderTp) {
  const TrainConfig c = Demo();
  PlanRequest r;
  r.world_size = 4;
  // Exactly enough for no recompute at tp=1.
  r.device_memory_gib = GiBFor(Bytes(c, 1, Recompute::kNone, 4));
  auto p = PlanLayout(c, r);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->tp, 1);
  EXPECT_EQ(p->recompute, Recompute::kNone);
  // Enough for selective at tp=1 but not for none.
  r.device_memory_gib = GiBFor(Bytes(c, 1, Recompute::kSelective, 4));
  ASSERT_LT(Bytes(c, 1, Recompute::kSelective, 4), Bytes(c, 1, Recompute::kNone, 4));
  p = PlanLayout(c, r);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->tp, 1);
  EXPECT_EQ(p->recompute, Recompute::kSelective);
  // Enough only for tp=2 with selective: TP before full recompute.
  const int64_t tp2 = Bytes(c, 2, Recompute::kSelective, 2);
  ASSERT_LT(tp2, Bytes(c, 1, Recompute::kFull, 4)) << "test premise: tp=2 beats full recompute";
  r.device_memory_gib = GiBFor(tp2);
  p = PlanLayout(c, r);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->tp, 2);
  EXPECT_EQ(p->dp, 2);
  EXPECT_TRUE(p->sp);
  EXPECT_LE(p->memory.total, int64_t(r.device_memory_gib * (1 << 30) * kUsableMemoryFraction));
}

TEST(Planner, RejectsWithNeedAndSuggestedTp) {
  const TrainConfig c = Demo();
  PlanRequest r;
  r.world_size = 1;
  r.recompute = "selective";
  r.device_memory_gib = GiBFor(Bytes(c, 4, Recompute::kSelective));
  auto p = PlanLayout(c, r);
  ASSERT_FALSE(p.ok());
  const std::string m = p.status().message();
  EXPECT_NE(
      m.find("needs " + FormatGiB(Bytes(c, 1, Recompute::kSelective)) + " per device at tp=1"),
      std::string::npos)
      << m;
  EXPECT_NE(m.find("try tp=4"), std::string::npos) << m;
}

// train.device=cuda plans like the CPU (the CUDA model runs tp + SP, cp and ep): when the model
// does not fit one GPU at tp=1, tensor parallelism widens; cp and ep are accepted.
TEST(Planner, GpuDevicePlansTensorContextAndExpertParallelism) {
  TrainConfig c = Demo();
  c.train.device = grove::Device::kCUDA;
  PlanRequest r;
  r.world_size = 4;
  r.recompute = "selective";
  r.device_memory_gib = GiBFor(Bytes(c, 4, Recompute::kSelective));  // fits only at tp=4
  auto q = PlanLayout(c, r);
  ASSERT_TRUE(q.ok()) << q.status().message();
  EXPECT_EQ(q->tp, 4);
  EXPECT_EQ(q->dp, 1);
  r.device_memory_gib = 0;
  r.tp = 2;
  r.cp = 2;
  auto t = PlanLayout(c, r);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->tp, 2);
  EXPECT_EQ(t->cp, 2);
}

TEST(Planner, RanksPerHostBoundTp) {
  const TrainConfig c = Demo();
  PlanRequest r;
  r.world_size = 8;
  r.ranks_per_host = 2;
  r.device_memory_gib = GiBFor(Bytes(c, 4, Recompute::kFull, 2));  // only tp>=4 would fit
  auto p = PlanLayout(c, r);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("ranks_per_host"), std::string::npos) << p.status().message();
}

TEST(Planner, FieldErrors) {
  const TrainConfig c = Demo();
  auto msg = [&](PlanRequest r) {
    auto p = PlanLayout(c, r);
    return p.ok() ? std::string("ok") : p.status().message();
  };
  PlanRequest r;
  r.world_size = 0;
  EXPECT_NE(msg(r).find("parallel.world_size"), std::string::npos);
  r.world_size = 4;
  r.tp = 3;
  EXPECT_NE(msg(r).find("parallel.tp=3"), std::string::npos) << msg(r);
  r.tp = 0;
  r.cp = 3;
  EXPECT_NE(msg(r).find("parallel.cp=3"), std::string::npos) << msg(r);
  r.cp = 0;
  r.ep = 3;
  EXPECT_NE(msg(r).find("parallel.ep=3"), std::string::npos) << msg(r);
  r.ep = 0;
  r.recompute = "some";
  EXPECT_NE(msg(r).find("parallel.recompute"), std::string::npos) << msg(r);
  r.recompute = "";
  r.tp = 2;
  r.dp = 4;
  EXPECT_NE(msg(r).find("!= world_size=4"), std::string::npos) << msg(r);
  TrainConfig odd = c;
  odd.model.n_heads = 4;
  odd.model.d_model = 256;
  PlanRequest t;
  t.world_size = 8;
  t.tp = 8;
  auto p = PlanLayout(odd, t);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("model.n_heads"), std::string::npos) << p.status().message();
}

// One memory model: the first-fit plan's bytes equal the cost model's PredictMemory at fp32 for
// the same layout, with the micro-batch split over dp, the experts over ep and the MoE layers'
// expert stash counted (the old estimate took the whole train.batch_size per rank, ignored ep
// and left the stash out).
TEST(Planner, FirstFitMemoryIsTheCostModelsPerRankMemory) {
  TrainConfig c = Demo();
  c.model.moe.num_experts = 4;
  c.model.moe.top_k = 2;
  c.model.moe.every = 2;
  for (int ep : {1, 2, 4}) {
    PlanRequest r;
    r.world_size = 4;
    r.tp = 1;
    r.cp = 1;
    r.ep = ep;
    r.recompute = "selective";
    auto p = PlanLayout(c, r);
    ASSERT_TRUE(p.ok()) << p.status().message();
    ASSERT_EQ(p->dp, 4);
    planner::Workload w;
    w.model = c.model;
    w.seq_len = c.train.seq_len;
    planner::Layout l;
    l.ep = ep;
    l.dp = 4;
    l.micro_batch = c.train.batch_size / 4;
    const planner::MemoryPerDevice want = planner::PredictMemory(w, l);
    EXPECT_EQ(double(p->memory.total), want.total) << "ep=" << ep;
    EXPECT_EQ(double(p->memory.activations), want.activations + want.moe_buffers) << "ep=" << ep;
    EXPECT_EQ(double(p->memory.parameters), want.parameters) << "ep=" << ep;
  }
  // The experts' share shrinks with ep; the micro-batch with dp.
  auto total = [&](int world, int ep) {
    PlanRequest r;
    r.world_size = world;
    r.tp = 1;
    r.cp = 1;
    r.ep = ep;
    r.recompute = "selective";
    auto p = PlanLayout(c, r);
    EXPECT_TRUE(p.ok()) << p.status().message();
    return p.ok() ? p->memory.total : 0;
  };
  EXPECT_LT(total(4, 4), total(4, 1));
  EXPECT_LT(total(4, 1), total(2, 1));
  // A dp that does not divide train.batch_size is refused, naming the field.
  PlanRequest odd;
  odd.world_size = 3;
  auto q = PlanLayout(c, odd);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("train.batch_size=8 is not a multiple of dp=3"),
            std::string::npos)
      << q.status().message();
}

TEST(Planner, CoordsMatchParallelGrid) {
  const TrainConfig c = Demo();
  PlanRequest r;
  r.world_size = 8;
  r.tp = 2;
  r.cp = 2;
  r.ep = 4;
  auto p = PlanLayout(c, r);
  ASSERT_TRUE(p.ok()) << p.status().message();
  parallel::GridShape shape{8, 2, 2, 4, 2};
  ASSERT_TRUE(parallel::validate(shape).ok());
  for (int rank = 0; rank < 8; ++rank) {
    const Coords got = RankCoords(p.value(), rank);
    const parallel::GridCoord want = parallel::grid_coord(shape, rank);
    EXPECT_EQ(got.tp, want.tp) << rank;
    EXPECT_EQ(got.cp, want.cp) << rank;
    EXPECT_EQ(got.dp, want.dp) << rank;
    EXPECT_EQ(got.ep, want.ep) << rank;
    EXPECT_EQ(got.edp, want.edp) << rank;
  }
}

// With a cluster description an open layout (ep included) is the cost model's fastest that
// fits, not the first that fits; fixed fields are kept; the memory limit holds.
TEST(Planner, ClusterPlansTheFastestLayoutByTheCostModel) {
  TrainConfig c = Demo();
  c.model.moe.num_experts = 4;
  c.model.moe.top_k = 2;
  c.model.moe.every = 2;
  planner::ClusterSpec cluster;
  cluster.name = "slow-links";
  cluster.devices_per_node = 4;
  cluster.device.peak_fp32 = 50e9;
  cluster.device.memory_bytes = 8.0 * (1 << 30);
  cluster.device.memory_bandwidth = 10e9;
  cluster.intra = {1e8, 50e-6, 1.0};  // 100 MB/s: communication dominates
  cluster.inter_topology = planner::InterTopology::kNone;
  cluster.max_nodes = 1;
  ASSERT_TRUE(cluster.Validate().ok()) << cluster.Validate().message();
  PlanRequest r;
  r.world_size = 4;
  r.cluster = &cluster;
  auto p = PlanLayout(c, r);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_GT(p->predicted_step_s, 0.0);
  EXPECT_NE(p->explanation.find("predicted step"), std::string::npos) << p->explanation;
  // The same search, independently: the plan is its first layout.
  planner::SearchRequest s;
  s.workload.model = c.model;
  s.workload.seq_len = c.train.seq_len;
  s.workload.precision = Precision::kFp32;
  s.world = 4;
  s.global_micro_batch = s.global_batch = c.train.batch_size;
  s.max_results = 0;
  auto all = planner::SearchLayouts(s, cluster);
  ASSERT_TRUE(all.ok()) << all.status().message();
  const planner::Layout& best = all.value().ranked.front().layout;
  EXPECT_EQ(p->tp, best.tp);
  EXPECT_EQ(p->cp, best.cp);
  EXPECT_EQ(p->ep, best.ep);
  EXPECT_EQ(p->dp, best.dp);
  EXPECT_EQ(p->recompute, best.recompute);
  EXPECT_DOUBLE_EQ(p->predicted_step_s, all.value().ranked.front().step_s);
  // ... and it is faster than what the first-fit planner picks for the same job.
  PlanRequest first_fit = r;
  first_fit.cluster = nullptr;
  auto ff = PlanLayout(c, first_fit);
  ASSERT_TRUE(ff.ok());
  planner::Layout ffl;
  ffl.tp = ff->tp, ffl.cp = ff->cp, ffl.ep = ff->ep, ffl.dp = ff->dp;
  ffl.recompute = ff->recompute;
  ffl.micro_batch = c.train.batch_size / ff->dp;
  EXPECT_LE(p->predicted_step_s, planner::Predict(s.workload, ffl, cluster).step_s);

  // Fixed fields are kept; a memory limit that nothing meets is refused naming the need.
  r.tp = 2;
  r.ep = 2;
  p = PlanLayout(c, r);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->tp, 2);
  EXPECT_EQ(p->ep, 2);
  r.device_memory_gib = 0.001;
  p = PlanLayout(c, r);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("needs"), std::string::npos) << p.status().message();
}

}  // namespace
}  // namespace grove::coordinator
