// Fast kernels vs the scalar reference (kernels/reference/ops_reference.h), in float at realistic
// sizes (all above detail::kMinParallelWork, so the OpenMP paths run).
//
// Tolerance kRefTol = 1e-5 relative (docs/testing.md#tolerances). The reference sums in double and
// rounds once; the fast kernels sum in float in a different order (BLAS blocking, SIMD lanes)
// and use a polynomial exp (< 1 ulp). A float sum of K terms has a typical relative error of
// ~sqrt(K) * 6e-8, i.e. ~1e-6 for the K <= 512 used here: 1e-5 leaves ~10x headroom while any
// wrong index, scale or mask gives errors of order 1e-2 or more.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/ops.h"
#include "kernels/reference/ops_reference.h"
#include "tests/common/tensor_compare.h"
#include "tests/kernels/kernel_test_util.h"

namespace grove::cpu {
namespace {

using grove::testing::compare;
using grove::testing::random_vector;
using Vec = std::vector<float>;

constexpr double kRefTol = 1e-5;

TEST(FastVsRef, Gemm) {
  const int M = 37, N = 45, K = 53, pad = 3;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a=" << ta << " trans_b=" << tb);
      const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
      const Vec A = random_vector<float>((ta ? K : M) * lda, 1);
      const Vec B = random_vector<float>((tb ? N : K) * ldb, 2);
      Vec C = random_vector<float>(M * ldc, 3), Cref(C);
      gemm<float>(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.3f, C.data(), ldc);
      ref::gemm<float>(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.3f, Cref.data(), ldc);
      EXPECT_TRUE(compare("C", C, Cref, kRefTol));
    }
  }
}

TEST(FastVsRef, Linear) {
  const int N = 256, C = 96, OC = 80;  // N * OC above the parallel threshold
  const Vec x = random_vector<float>(N * C, 4), w = random_vector<float>(OC * C, 5),
            b = random_vector<float>(OC, 6), dout = random_vector<float>(N * OC, 7);
  Vec out(N * OC), out_r(N * OC);
  linear_forward(out.data(), x.data(), w.data(), b.data(), N, C, OC);
  ref::linear_forward(out_r.data(), x.data(), w.data(), b.data(), N, C, OC);
  EXPECT_TRUE(compare("out", out, out_r, kRefTol));
  Vec dx(N * C, 0.5f), dw(OC * C, 0.5f), db(OC, 0.5f), dx_r(dx), dw_r(dw), db_r(db);
  linear_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), N, C, OC);
  ref::linear_backward(dx_r.data(), dw_r.data(), db_r.data(), dout.data(), x.data(), w.data(), N, C,
                       OC);
  EXPECT_TRUE(compare("dinp", dx, dx_r, kRefTol));
  EXPECT_TRUE(compare("dweight", dw, dw_r, kRefTol));
  EXPECT_TRUE(compare("dbias", db, db_r, kRefTol));
}

TEST(FastVsRef, RMSNorm) {
  const int N = 64, C = 512;
  const Vec x = random_vector<float>(N * C, 8, -2.0, 2.0), w = random_vector<float>(C, 9),
            dout = random_vector<float>(N * C, 10);
  Vec out(N * C), rstd(N), out_r(N * C), rstd_r(N);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
  ref::rmsnorm_forward(out_r.data(), rstd_r.data(), x.data(), w.data(), N, C, 1e-5f);
  EXPECT_TRUE(compare("out", out, out_r, kRefTol));
  EXPECT_TRUE(compare("rstd", rstd, rstd_r, kRefTol));
  Vec dx(N * C, 0.1f), dw(C, 0.1f), dx_r(dx), dw_r(dw);
  rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
  ref::rmsnorm_backward(dx_r.data(), dw_r.data(), dout.data(), x.data(), w.data(), rstd.data(), N,
                        C);
  EXPECT_TRUE(compare("dinp", dx, dx_r, kRefTol));
  EXPECT_TRUE(compare("dweight", dw, dw_r, kRefTol));
}

