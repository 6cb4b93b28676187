// The scalar references that judge the CUDA kernels, checked against central finite differences
// of their own forwards (double precision). These run on any machine: a wrong reference would
// otherwise pass a wrong kernel.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tests/cuda/reference.h"
#include "tests/cuda/test_util.h"

namespace grove::cuda {
namespace {

using testing::close;
using testing::random_vec;
using testing::Vec;

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

TEST(CudaReference, AttentionBackwardMatchesFiniteDifferences) {
  // Causal with offsets (rows 0..1 fully masked), GQA.
  AttentionShape s{5, 6, 2, 4, 2, 3, true, 1, 3};
  size_t nq = size_t(s.SQ) * s.B * s.NH * s.HD, nk = size_t(s.SK) * s.B * s.NKV * s.HD;
  Vec q = random_vec(nq, 1), k = random_vec(nk, 2), v = random_vec(nk, 3), w = random_vec(nq, 4);
  auto loss = [&](const Vec& qq, const Vec& kk, const Vec& vv) {
    Vec out(nq), lse(size_t(s.B) * s.NH * s.SQ);
    ref::attention_forward(out, lse, qq, kk, vv, s);
    return dot(out, w);
  };
  Vec out(nq), lse(size_t(s.B) * s.NH * s.SQ), dq(nq, 0.0), dk(nk, 0.0), dv(nk, 0.0);
  ref::attention_forward(out, lse, q, k, v, s);
  EXPECT_EQ(lse[0], -ref::kInf);  // query 0 (position 1) sees no key (positions >= 3)
  ref::attention_backward(dq, dk, dv, w, q, k, v, out, lse, s);
  EXPECT_TRUE(
      close("ref dq", dq, numeric_grad([&](const Vec& x) { return loss(x, k, v); }, q), kFd));
  EXPECT_TRUE(
      close("ref dk", dk, numeric_grad([&](const Vec& x) { return loss(q, x, v); }, k), kFd));
  EXPECT_TRUE(
      close("ref dv", dv, numeric_grad([&](const Vec& x) { return loss(q, k, x); }, v), kFd));
}

TEST(CudaReference, RmsNormBackwardMatchesFiniteDifferences) {
  const int N = 3, C = 7;
  Vec x = random_vec(N * C, 11), w = random_vec(C, 12), g = random_vec(N * C, 13);
  auto loss = [&](const Vec& xx, const Vec& ww) {
    Vec out(N * C), r(N);
    ref::rmsnorm_forward(out, r, xx, ww, N, C, 1e-5);
    return dot(out, g);
  };
  Vec out(N * C), r(N), dx(N * C, 0.0), dw(C, 0.0);
  ref::rmsnorm_forward(out, r, x, w, N, C, 1e-5);
  ref::rmsnorm_backward(dx, dw, g, x, w, r, N, C);
  EXPECT_TRUE(
      close("ref rmsnorm dx", dx, numeric_grad([&](const Vec& a) { return loss(a, w); }, x), kFd));
  EXPECT_TRUE(
      close("ref rmsnorm dw", dw, numeric_grad([&](const Vec& a) { return loss(x, a); }, w), kFd));
}

TEST(CudaReference, SwigluCrossEntropyRopeLinear) {
  const int n = 11;
  Vec gate = random_vec(n, 21, -3, 3), up = random_vec(n, 22), g = random_vec(n, 23);
  auto swi = [&](const Vec& a, const Vec& b) {
    Vec o(n);
    ref::swiglu_forward(o, a, b);
    return dot(o, g);
  };
  Vec dg(n, 0.0), du(n, 0.0);
  ref::swiglu_backward(dg, du, g, gate, up);
  EXPECT_TRUE(close("ref swiglu dgate", dg,
                    numeric_grad([&](const Vec& a) { return swi(a, up); }, gate), kFd));
  EXPECT_TRUE(close("ref swiglu dup", du,
                    numeric_grad([&](const Vec& a) { return swi(gate, a); }, up), kFd));

  const int N = 3, V = 5;
  Vec logits = random_vec(N * V, 24, -2, 2), dloss = random_vec(N, 25);
  std::vector<int32_t> t{2, -1, 4};
  auto ce = [&](const Vec& x) {
    Vec l(N), lse(N);
    ref::cross_entropy_forward(l, lse, x, t, N, V);
    return dot(l, dloss);
  };
  Vec l(N), lse(N), dl(N * V);
  ref::cross_entropy_forward(l, lse, logits, t, N, V);
  ref::cross_entropy_backward(dl, logits, lse, t, dloss, N, V);
  EXPECT_TRUE(close("ref ce dlogits", dl, numeric_grad(ce, logits), kFd));

  // RoPE backward is the transpose of the forward: <R x, y> = <x, R^T y>.
  const int S = 3, B = 2, NHx = 2, HD = 6;
  Vec ct(8 * 3), st(8 * 3);
  ref::rope_table(ct, st, 8, HD, 10000.0);
  Vec x = random_vec(S * B * NHx * HD, 26), y = random_vec(S * B * NHx * HD, 27);
  Vec rx = x, rty = y;
  ref::rope(rx, ct, st, S, B, NHx, HD, 2, 1.0);
  ref::rope(rty, ct, st, S, B, NHx, HD, 2, -1.0);
  EXPECT_NEAR(dot(rx, y), dot(x, rty), 1e-12);

  const int M = 4, C = 3, OC = 2;
  Vec inp = random_vec(M * C, 28), w = random_vec(OC * C, 29), b = random_vec(OC, 30);
  Vec go = random_vec(M * OC, 31);
  auto lin = [&](const Vec& a, const Vec& ww, const Vec& bb) {
    Vec o(M * OC);
    ref::linear_forward(o, a, ww, &bb, M, C, OC);
    return dot(o, go);
  };
  Vec di(M * C, 0.0), dw(OC * C, 0.0), db(OC, 0.0);
  ref::linear_backward(&di, dw, &db, go, inp, w, M, C, OC);
  EXPECT_TRUE(close("ref linear dinp", di,
                    numeric_grad([&](const Vec& a) { return lin(a, w, b); }, inp), kFd));
  EXPECT_TRUE(close("ref linear dw", dw,
                    numeric_grad([&](const Vec& a) { return lin(inp, a, b); }, w), kFd));
  EXPECT_TRUE(close("ref linear db", db,
                    numeric_grad([&](const Vec& a) { return lin(inp, w, a); }, b), kFd));
  // gemm reference agrees with the linear one.
  Vec out_l(M * OC), out_g(M * OC, 0.0);
  ref::linear_forward(out_l, inp, w, nullptr, M, C, OC);
  ref::gemm(false, true, M, OC, C, 1.0, inp, C, w, C, 0.0, out_g, OC);
  EXPECT_TRUE(close("ref gemm", out_g, out_l, 1e-15));
}

// ---- Mixture of experts ----------------------------------------------------------------------

// Two tokens, three experts, top-2, computed by hand:
//   token 0, logits (0, ln 2, ln 3): p = (1, 2, 3)/6, lse = ln 6, experts (2, 1), w = (0.6, 0.4)
//   token 1, logits (1, 1, 0): p = (e, e, 1)/(2e + 1), a tie between 0 and 1 goes to 0:
//   experts (0, 1), w = (0.5, 0.5).
TEST(CudaReference, MoeRouterHandExample) {
  const double e1 = std::exp(1.0), Z = 2 * e1 + 1;
  Vec logits{0.0, std::log(2.0), std::log(3.0), 1.0, 1.0, 0.0};
  ref::MoeRoute r = ref::moe_router_forward(logits, 2, 3, 2);
  EXPECT_EQ(r.expert, (std::vector<int32_t>{2, 1, 0, 1}));
  EXPECT_TRUE(
      close("hand probs", r.probs, Vec{1 / 6.0, 2 / 6.0, 3 / 6.0, e1 / Z, e1 / Z, 1 / Z}, 1e-15));
  EXPECT_TRUE(close("hand lse", r.lse, Vec{std::log(6.0), std::log(Z)}, 1e-15));
  EXPECT_TRUE(close("hand weight", r.weight, Vec{0.6, 0.4, 0.5, 0.5}, 1e-15));
  EXPECT_EQ(r.counts, (std::vector<int32_t>{1, 2, 1}));
  Vec P{1 / 6.0 + e1 / Z, 2 / 6.0 + e1 / Z, 3 / 6.0 + 1 / Z};
  EXPECT_TRUE(close("hand prob_sum", r.prob_sum, P, 1e-15));
  // f = counts / (T·k) = (1/4, 1/2, 1/4), P_i = prob_sum_i / T; aux = α·E·Σ f_i P_i.
  const double aux = 3 * (0.25 * P[0] + 0.5 * P[1] + 0.25 * P[2]) / 2;
  const double z = (std::pow(std::log(6.0), 2) + std::pow(std::log(Z), 2)) / 2;
  EXPECT_NEAR(ref::moe_router_aux_z(r, 2, 3, 2, 0.1, 0.0), 0.1 * aux, 1e-15);
  EXPECT_NEAR(ref::moe_router_aux_z(r, 2, 3, 2, 0.0, 0.01), 0.01 * z, 1e-15);
  // ops.h's host formula for the GPU statistics gives the same losses.
  MoeRouterLosses l =
      moe_router_losses(r.counts.data(), r.prob_sum.data(), r.lse_sq_sum, 2, 3, 2, 0.1f, 0.01f);
  EXPECT_NEAR(l.aux, double{0.1f} * aux, 1e-7);
  EXPECT_NEAR(l.z, double{0.01f} * z, 1e-8);
  // k = 1: the raw probability (Switch), not renormalised to 1.
  ref::MoeRoute r1 = ref::moe_router_forward(logits, 2, 3, 1);
  EXPECT_EQ(r1.expert, (std::vector<int32_t>{2, 0}));
  EXPECT_TRUE(close("hand weight k=1", r1.weight, Vec{0.5, e1 / Z}, 1e-15));

  // Permute layout of the k = 2 routing: assignments (e) = (2, 1, 0, 1) sorted by expert, then
  // token, then slot: rows 0: a2, 1: a1, 2: a3, 3: a0.
  std::vector<int32_t> offsets, row_of;
  ref::moe_permute_layout(offsets, row_of, r.expert, 2, 2, 3);
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 1, 3, 4}));
  EXPECT_EQ(row_of, (std::vector<int32_t>{3, 1, 0, 2}));
}

