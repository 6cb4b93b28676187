// Tree and ring attention over the CP group against single-device attention, under mpirun.
//
// Every rank builds the same full q, k, v, dout [S, B, H, D] from a fixed seed, computes the
// single-device reference with the attention kernel, takes its zigzag shard and checks the
// context-parallel result (out, lse, dq, dk, dv) on its shard. Tolerance 1e-5 relative
// (docs/testing.md#tolerances): the CP result is the same fp32 arithmetic merged in another
// order (partials combined by lse), so the difference is a few ulps of the largest value, far
// below 1e-5.
#include "parallel/cp_attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "core/rng.h"
#include "kernels/cpu/ops.h"
#include "parallel/grid.h"
#include "parallel/kv_cache.h"
#include "parallel/tree_attention.h"
#include "parallel/zigzag.h"
#include "tests/comm/mpi_test_env.h"
#include "tests/common/tensor_compare.h"

namespace grove::parallel {
namespace {

using grove::testing::compare;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr double kTol = 1e-5;

std::vector<float> randn(int64_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> x(n);
  for (auto& v : x) v = static_cast<float>(rng.normal()) * scale;
  return x;
}

std::shared_ptr<comm::Communicator> world_ptr() {
  return std::shared_ptr<comm::Communicator>(&test::world(), [](comm::Communicator*) {});
}

// Every (tp, cp) grid with tp · cp = world: CP runs on a sub-communicator beside TP.
std::vector<ParallelGrid> grids() {
  std::vector<ParallelGrid> out;
  const int n = test::world().size();
  for (int cp = 1; cp <= n; ++cp) {
    if (n % cp) continue;
    auto g =
        ParallelGrid::create(world_ptr(), {.world = n, .tp = n / cp, .cp = cp, .ep = 1, .dp = 1});
    EXPECT_TRUE(g.ok()) << g.status().message();
    out.push_back(std::move(g.value()));
  }
  return out;
}

// ---- Zigzag layout --------------------------------------------------------------------------

TEST(Zigzag, PositionsShardAndGather) {
  comm::Communicator& w = test::world();
  const int p = w.size(), S = 8 * p, row = 3;
  const Zigzag z(S, p, w.rank());
  EXPECT_EQ(z.local_rows(), S / p);
  EXPECT_EQ(z.position(0), w.rank() * 4);
  EXPECT_EQ(z.position(4), (2 * p - 1 - w.rank()) * 4);
  // Over all ranks the positions cover 0..S-1 once.
  std::vector<int32_t> pos = z.positions(), all(S);
  w.all_gather(pos.data(), all.data(), S / p, DType::kI32);
  std::vector<int> seen(S, 0);
  for (int32_t x : all) ++seen.at(x);
  for (int i = 0; i < S; ++i) EXPECT_EQ(seen[i], 1) << "position " << i;

  std::vector<float> full(S * row), shard(S / p * row), back(S * row), scratch(S * row);
  for (int i = 0; i < S * row; ++i) full[i] = float(i);
  zigzag_shard(shard.data(), full.data(), z, row);
  for (int i = 0; i < S / p; ++i) EXPECT_EQ(shard[i * row], float(z.position(i) * row));
  zigzag_all_gather(w, shard.data(), back.data(), scratch.data(), S, row);
  EXPECT_EQ(back, full);
  EXPECT_THROW(Zigzag(6 * p + 1, p, 0), Error);
}

// RoPE of a shard at its global positions equals the shard of RoPE over the full sequence.
TEST(Zigzag, RopeAtGlobalPositions) {
  comm::Communicator& w = test::world();
  const int p = w.size(), S = 4 * p, B = 2, NH = 3, HD = 8;
  const Zigzag z(S, p, w.rank());
  std::vector<float> cos(S * HD / 2), sin(S * HD / 2);
  cpu::rope_table(cos.data(), sin.data(), S, HD, 10000.f);
  std::vector<float> full = randn(int64_t(S) * B * NH * HD, 31);
  std::vector<float> shard(full.size() / p), want(full.size() / p);
  zigzag_shard(shard.data(), full.data(), z, int64_t(B) * NH * HD);
  zigzag_rope_forward(shard.data(), cos.data(), sin.data(), z, B, NH, HD);
  cpu::rope_forward(full.data(), cos.data(), sin.data(), S, B, NH, HD, 0);
  zigzag_shard(want.data(), full.data(), z, int64_t(B) * NH * HD);
  EXPECT_TRUE(compare("rope shard", shard, want, 1e-7));
  zigzag_rope_backward(shard.data(), cos.data(), sin.data(), z, B, NH, HD);  // the inverse
  std::vector<float> orig = randn(int64_t(S) * B * NH * HD, 31), orig_shard(shard.size());
  zigzag_shard(orig_shard.data(), orig.data(), z, int64_t(B) * NH * HD);
  EXPECT_TRUE(compare("rope inverse", shard, orig_shard, 1e-6));
}

// ---- Training: tree and ring against single-device attention ---------------------------------

struct Case {
  int S, B, NH, NKV, HD;
  bool causal;
};

struct Reference {
  std::vector<float> q, k, v, dout, out, lse, dq, dk, dv;
};

Reference reference(const Case& c, uint64_t seed) {
  const int64_t nq = int64_t(c.S) * c.B * c.NH * c.HD, nk = int64_t(c.S) * c.B * c.NKV * c.HD;
  Reference r;
  r.q = randn(nq, seed + 1);
  r.k = randn(nk, seed + 2);
  r.v = randn(nk, seed + 3);
  r.dout = randn(nq, seed + 4);
  r.out.assign(nq, 0.f);
  r.lse.assign(int64_t(c.B) * c.NH * c.S, 0.f);
  r.dq.assign(nq, 0.f);
  r.dk.assign(nk, 0.f);
  r.dv.assign(nk, 0.f);
  cpu::AttentionShape shape{c.S, c.S, c.B, c.NH, c.NKV, c.HD, c.causal};
  cpu::attention_forward<float>(r.out.data(), r.lse.data(), nullptr, r.q.data(), r.k.data(),
                                r.v.data(), shape);
  cpu::attention_backward<float>(r.dq.data(), r.dk.data(), r.dv.data(), r.dout.data(), r.q.data(),
                                 r.k.data(), r.v.data(), r.out.data(), r.lse.data(), nullptr,
                                 shape);
  return r;
}

std::vector<float> shard_of(const std::vector<float>& full, const Zigzag& z) {
  const int64_t row = int64_t(full.size()) / z.S;
  std::vector<float> s(z.local_rows() * row);
  zigzag_shard(s.data(), full.data(), z, row);
  return s;
}

// lse [B, NH, S] -> this shard's [B, NH, Sl].
std::vector<float> lse_shard(const std::vector<float>& lse, const Zigzag& z, int BH) {
  std::vector<float> s(int64_t(BH) * z.local_rows());
  for (int bh = 0; bh < BH; ++bh)
    for (int i = 0; i < z.local_rows(); ++i)
      s[bh * z.local_rows() + i] = lse[int64_t(bh) * z.S + z.position(i)];
  return s;
}

void check_cp(CpAttention algo, const ParallelGrid& grid, const Case& c) {
  comm::Communicator& cp = grid.cp();
  SCOPED_TRACE(::testing::Message()
               << cp_attention_name(algo) << " " << grid.shape().str() << " S=" << c.S
               << " NH=" << c.NH << " NKV=" << c.NKV << (c.causal ? " causal" : " full"));
  // TP ranks hold different heads in a model: give each TP rank its own data.
  const Reference ref = reference(c, 100 + 10 * grid.coord().tp);
  const Zigzag z(c.S, cp.size(), cp.rank());
  std::vector<float> q = shard_of(ref.q, z), k = shard_of(ref.k, z), v = shard_of(ref.v, z),
                     dout = shard_of(ref.dout, z);
  const int64_t nq = q.size(), nk = k.size();
  std::vector<float> out(nq), lse(int64_t(c.B) * c.NH * z.local_rows());
  // Gradients accumulate: start from ones and subtract them afterwards.
  std::vector<float> dq(nq, 1.f), dk(nk, 1.f), dv(nk, 1.f);

  ContextAttention att(algo, &cp, {c.S, c.B, c.NH, c.NKV, c.HD, c.causal});
  att.forward(out.data(), lse.data(), q.data(), k.data(), v.data());
  att.backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
               out.data(), lse.data());
  for (auto* g : {&dq, &dk, &dv})
    for (float& x : *g) x -= 1.f;