TEST(FastVsRef, RoPE) {
  const int S = 64, B = 2, NH = 4, HD = 64, pos0 = 3, max_pos = 80;
  Vec c(max_pos * HD / 2), s(c.size()), c_r(c.size()), s_r(c.size());
  rope_table(c.data(), s.data(), max_pos, HD, 10000.0f);
  ref::rope_table(c_r.data(), s_r.data(), max_pos, HD, 10000.0f);
  EXPECT_TRUE(compare("cos table", c, c_r, 0.0));  // same double math, same rounding
  EXPECT_TRUE(compare("sin table", s, s_r, 0.0));
  Vec x = random_vector<float>(S * B * NH * HD, 11), x_r(x);
  rope_forward(x.data(), c.data(), s.data(), S, B, NH, HD, pos0);
  ref::rope_forward(x_r.data(), c.data(), s.data(), S, B, NH, HD, pos0);
  EXPECT_TRUE(compare("out", x, x_r, kRefTol));
  Vec g = random_vector<float>(x.size(), 12), g_r(g);
  rope_backward(g.data(), c.data(), s.data(), S, B, NH, HD, pos0);
  ref::rope_backward(g_r.data(), c.data(), s.data(), S, B, NH, HD, pos0);
  EXPECT_TRUE(compare("dx", g, g_r, kRefTol));
}

void attention_vs_ref(const char* name, const AttentionShape& s, bool keep_probs) {
  SCOPED_TRACE(name);
  const size_t nq = static_cast<size_t>(s.SQ) * s.B * s.NH * s.HD;
  const size_t nk = static_cast<size_t>(s.SK) * s.B * s.NKV * s.HD;
  const size_t nlse = static_cast<size_t>(s.B) * s.NH * s.SQ;
  const Vec q = random_vector<float>(nq, 13, -2.0, 2.0),
            k = random_vector<float>(nk, 14, -2.0, 2.0), v = random_vector<float>(nk, 15),
            dout = random_vector<float>(nq, 16);
  Vec out(nq), lse(nlse), probs(keep_probs ? nlse * s.SK : 0);
  Vec out_r(nq), lse_r(nlse), probs_r(nlse * s.SK);
  attention_forward(out.data(), lse.data(), keep_probs ? probs.data() : nullptr, q.data(), k.data(),
                    v.data(), s);
  ref::attention_forward(out_r.data(), lse_r.data(), probs_r.data(), q.data(), k.data(), v.data(),
                         s);
  EXPECT_TRUE(compare("out", out, out_r, kRefTol));
  EXPECT_TRUE(compare("lse", lse, lse_r, kRefTol));
  if (keep_probs) {
    EXPECT_TRUE(compare("probs", probs, probs_r, kRefTol));
  }
  Vec dq(nq, 0.5f), dk(nk, 0.5f), dv(nk, 0.5f), dq_r(dq), dk_r(dk), dv_r(dv);
  attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                     out.data(), lse.data(), keep_probs ? probs.data() : nullptr, s);
  ref::attention_backward(dq_r.data(), dk_r.data(), dv_r.data(), dout.data(), q.data(), k.data(),
                          v.data(), out.data(), lse.data(), static_cast<const float*>(nullptr), s);
  EXPECT_TRUE(compare("dq", dq, dq_r, kRefTol));
  EXPECT_TRUE(compare("dk", dk, dk_r, kRefTol));
  EXPECT_TRUE(compare("dv", dv, dv_r, kRefTol));
}

TEST(FastVsRef, Attention) {
  // 150 queries: two full query blocks of 64 and a partial one.
  attention_vs_ref("non-causal", {150, 150, 2, 4, 2, 32, false}, false);
  attention_vs_ref("causal", {150, 150, 2, 4, 2, 32, true}, false);
  attention_vs_ref("causal probs", {150, 150, 2, 4, 2, 32, true}, true);
  attention_vs_ref("shard", {70, 130, 2, 4, 1, 16, true, 100, 40}, false);
  attention_vs_ref("shard probs", {70, 130, 2, 4, 1, 16, true, 100, 40}, true);
  attention_vs_ref("training shape", {256, 256, 1, 8, 8, 64, true}, false);
}

