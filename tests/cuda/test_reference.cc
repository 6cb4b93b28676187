// The scalar references that judge the CUDA kernels, checked against central finite differences
// of their own forwards (double precision). These run on any machine: a wrong reference would
// otherwise pass a wrong kernel.
#include <gtest/gtest.h>

#include <functional>

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

}  // namespace
}  // namespace grove::cuda
