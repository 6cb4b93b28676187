// The LSH-compressed dispatcher under mpirun (np 1, 2, 4):
//  - every rank builds bit-identical rotations from the seed and hashes the same vector to the
//    same id, whatever batch it sits in;
//  - compressed EP = N equals compressed EP = 1 on the same tokens per rank (buckets are formed
//    per source rank and expert, so they do not depend on where the experts live): outputs,
//    aux/z, input gradients, router and expert gradients, and the compression itself; with
//    balanced, uneven, empty (T = 0) ranks, no tokens at all, and all tokens on one expert;
//  - with one token per bucket it equals the plain dispatcher at EP = N bit for bit, and its
//    count of the plain path's bytes equals what the plain dispatcher really sent;
//  - compressed bytes are what the centroid counts say.
//
// Why 1e-5 for EP = N vs EP = 1: the buckets and centroids are computed on the source rank in
// both layouts (identical bits); what differs is the order of the experts' row blocks in the
// weight-gradient GEMMs and the sum over ranks, ≈ 1e-7 relative, as in moe_mpi_test.cc.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <numeric>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "parallel/grid.h"
#include "parallel/lsh_dispatcher.h"
#include "parallel/moe_layer.h"
#include "tests/comm/mpi_test_env.h"
#include "tests/common/tensor_compare.h"
#include "tests/parallel_lsh/lsh_test_util.h"