// Merge of partial attention results: the fast kernels against the reference ones, and the merge
// of key shards against the attention over all keys (which is what makes it right). The shards
// are the causal halves of a query block's keys, so rows see keys of one shard only, of both, or
// (with the query offset) of none: every case of the weights (0 on one side, both sides empty).
TEST(FastVsRef, AttentionMerge) {
  const AttentionShape full{96, 160, 2, 4, 2, 32, true, 20, 40};  // rows 0..19 see no key
  const int split = 70;
  AttentionShape s0 = full, s1 = full;
  s0.SK = split;
  s1.SK = full.SK - split;
  s1.k_pos0 = full.k_pos0 + split;
  const int64_t row = int64_t{full.B} * full.NKV * full.HD;
  const int64_t nq = int64_t{full.SQ} * full.B * full.NH * full.HD;
  const int64_t nl = int64_t{full.B} * full.NH * full.SQ;
  const Vec q = random_vector<float>(nq, 40), k = random_vector<float>(full.SK * row, 41),
            v = random_vector<float>(full.SK * row, 42);
  Vec out(nq), lse(nl);
  attention_forward(out.data(), lse.data(), static_cast<float*>(nullptr), q.data(), k.data(),
                    v.data(), full);
  Vec o0(nq), l0(nl), o1(nq), l1(nl);
  attention_forward(o0.data(), l0.data(), static_cast<float*>(nullptr), q.data(), k.data(),
                    v.data(), s0);
  attention_forward(o1.data(), l1.data(), static_cast<float*>(nullptr), q.data(),
                    k.data() + split * row, v.data() + split * row, s1);

  // Pairwise, in place, against the reference merge and the full attention.
  Vec m = o0, ml = l0, m_r = o0, ml_r = l0;
  attention_merge(m.data(), ml.data(), o1.data(), l1.data(), full.SQ, full.B, full.NH, full.HD, 0,
                  full.SQ);
  ref::attention_merge(m_r.data(), ml_r.data(), o1.data(), l1.data(), full.SQ, full.B, full.NH,
                       full.HD, 0, full.SQ);
  EXPECT_TRUE(compare("merge out vs ref", m, m_r, kRefTol));
  EXPECT_TRUE(compare("merge lse vs ref", ml, ml_r, kRefTol));
  EXPECT_TRUE(compare("merge out vs full", m, out, kRefTol));
  EXPECT_TRUE(compare("merge lse vs full", ml, lse, kRefTol));
  EXPECT_EQ(ml[0], -INFINITY);  // (b 0, h 0, row 0) sees no key: (0, -inf) kept
  EXPECT_EQ(m[0], 0.f);

  // The collective form (P = 2 partials, the all-reduces done by hand).
  Vec mx(nl), n0(nq), d0(nl), n1(nq), d1(nl), n1_r(nq), d1_r(nl);
  for (int64_t r = 0; r < nl; ++r) mx[r] = std::max(l0[r], l1[r]);
  attention_merge_scale(n0.data(), d0.data(), o0.data(), l0.data(), mx.data(), full.SQ, full.B,
                        full.NH, full.HD);
  n1 = o1;  // num may alias out
  attention_merge_scale(n1.data(), d1.data(), n1.data(), l1.data(), mx.data(), full.SQ, full.B,
                        full.NH, full.HD);
  ref::attention_merge_scale(n1_r.data(), d1_r.data(), o1.data(), l1.data(), mx.data(), full.SQ,
                             full.B, full.NH, full.HD);
  EXPECT_TRUE(compare("scale num vs ref", n1, n1_r, kRefTol));
  EXPECT_TRUE(compare("scale den vs ref", d1, d1_r, kRefTol));
  for (int64_t i = 0; i < nq; ++i) n0[i] += n1[i];
  for (int64_t r = 0; r < nl; ++r) d0[r] += d1[r];
  Vec fo(nq), fl(nl), fo_r(nq), fl_r(nl);
  attention_merge_finish(fo.data(), fl.data(), n0.data(), d0.data(), mx.data(), full.SQ, full.B,
                         full.NH, full.HD);
  ref::attention_merge_finish(fo_r.data(), fl_r.data(), n0.data(), d0.data(), mx.data(), full.SQ,
                              full.B, full.NH, full.HD);
  EXPECT_TRUE(compare("finish out vs ref", fo, fo_r, kRefTol));
  EXPECT_TRUE(compare("finish lse vs ref", fl, fl_r, kRefTol));
  EXPECT_TRUE(compare("collective merge out vs full", fo, out, kRefTol));
  EXPECT_TRUE(compare("collective merge lse vs full", fl, lse, kRefTol));

  // A partial covering rows [row0, row0 + SQp) only: those rows change, the others do not.
  const int row0 = 30, SQp = 40;
  AttentionShape sp = s1;
  sp.SQ = SQp;
  sp.q_pos0 = full.q_pos0 + row0;
  const int64_t qrow = int64_t{full.B} * full.NH * full.HD;
  Vec op(SQp * qrow), lp(int64_t{full.B} * full.NH * SQp);
  attention_forward(op.data(), lp.data(), static_cast<float*>(nullptr), q.data() + row0 * qrow,
                    k.data() + split * row, v.data() + split * row, sp);
  Vec r = o0, rl = l0, r_r = o0, rl_r = l0;
  attention_merge(r.data(), rl.data(), op.data(), lp.data(), full.SQ, full.B, full.NH, full.HD,
                  row0, SQp);
  ref::attention_merge(r_r.data(), rl_r.data(), op.data(), lp.data(), full.SQ, full.B, full.NH,
                       full.HD, row0, SQp);
  EXPECT_TRUE(compare("row range out vs ref", r, r_r, kRefTol));
  EXPECT_TRUE(compare("row range lse vs ref", rl, rl_r, kRefTol));
  for (int i = 0; i < full.SQ; ++i) {
    const bool in = i >= row0 && i < row0 + SQp;
    const int64_t o = i * qrow;
    const float want = in ? out[o] : o0[o];
    EXPECT_NEAR(r[o], want, 1e-5) << "row " << i;
  }
  EXPECT_THROW(attention_merge(r.data(), rl.data(), op.data(), lp.data(), full.SQ, full.B, full.NH,
                               full.HD, full.SQ - SQp + 1, SQp),
               Error);
}