  EXPECT_TRUE(compare("out", out, shard_of(ref.out, z), kTol));
  EXPECT_TRUE(compare("lse", lse, lse_shard(ref.lse, z, c.B * c.NH), kTol));
  EXPECT_TRUE(compare("dq", dq, shard_of(ref.dq, z), kTol));
  EXPECT_TRUE(compare("dk", dk, shard_of(ref.dk, z), kTol));
  EXPECT_TRUE(compare("dv", dv, shard_of(ref.dv, z), kTol));
  if (cp.size() > 1) {
    EXPECT_GT(att.stats().bytes, 0);
  }
}

const Case kCases[] = {
    {48, 2, 4, 4, 8, true},   // multi-head, causal
    {48, 2, 4, 4, 8, false},  // multi-head, full
    {48, 1, 8, 2, 16, true},  // GQA, causal
    {24, 3, 2, 1, 8, false},  // GQA, full, chunks of 3 rows at cp = 4
    {8, 1, 2, 2, 4, true},    // one row per chunk at cp = 4
};

TEST(TreeAttention, EqualsSingleDevice) {
  for (const ParallelGrid& g : grids())
    for (const Case& c : kCases) check_cp(CpAttention::kTree, g, c);
}

TEST(RingAttention, EqualsSingleDevice) {
  for (const ParallelGrid& g : grids())
    for (const Case& c : kCases) check_cp(CpAttention::kRing, g, c);
}

// Without a CP group ContextAttention is the plain kernel over the whole sequence.
TEST(CpAttention, SingleProcessIsTheKernel) {
  const Case c{10, 2, 4, 2, 8, true};  // any S: no zigzag
  const Reference ref = reference(c, 5);
  std::vector<float> out(ref.out.size()), lse(ref.lse.size()), dq(ref.dq.size(), 0.f),
      dk(ref.dk.size(), 0.f), dv(ref.dv.size(), 0.f);
  ContextAttention att(CpAttention::kTree, nullptr, {c.S, c.B, c.NH, c.NKV, c.HD, c.causal});
  att.forward(out.data(), lse.data(), ref.q.data(), ref.k.data(), ref.v.data());
  att.backward(dq.data(), dk.data(), dv.data(), ref.dout.data(), ref.q.data(), ref.k.data(),
               ref.v.data(), out.data(), lse.data());
  EXPECT_TRUE(compare("out", out, ref.out, 0.0));
  EXPECT_TRUE(compare("dk", dk, ref.dk, 0.0));
  EXPECT_EQ(att.workspace_bytes(), 0);
}

TEST(CpAttention, ParseAndShapeErrors) {
  EXPECT_EQ(parse_cp_attention("tree").value(), CpAttention::kTree);
  EXPECT_EQ(parse_cp_attention("ring").value(), CpAttention::kRing);
  EXPECT_FALSE(parse_cp_attention("star").ok());
  const int p = test::world().size();
  EXPECT_THROW(ContextAttention(CpAttention::kTree, &test::world(), {2 * p + 1, 1, 2, 2, 4, true}),
               Error);
  EXPECT_THROW(ContextAttention(CpAttention::kRing, &test::world(), {2 * p, 1, 3, 2, 4, true}),
               Error);
}

// ---- The combine: uneven and empty partials, and a wrong combine that the check catches ------

// Rank r's partial for row i: lse drawn around `center`, or -inf ("empty") on a pattern that
// leaves some rows empty on some ranks and row 0 empty everywhere.
struct Partials {
  std::vector<float> o, lse;  // [p][rows, HD], [p][rows]
};
Partials make_partials(int p, int rows, int HD, float center) {
  Partials pa{randn(int64_t(p) * rows * HD, 7), randn(int64_t(p) * rows, 8, 3.0f)};
  for (int r = 0; r < p; ++r)
    for (int i = 0; i < rows; ++i) {
      float& l = pa.lse[r * rows + i];
      l += center;
      if (i == 0 || (i + r) % 3 == 0) {  // empty: the kernel's neutral partial
        l = kNegInf;
        for (int d = 0; d < HD; ++d) pa.o[(int64_t(r) * rows + i) * HD + d] = 0.f;
      }
    }
  return pa;
}

// The exact combine in double, sequentially over ranks.
void combine_reference(const Partials& pa, int p, int rows, int HD, std::vector<float>& out,
                       std::vector<float>& lse) {
  out.assign(int64_t(rows) * HD, 0.f);
  lse.assign(rows, kNegInf);
  for (int i = 0; i < rows; ++i) {
    double m = -INFINITY;
    for (int r = 0; r < p; ++r) m = std::max(m, double(pa.lse[r * rows + i]));
    if (m == -INFINITY) continue;
    double den = 0;
    std::vector<double> num(HD, 0.0);
    for (int r = 0; r < p; ++r) {
      const double w = std::exp(double(pa.lse[r * rows + i]) - m);
      den += w;
      for (int d = 0; d < HD; ++d) num[d] += w * pa.o[(int64_t(r) * rows + i) * HD + d];
    }
    for (int d = 0; d < HD; ++d) out[int64_t(i) * HD + d] = float(num[d] / den);
    lse[i] = float(m + std::log(den));
  }
}

TEST(TreeCombine, ExactWithEmptyPartials) {
  comm::Communicator& w = test::world();
  const int p = w.size(), r = w.rank(), rows = 13, HD = 8;
  for (float center : {0.f, 120.f}) {  // 120: e^lse overflows fp32, the max shift must not
    const Partials pa = make_partials(p, rows, HD, center);
    std::vector<float> o(pa.o.begin() + int64_t(r) * rows * HD,
                         pa.o.begin() + int64_t(r + 1) * rows * HD);
    std::vector<float> lse(pa.lse.begin() + r * rows, pa.lse.begin() + (r + 1) * rows);
    std::vector<float> scratch(tree_combine_scratch_elems(rows, HD));
    tree_combine(w, o.data(), lse.data(), rows, HD, scratch.data());
    std::vector<float> want_o, want_lse;
    combine_reference(pa, p, rows, HD, want_o, want_lse);
    EXPECT_TRUE(compare("combined o", o, want_o, kTol));
    EXPECT_EQ(lse[0], kNegInf);  // masked everywhere: out 0, lse -inf, no NaN
    for (int d = 0; d < HD; ++d) EXPECT_EQ(o[d], 0.f);
    EXPECT_TRUE(compare("combined lse", lse, want_lse, kTol));
  }
}

// A deliberately wrong combine — SUM of [o·e^lse | e^lse] without the max shift — must fail the
// same check: e^120 overflows fp32, so its result is Inf/NaN. This shows the check can fail.
TEST(TreeCombine, WrongCombineIsCaught) {
  comm::Communicator& w = test::world();
  const int p = w.size(), r = w.rank(), rows = 13, HD = 8;
  const Partials pa = make_partials(p, rows, HD, 120.f);
  std::vector<float> packed(int64_t(rows) * (HD + 1), 0.f);
  for (int i = 0; i < rows; ++i) {
    const float e = std::exp(pa.lse[r * rows + i]);
    packed[int64_t(rows) * HD + i] = e;
    for (int d = 0; d < HD; ++d)
      packed[int64_t(i) * HD + d] = pa.o[(int64_t(r) * rows + i) * HD + d] * e;
  }
  w.all_reduce(packed.data(), int64_t(packed.size()), DType::kF32, comm::ReduceOp::kSum);
  std::vector<float> o(int64_t(rows) * HD);
  for (int i = 0; i < rows; ++i)
    for (int d = 0; d < HD; ++d)
      o[int64_t(i) * HD + d] = packed[int64_t(i) * HD + d] / packed[int64_t(rows) * HD + i];
  std::vector<float> want_o, want_lse;
  combine_reference(pa, p, rows, HD, want_o, want_lse);
  EXPECT_FALSE(compare("wrong combine", o, want_o, kTol));
}

// ---- Decoding: the sharded KV cache, tree and ring, uneven and empty shards ------------------

TEST(Decode, TreeAndRingEqualSingleDevice) {
  comm::Communicator& w = test::world();
  const int p = w.size(), L_max = 13, B = 2, NH = 4, NKV = 2, HD = 8;
  const int64_t kv_row = int64_t(B) * NKV * HD, q_row = int64_t(B) * NH * HD;
  const std::vector<float> K = randn(L_max * kv_row, 21), V = randn(L_max * kv_row, 22);
  for (CpAttention algo : {CpAttention::kTree, CpAttention::kRing}) {
    ShardedKvCache cache(p, w.rank(), /*layers=*/2, B, NKV, HD, L_max);
    DecodeAttention att(algo, &w, cache, NH);
    for (int L = 1; L <= L_max; ++L) {  // L < p: empty shards; L % p != 0: uneven ones
      SCOPED_TRACE(::testing::Message() << cp_attention_name(algo) << " L=" << L);
      const int pos = cache.begin_token();
      ASSERT_EQ(pos, L - 1);
      cache.store(1, pos, K.data() + pos * kv_row, V.data() + pos * kv_row);
      EXPECT_EQ(cache.local_length(), cache.local_length_of(w.rank()));
      // Rank 0's query is the one used; the others pass garbage.
      std::vector<float> q = w.rank() == 0 ? randn(q_row, 300 + L) : std::vector<float>(q_row, NAN);
      std::vector<float> out(q_row), want(q_row), want_lse(int64_t(B) * NH);
      att.forward(out.data(), q.data(), cache, 1);
      const std::vector<float> q0 = randn(q_row, 300 + L);
      cpu::AttentionShape shape{1, L, B, NH, NKV, HD, false};
      cpu::attention_forward<float>(want.data(), want_lse.data(), nullptr, q0.data(), K.data(),
                                    V.data(), shape);
      EXPECT_TRUE(compare("decode out", out, want, kTol));
      EXPECT_TRUE(compare("decode lse", att.lse(), want_lse.data(), B * NH, kTol));
      // Every rank holds the same bits.
      std::vector<float> all(int64_t(p) * q_row);
      w.all_gather(out.data(), all.data(), q_row, DType::kF32);
      for (int rr = 1; rr < p; ++rr)
        for (int64_t i = 0; i < q_row; ++i) ASSERT_EQ(all[rr * q_row + i], all[i]);
    }
    // The tree's payload does not depend on the context; the ring's grows with it.
    att.reset_stats();
    att.forward(std::vector<float>(q_row).data(), std::vector<float>(q_row, 0.5f).data(), cache, 1);
    if (p > 1 && algo == CpAttention::kTree) {
      EXPECT_LT(att.stats().bytes, 4.0 * (q_row + 2 * B * NH) * sizeof(float));
    }
    if (p > 1 && algo == CpAttention::kRing) {
      EXPECT_GE(att.stats().bytes, double(L_max / p) * 2 * kv_row * sizeof(float));
    }
  }
}

}  // namespace
}  // namespace grove::parallel