TEST(CudaReference, MoeRouterBackwardMatchesFiniteDifferences) {
  const int N = 4, E = 6;
  const double aux_coef = 0.3, z_coef = 0.2, loss_scale = 1.7;
  for (int k : {1, 2, 3}) {
    Vec logits = random_vec(N * E, 41 + k, -2, 2), dweight = random_vec(N * k, 51 + k);
    ref::MoeRoute r = ref::moe_router_forward(logits, N, E, k);
    // The ids (hence f_i) stay fixed under the small perturbations: random logits have no ties.
    auto loss = [&](const Vec& x) {
      ref::MoeRoute q = ref::moe_router_forward(x, N, E, k);
      EXPECT_EQ(q.expert, r.expert);
      return dot(dweight, q.weight) +
             loss_scale * ref::moe_router_aux_z(q, N, E, k, aux_coef, z_coef);
    };
    Vec dlogits(N * E);
    ref::moe_router_backward(dlogits, dweight, r.probs, r.lse, r.expert, r.weight, r.counts, N,
                             aux_coef, z_coef, loss_scale, N, E, k);
    EXPECT_TRUE(close("ref router dlogits k=" + std::to_string(k), dlogits,
                      numeric_grad(loss, logits), kFd));
  }
}

// Permute and unpermute against their backward: <P x, g> = <x, P^T g>, and the combine's
// gradients are those of <unpermute(yp, w), dy>.
TEST(CudaReference, MoePermuteUnpermuteAdjoints) {
  const int N = 5, k = 2, E = 4, C = 3;
  std::vector<int32_t> expert{3, 0, 0, 2, 3, 2, 1, 0, 3, 1};  // expert 0..3, distinct per token
  std::vector<int32_t> offsets, row_of;
  ref::moe_permute_layout(offsets, row_of, expert, N, k, E);
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 3, 5, 7, 10}));
  Vec x = random_vec(N * C, 61), g = random_vec(N * k * C, 62), xp(N * k * C), dx(N * C, 0.0);
  ref::moe_permute(xp, x, row_of, N, k, C);
  ref::moe_permute_backward(dx, g, row_of, N, k, C);
  EXPECT_NEAR(dot(xp, g), dot(x, dx), 1e-12);

  Vec yp = random_vec(N * k * C, 63), w = random_vec(N * k, 64), dy = random_vec(N * C, 65);
  auto comb = [&](const Vec& a, const Vec& b) {
    Vec y(N * C);
    ref::moe_unpermute(y, a, b, row_of, N, k, C);
    return dot(y, dy);
  };
  Vec dyp(N * k * C), dw(N * k);
  ref::moe_unpermute_backward(dyp, dw, dy, yp, w, row_of, N, k, C);
  EXPECT_TRUE(close("ref unpermute dyp", dyp,
                    numeric_grad([&](const Vec& a) { return comb(a, w); }, yp), kFd));
  EXPECT_TRUE(close("ref unpermute dw", dw,
                    numeric_grad([&](const Vec& b) { return comb(yp, b); }, w), kFd));
  // Unpermute with weights (1, 0) after permute: token n's first slot, i.e. x itself.
  Vec w10(N * k, 0.0), y(N * C);
  for (int n = 0; n < N; ++n) w10[n * k] = 1.0;
  ref::moe_unpermute(y, xp, w10, row_of, N, k, C);
  EXPECT_TRUE(close("ref permute round trip", y, x, 0.0));
}

}  // namespace
}  // namespace grove::cuda