TEST(FastVsRef, SwiGLU) {
  const int64_t n = 40007;
  const Vec g = random_vector<float>(n, 17, -8.0, 8.0), u = random_vector<float>(n, 18),
            dout = random_vector<float>(n, 19);
  Vec out(n), out_r(n);
  swiglu_forward(out.data(), g.data(), u.data(), n);
  ref::swiglu_forward(out_r.data(), g.data(), u.data(), n);
  EXPECT_TRUE(compare("out", out, out_r, kRefTol));
  Vec dg(n, 0.5f), du(n, 0.5f), dg_r(dg), du_r(du);
  swiglu_backward(dg.data(), du.data(), dout.data(), g.data(), u.data(), n);
  ref::swiglu_backward(dg_r.data(), du_r.data(), dout.data(), g.data(), u.data(), n);
  EXPECT_TRUE(compare("dgate", dg, dg_r, kRefTol));
  EXPECT_TRUE(compare("dup", du, du_r, kRefTol));
}

TEST(FastVsRef, Embedding) {
  const int V = 50, N = 300, C = 64;
  std::vector<int32_t> tokens(N);
  for (int n = 0; n < N; ++n) tokens[n] = (n * 7 + n / 3) % V;
  const Vec table = random_vector<float>(V * C, 20), dout = random_vector<float>(N * C, 21);
  Vec out(N * C), out_r(N * C);
  embedding_forward(out.data(), tokens.data(), table.data(), N, C);
  ref::embedding_forward(out_r.data(), tokens.data(), table.data(), N, C);
  EXPECT_TRUE(compare("out", out, out_r, 0.0));
  Vec dt(V * C, 0.5f), dt_r(dt);
  embedding_backward(dt.data(), dout.data(), tokens.data(), N, C);
  ref::embedding_backward(dt_r.data(), dout.data(), tokens.data(), N, C);
  EXPECT_TRUE(compare("dtable", dt, dt_r, kRefTol));
}

