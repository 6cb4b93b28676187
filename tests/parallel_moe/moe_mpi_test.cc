// Expert parallelism under mpirun (np 1, 2, 4): for every ep dividing the world (the rest of the
// ranks form edp), the layer on tokens split over the ranks equals the single-rank layer on all
// the tokens from the same seed — outputs, aux and z losses, input gradients, router gradients
// (summed over the stats group) and each expert's gradients (summed over edp) — with balanced,
// uneven, empty (T = 0) and fully skewed routing; the dispatcher's permute → unpermute is the
// identity; capacity dropping equals the per-rank single-EP layer and is counted.
//
// Why 1e-5 (fp32): every token row goes through the same fp32 operations in both layouts, and
// within an expert the rows keep the single-rank order; what differs is the summation order of
// the weight gradients (GEMMs over row blocks of other sizes, then a sum over ranks) and of the
// stats all_reduce — about 1e-7 relative. A lost or duplicated row, a wrong scale or a missing
// reduction is O(1e-2..1).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "parallel/grid.h"
#include "parallel/moe_layer.h"
#include "tests/comm/mpi_test_env.h"
#include "tests/common/tensor_compare.h"

namespace grove::parallel {
namespace {

constexpr double kTol = 1e-5;

std::vector<float> Randn(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = float(rng.normal());
  return v;
}

ParallelGrid MakeGrid(const GridShape& shape) {
  std::shared_ptr<comm::Communicator> w(test::mpi_session().world({std::chrono::seconds(20)}));
  StatusOr<ParallelGrid> g = ParallelGrid::create(w, shape);
  GROVE_CHECK(g.ok()) << g.status().message();
  return std::move(g).value();
}

// Grids of world = dp (tp = cp = 1) with the given ep; stats group = dp = world.
ParallelGrid MakeGrid(int ep) {
  const int W = test::world().size();
  return MakeGrid(GridShape{W, 1, 1, ep, W});
}

std::vector<int> EpSizes() {
  std::vector<int> out;
  for (int ep = 1; ep <= test::world().size(); ++ep) {
    if (test::world().size() % ep == 0) out.push_back(ep);
  }
  return out;
}

struct Case {
  MoeOptions cfg;
  int h = 16, f = 24;
  uint64_t seed = 11;
  bool zero_router = false;  // all logits equal: every token picks experts 0..k-1
  float loss_scale = 1.5f;
};

struct Result {
  std::vector<float> out, din;
  float aux = 0, z = 0;
  std::vector<Tensor> grads;  // router, w_gate, w_up, w_down
  MoeMetrics m;
};

// Two steps (zero_grads between) so that buffer reuse across steps is exercised; returns step 2.
Result RunLayer(const Case& s, comm::Communicator* ep, comm::Communicator* stats, const float* x,
                const float* dout, int T) {
  MoeLayer layer(s.cfg, s.h, s.f, T, ep, stats);
  layer.init(s.seed, 0.3, 0.2);
  if (s.zero_router) layer.params()[0].tensor.zero();
  Result r;
  r.out.assign(size_t(T) * s.h, 0.0f);
  for (int step = 0; step < 2; ++step) {
    r.din.assign(size_t(T) * s.h, 0.0f);
    layer.zero_grads();
    const float total = layer.forward(r.out.data(), x, T);
    layer.backward(r.din.data(), dout, s.loss_scale);
    EXPECT_EQ(total, layer.aux_loss() + layer.z_loss());
  }
  r.aux = layer.aux_loss();
  r.z = layer.z_loss();
  for (const NamedTensor& g : layer.grads()) r.grads.push_back(g.tensor.clone());
  r.m = layer.metrics();
  return r;
}

void SumOver(comm::Communicator& c, Tensor& t) {
  c.all_reduce(t, comm::ReduceOp::kSum);
}

// The layer on this rank's T_of_rank[rank] tokens at every ep equals the single-rank layer on all
// the tokens.
void ExpectEpEqualsSingle(const Case& s, const std::vector<int>& T_of_rank) {
  const int W = test::world().size(), rank = test::world().rank();
  ASSERT_EQ(int(T_of_rank.size()), W);
  const int Tg = std::accumulate(T_of_rank.begin(), T_of_rank.end(), 0);
  const int off = std::accumulate(T_of_rank.begin(), T_of_rank.begin() + rank, 0);
  const int T = T_of_rank[rank];
  const std::vector<float> x = Randn(size_t(Tg) * s.h, 100), dout = Randn(x.size(), 200);
  const Result ref = RunLayer(s, nullptr, nullptr, x.data(), dout.data(), Tg);
  const float* xl = x.data() + size_t(off) * s.h;
  const float* dl = dout.data() + size_t(off) * s.h;
  const int64_t n = int64_t(T) * s.h;
  // Every ep with dp = world, and with tp = 2 (sequence-parallel tokens: distinct on every rank,
  // so the stats group and the router reduction are the whole world; the expert grid folds
  // over tp and dp).
  std::vector<GridShape> shapes;
  for (int ep : EpSizes()) shapes.push_back({W, 1, 1, ep, W});
  if (W % 2 == 0) {
    for (int ep : EpSizes()) shapes.push_back({W, 2, 1, ep, W / 2});
  }
  for (const GridShape& shape : shapes) {
    SCOPED_TRACE(shape.str());
    const int ep = shape.ep;
    ParallelGrid grid = MakeGrid(shape);
    Result par = RunLayer(s, &grid.ep(), &grid.world(), xl, dl, T);
    EXPECT_TRUE(testing::compare("out", par.out.data(), ref.out.data() + off * s.h, n, kTol));
    EXPECT_TRUE(testing::compare("din", par.din.data(), ref.din.data() + off * s.h, n, kTol));
    EXPECT_TRUE(testing::compare("aux", &par.aux, &ref.aux, 1, kTol));
    EXPECT_TRUE(testing::compare("z", &par.z, &ref.z, 1, kTol));
    SumOver(grid.world(), par.grads[0]);
    EXPECT_TRUE(testing::compare("grad.router", par.grads[0].data<float>(),
                                 ref.grads[0].data<float>(), ref.grads[0].numel(), kTol));
    const char* names[] = {"", "grad.experts.w_gate", "grad.experts.w_up", "grad.experts.w_down"};
    for (int i = 1; i < 4; ++i) {
      SumOver(grid.edp(), par.grads[i]);
      const Tensor want = MoeLayer::slice_experts(ref.grads[i], ep, grid.coord().ep);
      EXPECT_TRUE(testing::compare(names[i], par.grads[i].data<float>(), want.data<float>(),
                                   want.numel(), kTol));
    }
    EXPECT_EQ(par.m.tokens, Tg);
    EXPECT_EQ(par.m.tokens_per_expert, ref.m.tokens_per_expert);
    EXPECT_EQ(par.m.dropped, 0);
    if (ep == 1) {
      EXPECT_EQ(par.m.a2a_bytes_sent, 0);
    }
  }
}

Case Config(int E, int k) {
  Case s;
  s.cfg.num_experts = E;
  s.cfg.top_k = k;
  s.cfg.aux_loss_coef = 0.1f;  // raised so the aux/z gradients are a visible part of the router's
  s.cfg.z_loss_coef = 0.05f;
  return s;
}

std::vector<int> Tokens(std::initializer_list<int> pattern) {
  std::vector<int> p(pattern), out;
  for (int r = 0; r < test::world().size(); ++r) out.push_back(p[r % p.size()]);
  return out;
}

TEST(MoeEp, BalancedEqualsSingleRank) {
  ExpectEpEqualsSingle(Config(8, 2), Tokens({20}));
}

TEST(MoeEp, UnevenAndEmptyRanksEqualSingleRank) {
  // Rank 1 (and 5, ...) has no tokens at all; the others differ.
  ExpectEpEqualsSingle(Config(8, 2), Tokens({13, 0, 29, 7}));
  // Only rank 0 has tokens.
  std::vector<int> only0(test::world().size(), 0);
  only0[0] = 23;
  ExpectEpEqualsSingle(Config(4, 1), only0);
}

TEST(MoeEp, NoTokensAnywhere) {
  const std::vector<int> none(test::world().size(), 0);
  ExpectEpEqualsSingle(Config(8, 2), none);
  for (int ep : EpSizes()) {
    ParallelGrid grid = MakeGrid(ep);
    Result r = RunLayer(Config(8, 2), &grid.ep(), &grid.dp(), nullptr, nullptr, 0);
    EXPECT_EQ(r.aux, 0.0f);
    EXPECT_EQ(r.z, 0.0f);
    EXPECT_EQ(r.m.tokens, 0);
  }
}

TEST(MoeEp, ForcedSkewAllTokensToOneExpert) {
  // Zero router: all logits tie, the lower ids win, so every token goes to expert 0 (k = 1) or
  // to experts 0 and 1 (k = 2), all on ep rank 0; every other expert and ep rank gets nothing.
  for (int k : {1, 2}) {
    Case s = Config(4, k);
    s.zero_router = true;
    const std::vector<int> T = Tokens({17, 9, 0, 25});
    ExpectEpEqualsSingle(s, T);
    ParallelGrid grid = MakeGrid(test::world().size());
    const int rank = test::world().rank();
    const std::vector<float> x = Randn(size_t(T[rank]) * s.h, 7 + rank);
    Result r = RunLayer(s, &grid.ep(), &grid.dp(), x.data(), x.data(), T[rank]);
    const int64_t Tg = std::accumulate(T.begin(), T.end(), int64_t{0});
    std::vector<int64_t> want(4, 0);
    for (int j = 0; j < k; ++j) want[j] = Tg;
    EXPECT_EQ(r.m.tokens_per_expert, want);
    // Uniform probabilities: f_i·P_i = (1/k)(1/E) for the k chosen → aux = α; lse = log E.
    EXPECT_NEAR(r.aux, s.cfg.aux_loss_coef, 1e-6);
    EXPECT_NEAR(r.z, s.cfg.z_loss_coef * std::log(4.0) * std::log(4.0), 1e-6);
  }
}

// Capacity is decided on each source rank from its own tokens, so the reference is the same
// layer without expert parallelism on this rank's tokens (stats still over the whole group).
TEST(MoeEp, CapacityDropsAreCountedAndMatchPerRankLayer) {
  Case s = Config(4, 2);
  s.cfg.capacity_factor = 0.75f;
  const int W = test::world().size(), rank = test::world().rank();
  const std::vector<int> Ts = Tokens({24, 16, 0, 31});
  const int T = Ts[rank];
  const std::vector<float> x = Randn(size_t(T) * s.h, 300 + rank),
                           dout = Randn(x.size(), 400 + rank);
  for (int ep : EpSizes()) {
    SCOPED_TRACE("ep=" + std::to_string(ep) + " of world " + std::to_string(W));
    ParallelGrid grid = MakeGrid(ep);
    Result ref = RunLayer(s, nullptr, &grid.dp(), x.data(), dout.data(), T);
    Result par = RunLayer(s, &grid.ep(), &grid.dp(), x.data(), dout.data(), T);
    const int64_t n = int64_t(T) * s.h;
    EXPECT_TRUE(testing::compare("out", par.out.data(), ref.out.data(), n, kTol));
    EXPECT_TRUE(testing::compare("din", par.din.data(), ref.din.data(), n, kTol));
    EXPECT_TRUE(testing::compare("aux", &par.aux, &ref.aux, 1, kTol));
    for (int i = 0; i < 4; ++i) {
      SumOver(grid.dp(), ref.grads[i]);
      SumOver(i == 0 ? grid.dp() : grid.edp(), par.grads[i]);
      const Tensor want =
          i == 0 ? ref.grads[0] : MoeLayer::slice_experts(ref.grads[i], ep, grid.coord().ep);
      EXPECT_TRUE(testing::compare("grad " + std::to_string(i), par.grads[i].data<float>(),
                                   want.data<float>(), want.numel(), kTol));
    }
    EXPECT_GT(par.m.dropped, 0);
    EXPECT_EQ(par.m.dropped, ref.m.dropped);
    EXPECT_EQ(par.m.dropped_per_expert, ref.m.dropped_per_expert);
    // Kept assignments per expert never exceed the sum of the per-rank capacities.
    int64_t cap = 0;
    for (int t : Ts) cap += int64_t(std::ceil(0.75 * t * 2 / 4));
    for (int e = 0; e < 4; ++e) {
      EXPECT_LE(par.m.tokens_per_expert[e] - par.m.dropped_per_expert[e], cap) << "expert " << e;
    }
  }
}

// The dispatcher alone with identity experts: out = Σ_j w_j·x = x for weights summing to one,
// and din = dout in the backward; each expert receives exactly the rows routed to it, in (source
// rank, token) order; the counted bytes are the rows that left this rank.
TEST(MoeDispatcher, PermuteUnpermuteIsIdentity) {
  const int rank = test::world().rank(), E = 8, h = 5;
  for (int k : {1, 2}) {
    const std::vector<int> Ts = Tokens({11, 0, 6, 19});
    const int Tg = std::accumulate(Ts.begin(), Ts.end(), 0);
    // Global routing from one seed: distinct random experts; slot 1 of every 3rd token dropped.
    std::vector<int32_t> expert(size_t(Tg) * k);
    Rng rng(77 + k);
    for (int g = 0; g < Tg; ++g) {
      expert[g * k] = int32_t(rng.next_u64() % E);
      if (k == 2) expert[g * k + 1] = (expert[g * k] + 1 + int32_t(rng.next_u64() % (E - 1))) % E;
    }
    auto kept = [&](int g, int j) { return !(j == 1 && g % 3 == 0); };
    for (int ep : EpSizes()) {
      SCOPED_TRACE("k=" + std::to_string(k) + " ep=" + std::to_string(ep));
      ParallelGrid grid = MakeGrid(ep);
      const int off = std::accumulate(Ts.begin(), Ts.begin() + rank, 0), T = Ts[rank];
      Routing r;
      r.T = T;
      r.k = k;
      std::vector<float> x(size_t(T) * h);
      for (int t = 0; t < T; ++t) {
        for (int c = 0; c < h; ++c) x[t * h + c] = float((off + t) * 1000 + c);
        for (int j = 0; j < k; ++j) {
          r.expert.push_back(expert[(off + t) * k + j]);
          r.weight.push_back(1.0f / k);
          r.kept.push_back(kept(off + t, j));
        }
      }
      AllToAllDispatcher d(E, h, &grid.ep());
      d.preprocess(r, x.data());
      const ExpertBatch b = d.dispatch(x.data());
      // Expected rows per local expert: tokens of this ep group's ranks, in global order.
      const int E_l = E / ep, ep_rank = grid.coord().ep;
      int64_t bytes = ep > 1 ? int64_t(sizeof(int64_t)) * E_l * (ep - 1) : 0;
      for (int l = 0; l < E_l; ++l) {
        std::vector<int> want;
        for (int wr : grid.ep().info().world_ranks) {
          const int o = std::accumulate(Ts.begin(), Ts.begin() + wr, 0);
          for (int g = o; g < o + Ts[wr]; ++g) {
            for (int j = 0; j < k; ++j) {
              if (kept(g, j) && expert[g * k + j] == ep_rank * E_l + l) want.push_back(g);
            }
          }
        }
        std::vector<int> got;
        for (int64_t i = b.offset[l]; i < b.offset[l + 1]; ++i)
          got.push_back(int(b.x[i * h] / 1000));
        EXPECT_EQ(got, want) << "local expert " << l;
      }
      for (int t = 0; t < T; ++t) {
        for (int j = 0; j < k; ++j) {
          const int e = expert[(off + t) * k + j];
          if (kept(off + t, j) && e / E_l != ep_rank) bytes += int64_t(sizeof(float)) * h;
        }
      }
      EXPECT_EQ(d.stats().bytes_sent, bytes);

      std::vector<float> y(b.x, b.x + b.rows * h), out(x.size(), -1.0f);
      d.combine(out.data(), y.data());
      std::vector<float> want = x;
      for (int t = 0; t < T; ++t) {
        if (k == 2 && !kept(off + t, 1)) {
          for (int c = 0; c < h; ++c) want[t * h + c] *= 0.5f;
        }
      }
      EXPECT_TRUE(testing::compare("out", out.data(), want.data(), int64_t(x.size()), 0.0));
      std::vector<float> dy(b.rows * h), dw(size_t(T) * k), din(x.size(), 0.0f);
      d.combine_backward(dy.data(), dw.data(), x.data());
      d.dispatch_backward(din.data(), dy.data());
      EXPECT_TRUE(testing::compare("din", din.data(), want.data(), int64_t(x.size()), 0.0));
      for (int t = 0; t < T; ++t) {
        double sq = 0;
        for (int c = 0; c < h; ++c) sq += double(x[t * h + c]) * x[t * h + c];
        for (int j = 0; j < k; ++j) {
          const double w = kept(off + t, j) ? sq : 0.0;
          EXPECT_NEAR(dw[t * k + j], w, 1e-6 * sq) << "token " << off + t << " slot " << j;
        }
      }
    }
  }
}

}  // namespace
}  // namespace grove::parallel