namespace grove::parallel {
namespace {

using lsh_test::Clustered;
using lsh_test::Randn;
using lsh_test::UseLsh;

constexpr double kTol = 1e-5;

ParallelGrid MakeGrid(const GridShape& shape) {
  std::shared_ptr<comm::Communicator> w(test::mpi_session().world({std::chrono::seconds(20)}));
  StatusOr<ParallelGrid> g = ParallelGrid::create(w, shape);
  GROVE_CHECK(g.ok()) << g.status().message();
  return std::move(g).value();
}

std::vector<int> EpSizes() {
  std::vector<int> out;
  for (int ep = 1; ep <= test::world().size(); ++ep) {
    if (test::world().size() % ep == 0) out.push_back(ep);
  }
  return out;
}

LshOptions Lsh(int L, int r, int min_tokens = 4) {
  LshOptions c;
  c.enabled = true;
  c.num_hashes = L;
  c.rotation_dim = r;
  c.min_tokens = min_tokens;
  // The raw method (every code, raw rows, from the first step); tests of centring, target
  // compression and warm-up set those fields themselves.
  c.center = false;
  c.target_compression = 0;
  c.warmup_steps = 0;
  c.compensate = true;
  return c;
}

TEST(LshMpi, EveryRankHashesTheSameVectorToTheSameId) {
  comm::Communicator& w = test::world();
  const int W = w.size(), rank = w.rank(), h = 32, N = 200;
  for (const LshOptions& cfg : {Lsh(1, 16), Lsh(3, 8), Lsh(4, 32)}) {
    LshCompressor lsh(cfg, h);
    // Rotations: bit-identical everywhere.
    const std::vector<float>& rot = lsh.rotations();
    std::vector<float> rots(rot.size() * W);
    w.all_gather(rot.data(), rots.data(), int64_t(rot.size()), DType::kF32);
    for (int r = 0; r < W; ++r) {
      EXPECT_EQ(std::memcmp(rots.data() + r * rot.size(), rot.data(), rot.size() * 4), 0)
          << "rank " << r << "'s rotations";
    }
    // The same N vectors, hashed by each rank inside a rank-dependent batch: rank r puts them
    // after r·7 rows of its own noise, in rotated order.
    const std::vector<float> v = Randn(size_t(N) * h, 77);
    const int pad = rank * 7;
    std::vector<float> batch = Randn(size_t(N + pad) * h, 1000 + rank);
    for (int i = 0; i < N; ++i) {
      const int slot = pad + (i + rank * 13) % N;
      std::memcpy(batch.data() + size_t(slot) * h, v.data() + size_t(i) * h, sizeof(float) * h);
    }
    std::vector<uint64_t> ids(N + pad);
    lsh.hash(ids.data(), batch.data(), N + pad);
    std::vector<int64_t> mine(N), all(size_t(N) * W);
    for (int i = 0; i < N; ++i) mine[i] = int64_t(ids[pad + (i + rank * 13) % N]);
    w.all_gather(mine.data(), all.data(), N, DType::kI64);
    for (int r = 1; r < W; ++r) {
      for (int i = 0; i < N; ++i) ASSERT_EQ(all[size_t(r) * N + i], all[i]) << "rank " << r;
    }
  }
}

struct Case {
  MoeOptions cfg;
  LshOptions lsh = Lsh(1, 4);
  int h = 16, f = 24;
  bool zero_router = false;
  bool plain = false;  // the AllToAllDispatcher instead
};

struct Result {
  std::vector<float> out, din;
  float aux = 0, z = 0;
  std::vector<Tensor> grads;
  MoeMetrics m;
  LshMetrics lsh;
};

Result RunLayer(const Case& s, comm::Communicator* ep, comm::Communicator* stats, const float* x,
                const float* dout, int T) {
  MoeLayer layer(s.cfg, s.h, s.f, T, ep, stats);
  layer.init(11, 0.3, 0.2);
  if (s.zero_router) layer.params()[0].tensor.zero();
  LshDispatcher* d = s.plain ? nullptr : &UseLsh(layer, s.h, ep, s.lsh);
  Result r;
  r.out.assign(size_t(T) * s.h, 0.0f);
  for (int step = 0; step < 2; ++step) {
    r.din.assign(size_t(T) * s.h, 0.0f);
    layer.zero_grads();
    layer.forward(r.out.data(), x, T);
    layer.backward(r.din.data(), dout, 1.5f);
  }
  r.aux = layer.aux_loss();
  r.z = layer.z_loss();
  for (const NamedTensor& g : layer.grads()) r.grads.push_back(g.tensor.clone());
  r.m = layer.metrics();
  if (d) r.lsh = d->metrics();
  return r;
}

// This rank's T_of_rank[rank] tokens of one clustered global batch.
struct Tokens {
  std::vector<float> x, dout;
  int T = 0, off = 0;
};

Tokens MyTokens(const std::vector<int>& T_of_rank, int h) {
  const int rank = test::world().rank();
  const int Tg = std::accumulate(T_of_rank.begin(), T_of_rank.end(), 0);
  Tokens t;
  t.T = T_of_rank[rank];
  t.off = std::accumulate(T_of_rank.begin(), T_of_rank.begin() + rank, 0);
  const std::vector<float> x = Clustered(Tg, h, 5, 40, 3.0f, 0.2f), d = Randn(x.size(), 41);
  t.x.assign(x.begin() + size_t(t.off) * h, x.begin() + size_t(t.off + t.T) * h);
  t.dout.assign(d.begin() + size_t(t.off) * h, d.begin() + size_t(t.off + t.T) * h);
  return t;
}

// Compressed at every ep (dp = world, and tp = 2 folded grids) equals compressed at ep = 1.
// Returns the ep = 1 run's (assignments, centroids) summed over the world.
std::pair<int64_t, int64_t> ExpectEpEqualsEp1(const Case& s, const std::vector<int>& T_of_rank) {
  const int W = test::world().size();
  const Tokens tok = MyTokens(T_of_rank, s.h);
  const int64_t n = int64_t(tok.T) * s.h;
  ParallelGrid g1 = MakeGrid(GridShape{W, 1, 1, 1, W});
  Result ref = RunLayer(s, &g1.ep(), &g1.world(), tok.x.data(), tok.dout.data(), tok.T);
  for (int i = 0; i < 4; ++i) g1.world().all_reduce(ref.grads[i], comm::ReduceOp::kSum);
  EXPECT_EQ(ref.lsh.bytes_sent, 0);
  std::vector<GridShape> shapes;
  for (int ep : EpSizes()) shapes.push_back({W, 1, 1, ep, W});
  if (W % 2 == 0) {
    for (int ep : EpSizes()) shapes.push_back({W, 2, 1, ep, W / 2});
  }
  for (const GridShape& shape : shapes) {
    SCOPED_TRACE(shape.str());
    ParallelGrid grid = MakeGrid(shape);
    Result par = RunLayer(s, &grid.ep(), &grid.world(), tok.x.data(), tok.dout.data(), tok.T);
    EXPECT_TRUE(testing::compare("out", par.out.data(), ref.out.data(), n, kTol));
    EXPECT_TRUE(testing::compare("din", par.din.data(), ref.din.data(), n, kTol));
    EXPECT_TRUE(testing::compare("aux", &par.aux, &ref.aux, 1, kTol));
    EXPECT_TRUE(testing::compare("z", &par.z, &ref.z, 1, kTol));
    grid.world().all_reduce(par.grads[0], comm::ReduceOp::kSum);
    EXPECT_TRUE(testing::compare("grad.router", par.grads[0].data<float>(),
                                 ref.grads[0].data<float>(), ref.grads[0].numel(), kTol));
    const char* names[] = {"", "grad.experts.w_gate", "grad.experts.w_up", "grad.experts.w_down"};
    for (int i = 1; i < 4; ++i) {
      grid.edp().all_reduce(par.grads[i], comm::ReduceOp::kSum);
      const Tensor want = MoeLayer::slice_experts(ref.grads[i], shape.ep, grid.coord().ep);
      EXPECT_TRUE(testing::compare(names[i], par.grads[i].data<float>(), want.data<float>(),
                                   want.numel(), kTol));
    }
    EXPECT_EQ(par.lsh.assignments, ref.lsh.assignments);
    EXPECT_EQ(par.lsh.centroids, ref.lsh.centroids);
    EXPECT_EQ(par.lsh.residual_norm_sum, ref.lsh.residual_norm_sum);
    if (shape.ep == 1) {
      EXPECT_EQ(par.lsh.bytes_sent, 0);
    }
  }
  int64_t v[2] = {ref.lsh.assignments, ref.lsh.centroids};
  test::world().all_reduce(v, 2, DType::kI64, comm::ReduceOp::kSum);
  return {v[0], v[1]};
}

Case Config(int E, int k) {
  Case s;
  s.cfg.num_experts = E;
  s.cfg.top_k = k;
  s.cfg.aux_loss_coef = 0.1f;
  s.cfg.z_loss_coef = 0.05f;
  return s;
}

std::vector<int> Pattern(std::initializer_list<int> pattern) {
  std::vector<int> p(pattern), out;
  for (int r = 0; r < test::world().size(); ++r) out.push_back(p[r % p.size()]);
  return out;
}

TEST(LshMpi, CompressedEpNEqualsCompressedEp1) {
  Case s = Config(8, 2);
  auto [a1, c1] = ExpectEpEqualsEp1(s, Pattern({48}));
  EXPECT_GT(a1, 2 * c1);  // the buckets do merge tokens
  s.lsh = Lsh(2, 8, 3);
  auto [a2, c2] = ExpectEpEqualsEp1(s, Pattern({64}));
  EXPECT_GT(a2, c2);
  // The centred hash with a target compression, no x − c compensation, and one warm-up pass
  // (RunLayer's first step is uncompressed, the compared second step compressed).
  s.lsh = Lsh(4, 8, 3);
  s.lsh.center = true;
  s.lsh.target_compression = 3;
  s.lsh.compensate = false;
  s.lsh.warmup_steps = 1;
  auto [a3, c3] = ExpectEpEqualsEp1(s, Pattern({64}));
  EXPECT_GT(a3, 2 * c3);  // groups of ~16 rows: the target is reached where l = 1 allows
}

TEST(LshMpi, UnevenEmptyAndSilentRanksDoNotHang) {
  ExpectEpEqualsEp1(Config(8, 2), Pattern({37, 0, 61, 9}));
  std::vector<int> only0(test::world().size(), 0);
  only0[0] = 50;
  ExpectEpEqualsEp1(Config(4, 1), only0);
  ExpectEpEqualsEp1(Config(8, 2), std::vector<int>(test::world().size(), 0));
}

TEST(LshMpi, AllTokensToOneExpertDoNotHang) {
  for (int k : {1, 2}) {
    Case s = Config(4, k);
    s.zero_router = true;
    ExpectEpEqualsEp1(s, Pattern({33, 12, 0, 40}));
  }
}

// min_tokens above every group: one token per bucket, bit-identical to the plain dispatcher at
// ep = world; bytes_uncompressed is what the plain dispatcher sent, and the compressed path sends
// the same rows plus the token counts (E_l more int64 per peer).
TEST(LshMpi, OneTokenPerBucketEqualsPlainAtEpN) {
  const int W = test::world().size();
  Case s = Config(8, 2);
  s.lsh.min_tokens = 1 << 30;
  const Tokens tok = MyTokens(Pattern({30, 7, 0, 21}), s.h);
  ParallelGrid grid = MakeGrid(GridShape{W, 1, 1, W, W});
  Case p = s;
  p.plain = true;
  const Result plain = RunLayer(p, &grid.ep(), &grid.world(), tok.x.data(), tok.dout.data(), tok.T);
  const Result lsh = RunLayer(s, &grid.ep(), &grid.world(), tok.x.data(), tok.dout.data(), tok.T);
  EXPECT_EQ(lsh.out, plain.out);
  EXPECT_EQ(lsh.din, plain.din);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(std::memcmp(lsh.grads[i].raw(), plain.grads[i].raw(), plain.grads[i].bytes()), 0);
  EXPECT_EQ(lsh.lsh.bytes_uncompressed, plain.m.a2a_bytes_sent);
  EXPECT_EQ(lsh.lsh.bytes_sent, lsh.m.a2a_bytes_sent);
  EXPECT_EQ(lsh.lsh.bytes_sent - plain.m.a2a_bytes_sent, int64_t(8) * (8 / W) * (W - 1));
}

// Bytes of the compressed path follow from the centroid counts: each centroid row crossing to
// another rank is sent twice forward and twice backward; summed over the ep group, that is
// 4·h·4 bytes per centroid not on its own rank, plus the counts.
TEST(LshMpi, CompressedBytesFollowTheCentroidCounts) {
  const int W = test::world().size();
  if (W == 1) GTEST_SKIP() << "no all-to-all with one rank";
  Case s = Config(W, 1);  // one expert per rank
  s.zero_router = true;   // every token to expert 0, on rank 0
  const Tokens tok = MyTokens(Pattern({40}), s.h);
  ParallelGrid grid = MakeGrid(GridShape{W, 1, 1, W, W});
  const Result r = RunLayer(s, &grid.ep(), &grid.world(), tok.x.data(), tok.dout.data(), tok.T);
  std::vector<int64_t> v = {r.lsh.bytes_sent, r.lsh.bytes_uncompressed,
                            grid.ep().rank() == 0 ? 0 : r.lsh.centroids,
                            grid.ep().rank() == 0 ? 0 : r.lsh.assignments};
  grid.world().all_reduce(v.data(), 4, DType::kI64, comm::ReduceOp::kSum);
  const int64_t counts = int64_t(W) * (W - 1) * 16, plain_counts = int64_t(W) * (W - 1) * 8;
  EXPECT_EQ(v[0], counts + 4 * 4 * s.h * v[2]);
  EXPECT_EQ(v[1], plain_counts + 4 * 4 * s.h * v[3]);
  EXPECT_GT(v[3], 2 * v[2]);  // clustered tokens do compress
}

}  // namespace
}  // namespace grove::parallel