TEST(FastVsRef, CrossEntropy) {
  const int N = 32, V = 1000;
  std::vector<int32_t> targets(N);
  for (int n = 0; n < N; ++n) targets[n] = n == 5 ? -1 : (n * 37) % V;
  const Vec logits = random_vector<float>(N * V, 22, -10.0, 10.0),
            dloss = random_vector<float>(N, 23);
  Vec loss(N), lse(N), loss_r(N), lse_r(N);
  cross_entropy_forward(loss.data(), lse.data(), logits.data(), targets.data(), N, V);
  ref::cross_entropy_forward(loss_r.data(), lse_r.data(), logits.data(), targets.data(), N, V);
  EXPECT_TRUE(compare("losses", loss, loss_r, kRefTol));
  EXPECT_TRUE(compare("lse", lse, lse_r, kRefTol));
  Vec dl(N * V), dl_r(N * V), inplace(logits);
  cross_entropy_backward(dl.data(), logits.data(), lse.data(), targets.data(), dloss.data(), N, V);
  ref::cross_entropy_backward(dl_r.data(), logits.data(), lse.data(), targets.data(), dloss.data(),
                              N, V);
  EXPECT_TRUE(compare("dlogits", dl, dl_r, kRefTol));
  cross_entropy_backward(inplace.data(), inplace.data(), lse.data(), targets.data(), dloss.data(),
                         N, V);
  EXPECT_TRUE(compare("dlogits(in place)", inplace, dl, 0.0));
}

