// The scalar references (kernels/reference/ops_reference.h) that judge the CPU and the CUDA
// kernels, checked against central finite differences of their own forwards at T = double, and
// the MoE references against a hand-computed example. These run on any machine: a wrong
// reference would otherwise pass a wrong kernel.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/reference/ops_reference.h"
#include "tests/common/tensor_compare.h"
#include "tests/kernels/kernel_test_util.h"

namespace grove {
namespace {

using Vec = std::vector<double>;
using IVec = std::vector<int32_t>;
using kernels::AttentionShape;

Vec random_vec(size_t n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  return testing::random_vector<double>(n, seed, lo, hi);
}
::testing::AssertionResult close(const std::string& name, const Vec& got, const Vec& want,
                                 double tol) {
  return testing::compare(name, got, want, tol);
}

// d/dx_i of f at x by central differences (h = 1e-6: truncation ~h^2, rounding ~1e-16/h).
Vec numeric_grad(const std::function<double(const Vec&)>& f, Vec x) {
  Vec g(x.size());
  const double h = 1e-6;
  for (size_t i = 0; i < x.size(); ++i) {
    double x0 = x[i];
    x[i] = x0 + h;
    double fp = f(x);
    x[i] = x0 - h;
    double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}
double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
// Finite differences in double agree with exact gradients to ~1e-9 relative here.
constexpr double kFd = 1e-6;

TEST(Reference, AttentionBackwardMatchesFiniteDifferences) {
  // Causal with offsets (rows 0..1 fully masked), GQA.
  AttentionShape s{5, 6, 2, 4, 2, 3, true, 1, 3};
  size_t nq = size_t(s.SQ) * s.B * s.NH * s.HD, nk = size_t(s.SK) * s.B * s.NKV * s.HD;
  Vec q = random_vec(nq, 1), k = random_vec(nk, 2), v = random_vec(nk, 3), w = random_vec(nq, 4);
  auto loss = [&](const Vec& qq, const Vec& kk, const Vec& vv) {
    Vec out(nq), lse(size_t(s.B) * s.NH * s.SQ);
    ref::attention_forward<double>(out.data(), lse.data(), nullptr, qq.data(), kk.data(), vv.data(),
                                   s);
    return dot(out, w);
  };
  Vec out(nq), lse(size_t(s.B) * s.NH * s.SQ), dq(nq, 0.0), dk(nk, 0.0), dv(nk, 0.0);
  ref::attention_forward<double>(out.data(), lse.data(), nullptr, q.data(), k.data(), v.data(), s);
  EXPECT_EQ(lse[0], -INFINITY);  // query 0 (position 1) sees no key (positions >= 3)
  ref::attention_backward<double>(dq.data(), dk.data(), dv.data(), w.data(), q.data(), k.data(),
                                  v.data(), out.data(), lse.data(), nullptr, s);
  EXPECT_TRUE(
      close("ref dq", dq, numeric_grad([&](const Vec& x) { return loss(x, k, v); }, q), kFd));
  EXPECT_TRUE(
      close("ref dk", dk, numeric_grad([&](const Vec& x) { return loss(q, x, v); }, k), kFd));
  EXPECT_TRUE(
      close("ref dv", dv, numeric_grad([&](const Vec& x) { return loss(q, k, x); }, v), kFd));
}

TEST(Reference, RmsNormBackwardMatchesFiniteDifferences) {
  const int N = 3, C = 7;
  Vec x = random_vec(N * C, 11), w = random_vec(C, 12), g = random_vec(N * C, 13);
  auto loss = [&](const Vec& xx, const Vec& ww) {
    Vec out(N * C), r(N);
    ref::rmsnorm_forward<double>(out.data(), r.data(), xx.data(), ww.data(), N, C, 1e-5f);
    return dot(out, g);
  };
  Vec out(N * C), r(N), dx(N * C, 0.0), dw(C, 0.0);
  ref::rmsnorm_forward<double>(out.data(), r.data(), x.data(), w.data(), N, C, 1e-5f);
  ref::rmsnorm_backward<double>(dx.data(), dw.data(), g.data(), x.data(), w.data(), r.data(), N, C);
  EXPECT_TRUE(
      close("ref rmsnorm dx", dx, numeric_grad([&](const Vec& a) { return loss(a, w); }, x), kFd));
  EXPECT_TRUE(
      close("ref rmsnorm dw", dw, numeric_grad([&](const Vec& a) { return loss(x, a); }, w), kFd));
}

TEST(Reference, SwigluCrossEntropyRopeLinear) {
  const int n = 11;
  Vec gate = random_vec(n, 21, -3, 3), up = random_vec(n, 22), g = random_vec(n, 23);
  auto swi = [&](const Vec& a, const Vec& b) {
    Vec o(n);
    ref::swiglu_forward<double>(o.data(), a.data(), b.data(), n);
    return dot(o, g);
  };
  Vec dg(n, 0.0), du(n, 0.0);
  ref::swiglu_backward<double>(dg.data(), du.data(), g.data(), gate.data(), up.data(), n);
  EXPECT_TRUE(close("ref swiglu dgate", dg,
                    numeric_grad([&](const Vec& a) { return swi(a, up); }, gate), kFd));
  EXPECT_TRUE(close("ref swiglu dup", du,
                    numeric_grad([&](const Vec& a) { return swi(gate, a); }, up), kFd));

  const int N = 3, V = 5;
  Vec logits = random_vec(N * V, 24, -2, 2), dloss = random_vec(N, 25);
  IVec t{2, -1, 4};
  auto ce = [&](const Vec& x) {
    Vec l(N), lse(N);
    ref::cross_entropy_forward<double>(l.data(), lse.data(), x.data(), t.data(), N, V);
    return dot(l, dloss);
  };
  Vec l(N), lse(N), dl(N * V);
  ref::cross_entropy_forward<double>(l.data(), lse.data(), logits.data(), t.data(), N, V);
  ref::cross_entropy_backward<double>(dl.data(), logits.data(), lse.data(), t.data(), dloss.data(),
                                      N, V);
  EXPECT_TRUE(close("ref ce dlogits", dl, numeric_grad(ce, logits), kFd));

  // RoPE backward is the transpose of the forward: <R x, y> = <x, R^T y>.
  const int S = 3, B = 2, NHx = 2, HD = 6;
  std::vector<float> ct(8 * 3), st(8 * 3);
  ref::rope_table(ct.data(), st.data(), 8, HD, 10000.f);
  Vec x = random_vec(S * B * NHx * HD, 26), y = random_vec(S * B * NHx * HD, 27);
  Vec rx = x, rty = y;
  ref::rope_forward<double>(rx.data(), ct.data(), st.data(), S, B, NHx, HD, 2);
  ref::rope_backward<double>(rty.data(), ct.data(), st.data(), S, B, NHx, HD, 2);
  EXPECT_NEAR(dot(rx, y), dot(x, rty), 1e-12);

  const int M = 4, C = 3, OC = 2;
  Vec inp = random_vec(M * C, 28), w = random_vec(OC * C, 29), b = random_vec(OC, 30);
  Vec go = random_vec(M * OC, 31);
  auto lin = [&](const Vec& a, const Vec& ww, const Vec& bb) {
    Vec o(M * OC);
    ref::linear_forward<double>(o.data(), a.data(), ww.data(), bb.data(), M, C, OC);
    return dot(o, go);
  };
  Vec di(M * C, 0.0), dw(OC * C, 0.0), db(OC, 0.0);
  ref::linear_backward<double>(di.data(), dw.data(), db.data(), go.data(), inp.data(), w.data(), M,
                               C, OC);
  EXPECT_TRUE(close("ref linear dinp", di,
                    numeric_grad([&](const Vec& a) { return lin(a, w, b); }, inp), kFd));
  EXPECT_TRUE(close("ref linear dw", dw,
                    numeric_grad([&](const Vec& a) { return lin(inp, a, b); }, w), kFd));
  EXPECT_TRUE(close("ref linear db", db,
                    numeric_grad([&](const Vec& a) { return lin(inp, w, a); }, b), kFd));
  // gemm reference agrees with the linear one.
  Vec out_l(M * OC), out_g(M * OC, 0.0);
  ref::linear_forward<double>(out_l.data(), inp.data(), w.data(), nullptr, M, C, OC);
  ref::gemm<double>(false, true, M, OC, C, 1.0, inp.data(), C, w.data(), C, 0.0, out_g.data(), OC);
  EXPECT_TRUE(close("ref gemm", out_g, out_l, 1e-15));
}

// ---- Mixture of experts ----------------------------------------------------------------------

struct Route {
  Vec probs, lse, weight, prob_sum;
  IVec expert, counts;
  double lse_sq_sum = 0;
  int N, E, k;
  Route(const Vec& logits, int N_, int E_, int k_)
      : probs(size_t(N_) * E_),
        lse(N_),
        weight(size_t(N_) * k_),
        prob_sum(E_),
        expert(size_t(N_) * k_),
        counts(E_),
        N(N_),
        E(E_),
        k(k_) {
    ref::moe_router_forward<double>(probs.data(), lse.data(), expert.data(), weight.data(),
                                    counts.data(), prob_sum.data(), &lse_sq_sum, logits.data(), N,
                                    E, k);
  }
  double aux_z(double aux_coef, double z_coef) const {
    return ref::moe_router_aux_z(counts.data(), prob_sum.data(), lse_sq_sum, N, E, k, aux_coef,
                                 z_coef);
  }
};

// Two tokens, three experts, top-2, computed by hand:
//   token 0, logits (0, ln 2, ln 3): p = (1, 2, 3)/6, lse = ln 6, experts (2, 1), w = (0.6, 0.4)
//   token 1, logits (1, 1, 0): p = (e, e, 1)/(2e + 1), a tie between 0 and 1 goes to 0:
//   experts (0, 1), w = (0.5, 0.5).
TEST(Reference, MoeRouterHandExample) {
  const double e1 = std::exp(1.0), Z = 2 * e1 + 1;
  Vec logits{0.0, std::log(2.0), std::log(3.0), 1.0, 1.0, 0.0};
  Route r(logits, 2, 3, 2);
  EXPECT_EQ(r.expert, (IVec{2, 1, 0, 1}));
  EXPECT_TRUE(
      close("hand probs", r.probs, Vec{1 / 6.0, 2 / 6.0, 3 / 6.0, e1 / Z, e1 / Z, 1 / Z}, 1e-15));
  EXPECT_TRUE(close("hand lse", r.lse, Vec{std::log(6.0), std::log(Z)}, 1e-15));
  EXPECT_TRUE(close("hand weight", r.weight, Vec{0.6, 0.4, 0.5, 0.5}, 1e-15));
  EXPECT_EQ(r.counts, (IVec{1, 2, 1}));
  Vec P{1 / 6.0 + e1 / Z, 2 / 6.0 + e1 / Z, 3 / 6.0 + 1 / Z};
  EXPECT_TRUE(close("hand prob_sum", r.prob_sum, P, 1e-15));
  // f = counts / (T·k) = (1/4, 1/2, 1/4), P_i = prob_sum_i / T; aux = α·E·Σ f_i P_i.
  const double aux = 3 * (0.25 * P[0] + 0.5 * P[1] + 0.25 * P[2]) / 2;
  const double z = (std::pow(std::log(6.0), 2) + std::pow(std::log(Z), 2)) / 2;
  EXPECT_NEAR(r.aux_z(0.1, 0.0), 0.1 * aux, 1e-15);
  EXPECT_NEAR(r.aux_z(0.0, 0.01), 0.01 * z, 1e-15);
  // kernel_types.h's host formula for the kernels' statistics gives the same losses.
  kernels::MoeRouterLosses l = kernels::moe_router_losses(r.counts.data(), r.prob_sum.data(),
                                                          r.lse_sq_sum, 2, 3, 2, 0.1f, 0.01f);
  EXPECT_NEAR(l.aux, double{0.1f} * aux, 1e-7);
  EXPECT_NEAR(l.z, double{0.01f} * z, 1e-8);
  // k = 1: the raw probability (Switch), not renormalised to 1.
  Route r1(logits, 2, 3, 1);
  EXPECT_EQ(r1.expert, (IVec{2, 0}));
  EXPECT_TRUE(close("hand weight k=1", r1.weight, Vec{0.5, e1 / Z}, 1e-15));

  // Permute layout of the k = 2 routing: assignments (e) = (2, 1, 0, 1) sorted by expert, then
  // token, then slot: rows 0: a2, 1: a1, 2: a3, 3: a0.
  IVec offsets(4), row_of(4);
  Vec x{10, 11, 20, 21}, xp(8);
  ref::moe_permute<double>(xp.data(), offsets.data(), row_of.data(), x.data(), r.expert.data(),
                           r.counts.data(), 2, 2, 3, 2);
  EXPECT_EQ(offsets, (IVec{0, 1, 3, 4}));
  EXPECT_EQ(row_of, (IVec{3, 1, 0, 2}));
  EXPECT_EQ(xp, (Vec{20, 21, 10, 11, 20, 21, 10, 11}));
}

TEST(Reference, MoeRouterBackwardMatchesFiniteDifferences) {
  const int N = 4, E = 6;
  const double aux_coef = 0.3, z_coef = 0.2, loss_scale = 1.7;
  for (int k : {1, 2, 3}) {
    Vec logits = random_vec(N * E, 41 + k, -2, 2), dweight = random_vec(N * k, 51 + k);
    Route r(logits, N, E, k);
    // The ids (hence f_i) stay fixed under the small perturbations: random logits have no ties.
    auto loss = [&](const Vec& x) {
      Route q(x, N, E, k);
      EXPECT_EQ(q.expert, r.expert);
      return dot(dweight, q.weight) + loss_scale * q.aux_z(aux_coef, z_coef);
    };
    Vec dlogits(N * E);
    ref::moe_router_backward<double>(dlogits.data(), dweight.data(), r.probs.data(), r.lse.data(),
                                     r.expert.data(), r.weight.data(), r.counts.data(), N, aux_coef,
                                     z_coef, loss_scale, N, E, k);
    EXPECT_TRUE(close("ref router dlogits k=" + std::to_string(k), dlogits,
                      numeric_grad(loss, logits), kFd));
  }
}

// Permute and unpermute against their backward: <P x, g> = <x, P^T g>, and the combine's
// gradients are those of <unpermute(yp, w), dy>; the grouped GEMMs by finite differences.
TEST(Reference, MoePermuteUnpermuteGroupedLinear) {
  const int N = 5, k = 2, E = 4, C = 3, OC = 2;
  IVec expert{3, 0, 0, 2, 3, 2, 1, 0, 3, 1}, counts{3, 2, 2, 3}, offsets(E + 1), row_of(N * k);
  Vec x = random_vec(N * C, 61), g = random_vec(N * k * C, 62), xp(N * k * C), dx(N * C, 0.0);
  ref::moe_permute<double>(xp.data(), offsets.data(), row_of.data(), x.data(), expert.data(),
                           counts.data(), N, k, E, C);
  EXPECT_EQ(offsets, (IVec{0, 3, 5, 7, 10}));
  ref::moe_permute_backward<double>(dx.data(), g.data(), row_of.data(), N, k, C);
  EXPECT_NEAR(dot(xp, g), dot(x, dx), 1e-12);

  Vec yp = random_vec(N * k * C, 63), w = random_vec(N * k, 64), dy = random_vec(N * C, 65);
  auto comb = [&](const Vec& a, const Vec& b) {
    Vec y(N * C);
    ref::moe_unpermute<double>(y.data(), a.data(), b.data(), row_of.data(), N, k, C);
    return dot(y, dy);
  };
  Vec dyp(N * k * C), dw(N * k);
  ref::moe_unpermute_backward<double>(dyp.data(), dw.data(), dy.data(), yp.data(), w.data(),
                                      row_of.data(), N, k, C);
  EXPECT_TRUE(close("ref unpermute dyp", dyp,
                    numeric_grad([&](const Vec& a) { return comb(a, w); }, yp), kFd));
  EXPECT_TRUE(close("ref unpermute dw", dw,
                    numeric_grad([&](const Vec& b) { return comb(yp, b); }, w), kFd));
  // Unpermute with weights (1, 0) after permute: token n's first slot, i.e. x itself.
  Vec w10(N * k, 0.0), y(N * C);
  for (int n = 0; n < N; ++n) w10[n * k] = 1.0;
  ref::moe_unpermute<double>(y.data(), xp.data(), w10.data(), row_of.data(), N, k, C);
  EXPECT_TRUE(close("ref permute round trip", y, x, 0.0));

  Vec W = random_vec(E * OC * C, 66), R = random_vec(N * k * OC, 67);
  auto lin = [&](const Vec& a, const Vec& ww) {
    Vec out(N * k * OC);
    ref::grouped_linear_forward<double>(out.data(), a.data(), ww.data(), offsets.data(), E, C, OC);
    return dot(out, R);
  };
  Vec din(N * k * C, 0.0), dW(E * OC * C, 0.0);
  ref::grouped_linear_backward<double>(din.data(), dW.data(), R.data(), xp.data(), W.data(),
                                       offsets.data(), E, C, OC);
  EXPECT_TRUE(close("ref grouped dinp", din,
                    numeric_grad([&](const Vec& a) { return lin(a, W); }, xp), kFd));
  EXPECT_TRUE(close("ref grouped dweight", dW,
                    numeric_grad([&](const Vec& a) { return lin(xp, a); }, W), kFd));
}

}  // namespace
}  // namespace grove