// The vocabulary-shard kernels (the vocabulary-parallel embedding and loss) against the
// references, and t shards put together (max over the shards, the packed sums summed) against
// the unsharded cross-entropy and embedding.
TEST(FastVsRef, VocabShard) {
  const int N = 40, V = 1000, C = 24, t = 4, Vl = V / t;
  std::vector<int32_t> targets(N), tokens(N);
  for (int n = 0; n < N; ++n) targets[n] = n == 5 ? -1 : (n * 37) % V;
  for (int n = 0; n < N; ++n) tokens[n] = (n * 53 + 7) % V;
  const Vec logits = random_vector<float>(N * V, 30, -10.0, 10.0),
            dloss = random_vector<float>(N, 31), table = random_vector<float>(V * C, 32),
            dout = random_vector<float>(N * C, 33);
  Vec loss_full(N), lse_full(N), emb_full(N * C);
  ref::cross_entropy_forward(loss_full.data(), lse_full.data(), logits.data(), targets.data(), N,
                             V);
  ref::embedding_forward(emb_full.data(), tokens.data(), table.data(), N, C);
  Vec gmax(N, -INFINITY), gpacked(2 * N, 0.0f), emb_sum(N * C, 0.0f);
  std::vector<Vec> shard_logits(t);
  for (int r = 0; r < t; ++r) {
    SCOPED_TRACE(::testing::Message() << "shard " << r);
    Vec& x = shard_logits[r];
    for (int n = 0; n < N; ++n)
      x.insert(x.end(), logits.begin() + n * V + r * Vl, logits.begin() + n * V + (r + 1) * Vl);
    Vec m(N), m_r(N);
    cross_entropy_shard_max(m.data(), x.data(), N, Vl);
    ref::cross_entropy_shard_max(m_r.data(), x.data(), N, Vl);
    EXPECT_TRUE(compare("row_max", m, m_r, 0.0));
    for (int n = 0; n < N; ++n) gmax[n] = std::max(gmax[n], m[n]);
    const Vec tab(table.begin() + r * Vl * C, table.begin() + (r + 1) * Vl * C);
    Vec e(N * C), e_r(N * C);
    embedding_forward_shard(e.data(), tokens.data(), tab.data(), N, C, r * Vl, Vl);
    ref::embedding_forward_shard(e_r.data(), tokens.data(), tab.data(), N, C, r * Vl, Vl);
    EXPECT_TRUE(compare("embedding", e, e_r, 0.0));
    for (int i = 0; i < N * C; ++i) emb_sum[i] += e[i];
    Vec dt(Vl * C, 0.5f), dt_r(dt);
    embedding_backward_shard(dt.data(), dout.data(), tokens.data(), N, C, r * Vl, Vl);
    ref::embedding_backward_shard(dt_r.data(), dout.data(), tokens.data(), N, C, r * Vl, Vl);
    EXPECT_TRUE(compare("dtable", dt, dt_r, kRefTol));
  }
  EXPECT_TRUE(compare("sum of the embedding shards", emb_sum, emb_full, 0.0));
  for (int r = 0; r < t; ++r) {
    Vec pk(2 * N), pk_r(2 * N);
    cross_entropy_shard_sums(pk.data(), shard_logits[r].data(), gmax.data(), targets.data(), N, Vl,
                             r * Vl);
    ref::cross_entropy_shard_sums(pk_r.data(), shard_logits[r].data(), gmax.data(), targets.data(),
                                  N, Vl, r * Vl);
    EXPECT_TRUE(compare("packed", pk, pk_r, kRefTol));
    for (int i = 0; i < 2 * N; ++i) gpacked[i] += pk[i];
  }
  Vec loss(N), lse(N), loss_r(N), lse_r(N);
  cross_entropy_shard_finish(loss.data(), lse.data(), gmax.data(), gpacked.data(), targets.data(),
                             N);
  ref::cross_entropy_shard_finish<float>(loss_r.data(), lse_r.data(), gmax.data(), gpacked.data(),
                                         targets.data(), N);
  EXPECT_TRUE(compare("losses", loss, loss_r, kRefTol));
  EXPECT_TRUE(compare("losses vs unsharded", loss, loss_full, kRefTol));
  EXPECT_TRUE(compare("lse vs unsharded", lse, lse_full, kRefTol));
  Vec dfull(N * V);
  ref::cross_entropy_backward(dfull.data(), logits.data(), lse.data(), targets.data(), dloss.data(),
                              N, V);
  for (int r = 0; r < t; ++r) {
    Vec d(N * Vl), d_r(N * Vl), want(N * Vl), inplace(shard_logits[r]);
    cross_entropy_shard_backward(d.data(), shard_logits[r].data(), lse.data(), targets.data(),
                                 dloss.data(), N, Vl, r * Vl);
    ref::cross_entropy_shard_backward(d_r.data(), shard_logits[r].data(), lse.data(),
                                      targets.data(), dloss.data(), N, Vl, r * Vl);
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < Vl; ++j) want[n * Vl + j] = dfull[n * V + r * Vl + j];
    EXPECT_TRUE(compare("dlogits", d, d_r, kRefTol));
    EXPECT_TRUE(compare("dlogits vs unsharded", d, want, kRefTol));
    cross_entropy_shard_backward(inplace.data(), inplace.data(), lse.data(), targets.data(),
                                 dloss.data(), N, Vl, r * Vl);
    EXPECT_TRUE(compare("dlogits(in place)", inplace, d, 0.0));
  }
}

TEST(FastVsRef, Elementwise) {
  const int64_t n = 100003;
  const Vec x = random_vector<float>(n, 24);
  Vec y = random_vector<float>(n, 25), y_r(y);
  add_inplace(y.data(), x.data(), n);
  ref::add_inplace(y_r.data(), x.data(), n);
  EXPECT_TRUE(compare("add_inplace", y, y_r, 0.0));
  scale_inplace(y.data(), 0.37f, n);
  ref::scale_inplace(y_r.data(), 0.37f, n);
  EXPECT_TRUE(compare("scale_inplace", y, y_r, 0.0));
  // Both sum in double; only the order differs: ~1e-16 * sqrt(n) relative.
  const double ss = sum_squares(x.data(), n), ss_r = ref::sum_squares(x.data(), n);
  EXPECT_NEAR(ss, ss_r, 1e-12 * ss_r);
}

// AdamW against a two-step update computed by hand (in double from the formula), and against
// the scalar reference. Float vs double: each step is a few float ops on O(1) values, relative
// error ~1e-7; 1e-6 allows for the rounding of m, v in float between steps.
TEST(FastVsRef, AdamWTwoSteps) {
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  const int64_t n = 4;
  const float g1[n] = {0.5f, -1.0f, 2.0f, 0.0f}, g2[n] = {-0.25f, -1.0f, 1.0f, 3.0f};
  Vec p = {1.0f, -2.0f, 0.5f, 0.0f}, m(n, 0.0f), v(n, 0.0f);
  Vec p_r(p), m_r(m), v_r(v);
  std::vector<double> want(n), want_m(n), want_v(n);
  for (int64_t i = 0; i < n; ++i) {
    double P = p[i], M = 0, V = 0;
    const double gs[2] = {g1[i], g2[i]};
    for (int t = 1; t <= 2; ++t) {
      M = 0.9 * M + 0.1 * gs[t - 1];
      V = 0.95 * V + 0.05 * gs[t - 1] * gs[t - 1];
      const double mh = M / (1 - std::pow(0.9, t)), vh = V / (1 - std::pow(0.95, t));
      P = P - 1e-2 * (mh / (std::sqrt(vh) + 1e-8) + 0.1 * P);
    }
    want[i] = P;
    want_m[i] = M;
    want_v[i] = V;
  }
  adamw_update(p.data(), g1, m.data(), v.data(), n, lr, b1, b2, eps, wd, 1);
  adamw_update(p.data(), g2, m.data(), v.data(), n, lr, b1, b2, eps, wd, 2);
  ref::adamw_update(p_r.data(), g1, m_r.data(), v_r.data(), n, lr, b1, b2, eps, wd, 1);
  ref::adamw_update(p_r.data(), g2, m_r.data(), v_r.data(), n, lr, b1, b2, eps, wd, 2);
  EXPECT_TRUE(compare("param", p.data(), want.data(), n, 1e-6));
  EXPECT_TRUE(compare("m", m.data(), want_m.data(), n, 1e-6));
  EXPECT_TRUE(compare("v", v.data(), want_v.data(), n, 1e-6));
  EXPECT_TRUE(compare("param(ref)", p_r.data(), want.data(), n, 1e-6));
  // Spot value: parameter 0 after step 1 is 1 - 0.01 * (1 + 0.1) (m_hat/sqrt(v_hat) = sign(g)).
  Vec p1 = {1.0f}, m1 = {0.0f}, v1 = {0.0f};
  adamw_update(p1.data(), g1, m1.data(), v1.data(), 1, lr, b1, b2, eps, wd, 1);
  EXPECT_NEAR(p1[0], 1.0 - 0.01 * 1.1, 1e-6);
  // Large tensor: fast (parallel) vs reference.
  const int64_t big = 100001;
  Vec P = random_vector<float>(big, 26), G = random_vector<float>(big, 27), Mv(big, 0.0f),
      Vv(big, 0.0f), P_r(P), M_r(Mv), V_r(Vv);
  for (int t = 1; t <= 3; ++t) {
    adamw_update(P.data(), G.data(), Mv.data(), Vv.data(), big, lr, b1, b2, eps, wd, t);
    ref::adamw_update(P_r.data(), G.data(), M_r.data(), V_r.data(), big, lr, b1, b2, eps, wd, t);
  }
  EXPECT_TRUE(compare("param(big)", P, P_r, 1e-6));
}

}  // namespace
}  // namespace grove::cpu
