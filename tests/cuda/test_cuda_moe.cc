// The CUDA mixture-of-experts kernels (kernels/cuda/moe.cu) against the scalar references
// (kernels/reference/ops_reference.h, evaluated at T = double), the same ones the CPU kernels of
// kernels/cpu/moe.cc are held to (tests/kernels/kernels_moe_test.cc): route (forward, backward, and
// the backward against finite differences of the reference forward), permute / unpermute and their
// backward, the grouped expert GEMMs, and the stages composed. Inputs are rounded to what the
// kernel stores before the reference sees them, so each tolerance covers only what the kernel adds.
// Without a device every test skips with one line.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/tensor.h"
#include "kernels/cuda/ops.h"
#include "kernels/reference/ops_reference.h"
#include "tests/cuda/test_util.h"

namespace grove::cuda {
namespace {

using testing::close;
using testing::DeviceBuffer;
using testing::random_vec;
using testing::stored;
using testing::Vec;

// Tolerances (docs/testing.md#tolerances: max|a - b| / max|b| per tensor).
// Router outputs are computed in double and rounded once to fp32 (weights: an fp32 sum of <= k
// probabilities and one division): a few fp32 ulps, 2^-24 = 6e-8 each; 1e-6 leaves a margin.
constexpr double kRouterFwd = 1e-6;
// Router backward in double from the fp32 forward outputs, rounded once to fp32.
constexpr double kRouterBwd = 1e-6;
// Router backward against the exact gradient (finite differences of the double reference): the
// kernel starts from fp32-rounded probs, weights and lse (relative errors ~6e-8, amplified a few
// times by the cancellation in p·(dp − Σ dp·p)); 1e-5.
constexpr double kRouterFd = 1e-5;
// Elementwise sums of <= k products (fp32) rounded once to T.
template <typename T>
constexpr double kCombine = std::is_same_v<T, float> ? 2e-6 : 3.9e-3;
// Grouped GEMMs: as Tol<T>::kGemm / kMasterGemm of test_cuda_kernels.cc (same GEMM calls).
template <typename T>
constexpr double kGemm = std::is_same_v<T, float> ? 1e-5 : 3.9e-3;
template <typename T>
constexpr double kMasterGemm = std::is_same_v<T, float> ? 1e-5 : 1e-4;
// fp32 dot products over C <= 100 terms (combine dweight).
constexpr double kF32Reduce = 1e-5;

class CudaMoe : public testing::GpuTest {};
template <typename T>
class CudaMoeTyped : public CudaMoe {};
TYPED_TEST_SUITE(CudaMoeTyped, testing::ComputeTypes, testing::ComputeTypeNames);

Vec to_vec(const std::vector<int32_t>& v) {
  return Vec(v.begin(), v.end());
}
std::vector<int32_t> to_ints(const Vec& v) {
  return std::vector<int32_t>(v.begin(), v.end());
}
double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
// Central differences, h = 1e-6.
Vec numeric_grad(const std::function<double(const Vec&)>& f, Vec x) {
  Vec g(x.size());
  const double h = 1e-6;
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// The reference route in double.
struct RefRoute {
  Vec probs, lse, weight, prob_sum;
  std::vector<int32_t> expert, counts;
  double lse_sq_sum = 0;
  int N, E, k;
  RefRoute(const Vec& logits, int N_, int E_, int k_)
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
  // aux + z over these N tokens.
  double aux_z(double aux_coef, double z_coef) const {
    return ref::moe_router_aux_z(counts.data(), prob_sum.data(), lse_sq_sum, N, E, k, aux_coef,
                                 z_coef);
  }
};

// The route of a device run, downloaded.
struct GpuRoute {
  Vec probs, lse, expert, weight, counts, prob_sum, lse_sq_sum;
};
GpuRoute gpu_route(const Vec& logits, int N, int E, int k) {
  DeviceBuffer<float> d_logits(logits), d_probs(size_t(N) * E), d_lse(N), d_w(size_t(N) * k);
  DeviceBuffer<int32_t> d_ex(size_t(N) * k), d_counts(Vec(E, -7.0));  // pre-filled: written
  DeviceBuffer<double> d_psum(Vec(E, -7.0)), d_lsq(Vec{-7.0});
  moe_router_forward(d_probs.get(), d_lse.get(), d_ex.get(), d_w.get(), d_counts.get(),
                     d_psum.get(), d_lsq.get(), d_logits.get(), N, E, k);
  return {d_probs.download(),  d_lse.download(),  d_ex.download(), d_w.download(),
          d_counts.download(), d_psum.download(), d_lsq.download()};
}

// Random logits with ties: in row 1 experts 2 and 5 share the largest logit (2 must come first),
// row 2 is all equal (experts 0, 1, ... in order).
Vec router_logits(int N, int E, uint64_t seed) {
  Vec x = stored<float>(random_vec(size_t(N) * E, seed, -3, 3));
  if (N > 2 && E > 5) {
    x[size_t(E) + 2] = x[size_t(E) + 5] = 5.0;
    for (int e = 0; e < E; ++e) x[size_t(2) * E + e] = 0.25;
  }
  return x;
}

// ---- Route -------------------------------------------------------------------------------------
TEST_F(CudaMoe, RouterForward) {
  struct Case {
    int N, E, k;
  };
  for (Case c : {Case{67, 12, 1}, Case{67, 12, 2}, Case{45, 40, 4}, Case{9, 8, 8}, Case{0, 8, 2}}) {
    const int N = c.N, E = c.E, k = c.k;
    std::string tag =
        " N=" + std::to_string(N) + " E=" + std::to_string(E) + " k=" + std::to_string(k);
    Vec logits = router_logits(N, E, 100 + k);
    RefRoute r(logits, N, E, k);
    GpuRoute g = gpu_route(logits, N, E, k);
    EXPECT_EQ(to_ints(g.expert), r.expert) << "expert ids" << tag;
    EXPECT_EQ(to_ints(g.counts), r.counts) << "counts" << tag;
    EXPECT_TRUE(close("router probs" + tag, g.probs, r.probs, kRouterFwd));
    EXPECT_TRUE(close("router lse" + tag, g.lse, r.lse, kRouterFwd));
    EXPECT_TRUE(close("router weight" + tag, g.weight, r.weight, kRouterFwd));
    EXPECT_TRUE(close("router prob_sum" + tag, g.prob_sum, r.prob_sum, kRouterFwd));
    EXPECT_TRUE(close("router lse_sq_sum" + tag, g.lse_sq_sum, Vec{r.lse_sq_sum}, kRouterFwd));
    // The losses a caller forms from the statistics (as the CPU router would).
    const double aux_coef = 0.01, z_coef = 0.001;
    std::vector<int32_t> counts = to_ints(g.counts);
    MoeRouterLosses l = moe_router_losses(counts.data(), g.prob_sum.data(), g.lse_sq_sum[0], N, E,
                                          k, float(aux_coef), float(z_coef));
    double want = r.aux_z(double{float(aux_coef)}, double{float(z_coef)});
    EXPECT_NEAR(double(l.aux) + l.z, want, 1e-6 * std::max(1.0, std::abs(want))) << tag;
    if (N > 2 && k >= 2 && E > 5) {  // the ties of router_logits
      EXPECT_EQ(g.expert[size_t(k)], 2.0) << tag;
      EXPECT_EQ(g.expert[size_t(k) + 1], 5.0) << tag;
      EXPECT_EQ(g.expert[size_t(2) * k], 0.0) << tag;
      EXPECT_EQ(g.expert[size_t(2) * k + 1], 1.0) << tag;
    }
  }
}

TEST_F(CudaMoe, RouterBackward) {
  const int N = 53, E = 10;
  const float aux_coef = 0.3f, z_coef = 0.2f, loss_scale = 1.7f;
  for (int k : {1, 2, 4}) {
    std::string tag = " k=" + std::to_string(k);
    Vec logits = stored<float>(random_vec(size_t(N) * E, 200 + k, -3, 3));
    Vec dweight = stored<float>(random_vec(size_t(N) * k, 210 + k));
    // The forward on the device; the backward reads its outputs.
    DeviceBuffer<float> d_logits(logits), d_probs(size_t(N) * E), d_lse(N), d_w(size_t(N) * k);
    DeviceBuffer<int32_t> d_ex(size_t(N) * k), d_counts(E);
    DeviceBuffer<double> d_psum(E), d_lsq(1);
    moe_router_forward(d_probs.get(), d_lse.get(), d_ex.get(), d_w.get(), d_counts.get(),
                       d_psum.get(), d_lsq.get(), d_logits.get(), N, E, k);
    DeviceBuffer<float> d_dw(dweight), d_dlogits(Vec(size_t(N) * E, 9.0));  // pre-filled: written
    moe_router_backward(d_dlogits.get(), d_dw.get(), d_probs.get(), d_lse.get(), d_ex.get(),
                        d_w.get(), d_counts.get(), N, aux_coef, z_coef, loss_scale, N, E, k);
    Vec got = d_dlogits.download();

    // 1. The reference backward from the same (fp32) forward outputs.
    Vec want(size_t(N) * E);
    std::vector<int32_t> ex = to_ints(d_ex.download()), counts = to_ints(d_counts.download());
    const Vec probs = d_probs.download(), lse = d_lse.download(), wt = d_w.download();
    ref::moe_router_backward<double>(want.data(), dweight.data(), probs.data(), lse.data(),
                                     ex.data(), wt.data(), counts.data(), N, aux_coef, z_coef,
                                     loss_scale, N, E, k);
    EXPECT_TRUE(close("router dlogits vs reference" + tag, got, want, kRouterBwd));

    // 2. Finite differences of Σ dweight·w + loss_scale·(aux + z) through the double forward.
    RefRoute base(logits, N, E, k);
    EXPECT_EQ(ex, base.expert) << tag;
    auto loss = [&](const Vec& x) {
      RefRoute q(x, N, E, k);
      return dot(dweight, q.weight) + double{loss_scale} * q.aux_z(aux_coef, z_coef);
    };
    EXPECT_TRUE(close("router dlogits vs finite differences" + tag, got, numeric_grad(loss, logits),
                      kRouterFd));
  }
  // No tokens: nothing to do, nothing read.
  moe_router_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, aux_coef,
                      z_coef, loss_scale, 0, E, 2);
}

// ---- Permute / unpermute -----------------------------------------------------------------------

// k distinct experts per token, never `skip` (an expert that receives no token), skewed towards
// the low ids.
std::vector<int32_t> random_experts(int N, int k, int E, int skip, uint64_t seed) {
  std::vector<int32_t> ex(size_t(N) * k);
  Vec u = random_vec(size_t(N) * k * 8, seed, 0, 1);
  size_t next = 0;
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < k; ++j) {
      int e;
      bool ok;
      do {
        e = std::min(E - 1, int(E * u[next % u.size()] * u[(next + 1) % u.size()] * 1.6));
        next += 2;
        ok = e != skip;
        for (int i = 0; i < j; ++i) ok = ok && ex[size_t(n) * k + i] != e;
      } while (!ok);
      ex[size_t(n) * k + j] = e;
    }
  return ex;
}

TYPED_TEST(CudaMoeTyped, PermuteUnpermute) {
  using T = TypeParam;
  struct Case {
    int N, k, E, C, skip;
  };
  // 16-byte rows (vector copies), odd rows (element copies), and A = 6000 assignments (three
  // tiles of the layout scan).
  for (Case c : {Case{83, 2, 8, 72, 5}, Case{41, 3, 6, 37, 0}, Case{3000, 2, 16, 8, 15},
                 Case{20, 1, 4, 16, 2}}) {
    const int N = c.N, k = c.k, E = c.E, C = c.C;
    const size_t A = size_t(N) * k;
    std::string tag = " N=" + std::to_string(N) + " k=" + std::to_string(k) +
                      " E=" + std::to_string(E) + " C=" + std::to_string(C);
    std::vector<int32_t> expert = random_experts(N, k, E, c.skip, 300 + C);
    std::vector<int32_t> counts(E, 0), offsets(E + 1), row_of(A);
    for (int32_t e : expert) ++counts[e];
    Vec x = stored<T>(random_vec(size_t(N) * C, 310)), xp(A * C);
    ref::moe_permute<double>(xp.data(), offsets.data(), row_of.data(), x.data(), expert.data(),
                             counts.data(), N, k, E, C);
    ASSERT_EQ(offsets[c.skip], offsets[c.skip + 1]) << "expert " << c.skip << " gets no rows";

    DeviceBuffer<T> d_x(x), d_xp(A * C);
    DeviceBuffer<int32_t> d_ex(to_vec(expert)), d_counts(to_vec(counts));
    DeviceBuffer<int32_t> d_off(Vec(E + 1, -1.0)), d_row(A);
    moe_permute<T>(d_xp.get(), d_off.get(), d_row.get(), d_x.get(), d_ex.get(), d_counts.get(), N,
                   k, E, C);
    EXPECT_EQ(to_ints(d_off.download()), offsets) << "offsets" << tag;
    EXPECT_EQ(to_ints(d_row.download()), row_of) << "row_of" << tag;
    EXPECT_TRUE(close("permute xp" + tag, d_xp.download(), xp, 0.0));  // a copy: exact

    // Combine weights as the router makes them: positive, summing to one per token (in fp32).
    Vec w = stored<float>(random_vec(A, 320, 0.1, 1.0));
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int j = 0; j < k; ++j) s += w[size_t(n) * k + j];
      for (int j = 0; j < k; ++j) w[size_t(n) * k + j] = stored<float>(w[size_t(n) * k + j] / s);
    }
    DeviceBuffer<float> d_w(w);
    // Round trip: the permuted copies of x, combined with weights summing to one, give x back.
    DeviceBuffer<T> d_y(size_t(N) * C);
    moe_unpermute<T>(d_y.get(), d_xp.get(), d_w.get(), d_row.get(), N, k, C);
    EXPECT_TRUE(close("permute -> unpermute round trip" + tag, d_y.download(), x, kCombine<T>));

    // Unpermute of arbitrary expert outputs.
    Vec yp = stored<T>(random_vec(A * C, 330)), y(size_t(N) * C);
    ref::moe_unpermute<double>(y.data(), yp.data(), w.data(), row_of.data(), N, k, C);
    DeviceBuffer<T> d_yp(yp);
    moe_unpermute<T>(d_y.get(), d_yp.get(), d_w.get(), d_row.get(), N, k, C);
    EXPECT_TRUE(close("unpermute y" + tag, d_y.download(), stored<T>(y), kCombine<T>));

    // Unpermute backward (both outputs written over garbage).
    Vec dy = stored<T>(random_vec(size_t(N) * C, 340)), dyp(A * C), dw(A);
    ref::moe_unpermute_backward<double>(dyp.data(), dw.data(), dy.data(), yp.data(), w.data(),
                                        row_of.data(), N, k, C);
    DeviceBuffer<T> d_dy(dy), d_dyp(Vec(A * C, 3.0));
    DeviceBuffer<float> d_dwt(Vec(A, 3.0));
    moe_unpermute_backward<T>(d_dyp.get(), d_dwt.get(), d_dy.get(), d_yp.get(), d_w.get(),
                              d_row.get(), N, k, C);
    EXPECT_TRUE(close("unpermute dyp" + tag, d_dyp.download(), stored<T>(dyp), kCombine<T>));
    EXPECT_TRUE(close("unpermute dweight" + tag, d_dwt.download(), dw, kF32Reduce));

    // Permute backward accumulates into dx.
    Vec dxp = stored<T>(random_vec(A * C, 350)), dx = stored<T>(random_vec(size_t(N) * C, 351));
    DeviceBuffer<T> d_dxp(dxp), d_dx(dx);
    ref::moe_permute_backward<double>(dx.data(), dxp.data(), row_of.data(), N, k, C);
    moe_permute_backward<T>(d_dx.get(), d_dxp.get(), d_row.get(), N, k, C);
    EXPECT_TRUE(close("permute dx" + tag, d_dx.download(), stored<T>(dx), kCombine<T>));
  }
}

// No tokens: the layout is still written (offsets all zero); nothing else is touched.
TYPED_TEST(CudaMoeTyped, NoTokens) {
  using T = TypeParam;
  const int E = 6, k = 2, C = 16;
  DeviceBuffer<int32_t> d_counts(Vec(E, 0.0)), d_off(Vec(E + 1, -1.0));
  moe_permute<T>(nullptr, d_off.get(), nullptr, nullptr, nullptr, d_counts.get(), 0, k, E, C);
  EXPECT_EQ(d_off.download(), Vec(E + 1, 0.0));
  moe_permute_backward<T>(nullptr, nullptr, nullptr, 0, k, C);
  moe_unpermute<T>(nullptr, nullptr, nullptr, nullptr, 0, k, C);
  moe_unpermute_backward<T>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, k, C);
  std::vector<int32_t> offsets(E + 1, 0);
  grouped_linear_forward<T>(nullptr, nullptr, nullptr, offsets.data(), E, C, C);
  grouped_linear_backward<T>(nullptr, nullptr, nullptr, nullptr, nullptr, offsets.data(), E, C, C);
  GROVE_CUDA_CHECK(cudaDeviceSynchronize());
}

// ---- Grouped expert GEMMs ------------------------------------------------------------------
TYPED_TEST(CudaMoeTyped, GroupedLinear) {
  using T = TypeParam;
  const int E = 5, C = 48, OC = 40;
  const std::vector<int32_t> offsets{0, 7, 7, 20, 21, 30};  // expert 1: no rows, expert 3: one
  const int R = offsets[E];
  Vec inp = stored<T>(random_vec(size_t(R) * C, 401));
  Vec w = stored<T>(random_vec(size_t(E) * OC * C, 402));
  Vec out(size_t(R) * OC);
  ref::grouped_linear_forward<double>(out.data(), inp.data(), w.data(), offsets.data(), E, C, OC);
  DeviceBuffer<T> d_inp(inp), d_w(w), d_out(size_t(R) * OC);
  grouped_linear_forward<T>(d_out.get(), d_inp.get(), d_w.get(), offsets.data(), E, C, OC);
  EXPECT_TRUE(close("grouped linear out", d_out.download(), stored<T>(out), kGemm<T>));

  // Gradients start non-zero: both accumulate; the empty expert's slab must stay as it was.
  Vec dout = stored<T>(random_vec(size_t(R) * OC, 403));
  Vec dinp = stored<T>(random_vec(size_t(R) * C, 404));
  Vec dw = stored<float>(random_vec(size_t(E) * OC * C, 405));
  const Vec dw0 = dw;
  DeviceBuffer<T> d_dout(dout), d_dinp(dinp);
  DeviceBuffer<float> d_dw(dw);
  ref::grouped_linear_backward<double>(dinp.data(), dw.data(), dout.data(), inp.data(), w.data(),
                                       offsets.data(), E, C, OC);
  grouped_linear_backward<T>(d_dinp.get(), d_dw.get(), d_dout.get(), d_inp.get(), d_w.get(),
                             offsets.data(), E, C, OC);
  EXPECT_TRUE(close("grouped linear dinp", d_dinp.download(), stored<T>(dinp), kGemm<T>));
  Vec got_dw = d_dw.download();
  EXPECT_TRUE(close("grouped linear dweight", got_dw, dw, kMasterGemm<T>));
  const size_t slab = size_t(OC) * C;
  EXPECT_TRUE(close("grouped linear dweight of the empty expert",
                    Vec(got_dw.begin() + slab, got_dw.begin() + 2 * slab),
                    Vec(dw0.begin() + slab, dw0.begin() + 2 * slab), 0.0));
  // dinp may be left out.
  ref::grouped_linear_backward<double>(nullptr, dw.data(), dout.data(), inp.data(), w.data(),
                                       offsets.data(), E, C, OC);
  grouped_linear_backward<T>(nullptr, d_dw.get(), d_dout.get(), d_inp.get(), d_w.get(),
                             offsets.data(), E, C, OC);
  EXPECT_TRUE(close("grouped linear dweight (2nd)", d_dw.download(), dw, kMasterGemm<T>));
}

// ---- The stages composed: route → permute → one linear expert each → combine -----------------
TYPED_TEST(CudaMoeTyped, RouteDispatchCombine) {
  using T = TypeParam;
  const int N = 61, E = 6, k = 2, C = 32, OC = 24;
  Vec logits = stored<float>(random_vec(size_t(N) * E, 501, -2, 2));
  for (int n = 0; n < N; ++n) logits[size_t(n) * E + 4] = -30;  // expert 4 never chosen
  Vec x = stored<T>(random_vec(size_t(N) * C, 502));
  Vec w = stored<T>(random_vec(size_t(E) * OC * C, 503));
  // Reference: y[n] = Σ_j w_{n,j} · x[n] W_{e_j}^T.
  RefRoute r(logits, N, E, k);
  ASSERT_EQ(r.counts[4], 0);
  Vec want(size_t(N) * OC, 0.0);
  double max_yp = 0, max_y = 0;  // largest expert output and largest combined output
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < k; ++j) {
      const int e = r.expert[size_t(n) * k + j];
      for (int o = 0; o < OC; ++o) {
        double acc = 0;
        for (int c = 0; c < C; ++c) acc += x[size_t(n) * C + c] * w[(size_t(e) * OC + o) * C + c];
        want[size_t(n) * OC + o] += r.weight[size_t(n) * k + j] * acc;
        max_yp = std::max(max_yp, std::abs(acc));
      }
    }
  for (double v : want) max_y = std::max(max_y, std::abs(v));

  DeviceBuffer<float> d_logits(logits), d_probs(size_t(N) * E), d_lse(N), d_wt(size_t(N) * k);
  DeviceBuffer<int32_t> d_ex(size_t(N) * k), d_counts(E), d_off(E + 1), d_row(size_t(N) * k);
  DeviceBuffer<double> d_psum(E), d_lsq(1);
  DeviceBuffer<T> d_x(x), d_w(w), d_xp(size_t(N) * k * C), d_yp(size_t(N) * k * OC),
      d_y(size_t(N) * OC);
  moe_router_forward(d_probs.get(), d_lse.get(), d_ex.get(), d_wt.get(), d_counts.get(),
                     d_psum.get(), d_lsq.get(), d_logits.get(), N, E, k);
  moe_permute<T>(d_xp.get(), d_off.get(), d_row.get(), d_x.get(), d_ex.get(), d_counts.get(), N, k,
                 E, C);
  std::vector<int32_t> offsets = to_ints(d_off.download());  // the host copy the GEMMs need
  EXPECT_EQ(offsets[4], offsets[5]);
  grouped_linear_forward<T>(d_yp.get(), d_xp.get(), d_w.get(), offsets.data(), E, C, OC);
  moe_unpermute<T>(d_y.get(), d_yp.get(), d_wt.get(), d_row.get(), N, k, OC);
  // bf16: the expert outputs and the combined output are each rounded once: |err| <=
  // 2^-9·(Σ_j w_j·|yp_j| + |y|) <= 2^-9·(max|yp| + max|y|), plus fp32 arithmetic; with 2^-8 per
  // rounding as in kGemm, tol = 2^-8·(1 + max|yp| / max|y|) relative to max|y|.
  const double tol = std::is_same_v<T, float> ? 1e-5 : kGemm<T> * (1 + max_yp / max_y);
  EXPECT_TRUE(close("route -> dispatch -> experts -> combine", d_y.download(), want, tol));
}

// ---- Capacity dropping and the LSH-compressed dispatch (kernels/cuda/lsh.cu) -------------------
// Capacity, hash ids and buckets are integers: equal to the reference exactly. The bucket sums
// are double sums rounded once (fp32: exact; bf16: one more rounding through fp32), the
// expansion and its backward a few fp32 operations rounded to T.
TEST_F(CudaMoe, CapacityKeepsFirstSlotsThenEarlierTokens) {
  const int N = 37, k = 2, E = 5, A = N * k;
  const std::vector<int32_t> expert = random_experts(N, k, E, /*skip=*/-1, 501);
  const Vec w = stored<float>(random_vec(A, 502, 0.1, 1.0));
  for (int64_t cap : {int64_t{0}, int64_t{9}, int64_t{A}}) {
    std::vector<int32_t> ek(A), ck(E + 1), dr(E);
    std::vector<float> wf(w.begin(), w.end()), wk(A);
    ref::moe_capacity(ek.data(), wk.data(), ck.data(), dr.data(), expert.data(), wf.data(), N, k, E,
                      cap);
    DeviceBuffer<int32_t> d_ex(to_vec(expert)), d_ek(A), d_ck(E + 1), d_dr(E);
    DeviceBuffer<float> d_w(w), d_wk(Vec(A, 3.0));
    moe_capacity(d_ek.get(), d_wk.get(), d_ck.get(), d_dr.get(), d_ex.get(), d_w.get(), N, k, E,
                 cap);
    const std::string tag = " cap=" + std::to_string(cap);
    EXPECT_EQ(to_ints(d_ek.download()), ek) << "expert_kept" << tag;
    EXPECT_EQ(to_ints(d_ck.download()), ck) << "counts_kept" << tag;
    EXPECT_EQ(to_ints(d_dr.download()), dr) << "dropped" << tag;
    EXPECT_EQ(d_wk.download(), Vec(wk.begin(), wk.end())) << "weight_kept" << tag;
    if (cap == 9) {
      EXPECT_GT(ck[E], 0) << "some assignment must be dropped";
    }
  }
}

TYPED_TEST(CudaMoeTyped, LshHashBucketCentroidsExpand) {
  using T = TypeParam;
  const int C = 24, L = 3, r = 4;
  // Groups of 13, 0, 17 and 10 rows; rows repeat so that buckets hold several rows.
  const std::vector<int32_t> offsets{0, 13, 13, 30, 40};
  const int G = 4, n = offsets[G];
  Vec base = stored<T>(random_vec(size_t(9) * C, 601));
  Vec x(size_t(n) * C);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < C; ++c) x[size_t(i) * C + c] = base[size_t((i * 7) % 9) * C + c];
  Vec rot = stored<float>(random_vec(size_t(L) * r * C, 602));
  std::vector<float> rot_f(rot.begin(), rot.end());
  Vec mu = stored<T>(random_vec(size_t(G) * C, 603, -0.3, 0.3));
  std::vector<int32_t> mu_row(n);
  for (int g = 0; g < G; ++g)
    for (int i = offsets[g]; i < offsets[g + 1]; ++i) mu_row[i] = g;

  DeviceBuffer<T> d_x(x), d_mu(mu);
  DeviceBuffer<float> d_rot(rot);
  DeviceBuffer<int32_t> d_mu_row(to_vec(mu_row)), d_off(to_vec(offsets));
  for (bool centred : {false, true}) {
    std::vector<uint64_t> ids(n);
    ref::lsh_hash<double>(ids.data(), x.data(), rot_f.data(), centred ? mu.data() : nullptr,
                          centred ? mu_row.data() : nullptr, n, C, L, r);
    DeviceBuffer<uint64_t> d_ids(n);
    lsh_hash<T>(d_ids.get(), d_x.get(), d_rot.get(), centred ? d_mu.get() : nullptr,
                centred ? d_mu_row.get() : nullptr, n, C, L, r);
    const Vec got = d_ids.download();
    EXPECT_EQ(std::vector<uint64_t>(got.begin(), got.end()), ids) << "ids centred=" << centred;
  }
  std::vector<uint64_t> ids(n);
  ref::lsh_hash<double>(ids.data(), x.data(), rot_f.data(), nullptr, nullptr, n, C, L, r);
  DeviceBuffer<uint64_t> d_ids(Vec(ids.begin(), ids.end()));

  // Every code kind: each row its own bucket, all L codes, a one-code prefix, one bucket per group.
  for (const std::vector<int32_t>& codes :
       {std::vector<int32_t>{L, 0, 1, -1}, std::vector<int32_t>{0, 2, L, 1}}) {
    std::vector<int32_t> pos(n), nb(G);
    ref::lsh_bucket(pos.data(), nb.data(), nullptr, ids.data(), codes.data(), offsets.data(), G, n,
                    L, r);
    DeviceBuffer<int32_t> d_codes(to_vec(codes)), d_pos(Vec(n, -5.0)), d_nb(G), d_scr(n);
    lsh_bucket(d_pos.get(), d_nb.get(), d_scr.get(), d_ids.get(), d_codes.get(), d_off.get(), G, n,
               L, r);
    EXPECT_EQ(to_ints(d_pos.download()), pos) << "pos";
    EXPECT_EQ(to_ints(d_nb.download()), nb) << "nbuckets";
    int64_t B = 0;
    for (int32_t b : nb) B += b;
    EXPECT_LT(B, n) << "the repeated rows must share buckets";

    // Centroids (mean) and bucket sums.
    Vec xc(size_t(B) * C), sum(size_t(B) * C);
    std::vector<int32_t> cnt(B);
    ref::lsh_bucket_reduce<double>(xc.data(), cnt.data(), nullptr, x.data(), pos.data(),
                                   offsets.data(), G, B, C, true);
    ref::lsh_bucket_reduce<double>(sum.data(), nullptr, nullptr, x.data(), pos.data(),
                                   offsets.data(), G, B, C, false);
    DeviceBuffer<T> d_xc(size_t(B) * C), d_sum(size_t(B) * C);
    DeviceBuffer<int32_t> d_cnt(Vec(B, -1.0));
    DeviceBuffer<double> d_acc(size_t(B) * C);
    lsh_bucket_reduce<T>(d_xc.get(), d_cnt.get(), d_acc.get(), d_x.get(), d_pos.get(), d_off.get(),
                         G, B, C, true);
    EXPECT_EQ(to_ints(d_cnt.download()), cnt) << "bucket sizes";
    const double tol = std::is_same_v<T, float> ? 0.0 : 3.9e-3;
    EXPECT_TRUE(close("centroids", d_xc.download(), stored<T>(xc), tol));
    lsh_bucket_reduce<T>(d_sum.get(), nullptr, d_acc.get(), d_x.get(), d_pos.get(), d_off.get(), G,
                         B, C, false);
    EXPECT_TRUE(close("bucket sums", d_sum.download(), stored<T>(sum), tol));

    // Expansion of expert outputs and its backward, with and without compensation.
    const Vec xcs = d_xc.download();
    const Vec yc = stored<T>(random_vec(size_t(B) * C, 610));
    const Vec dyp = stored<T>(random_vec(size_t(n) * C, 611));
    const Vec dxc = stored<T>(random_vec(size_t(B) * C, 612));
    const Vec dyc = stored<T>(random_vec(size_t(B) * C, 613));
    DeviceBuffer<T> d_yc(yc), d_dyp(dyp), d_dxc(dxc), d_dyc(dyc), d_yp(size_t(n) * C),
        d_dxp(size_t(n) * C);
    for (bool comp : {true, false}) {
      Vec yp(size_t(n) * C), dxp(size_t(n) * C);
      ref::lsh_expand<double>(yp.data(), yc.data(), x.data(), xcs.data(), pos.data(), n, C, comp);
      ref::lsh_expand_backward<double>(dxp.data(), dxc.data(), dyc.data(), dyp.data(), pos.data(),
                                       cnt.data(), n, C, comp);
      lsh_expand<T>(d_yp.get(), d_yc.get(), d_x.get(), d_xc.get(), d_pos.get(), n, C, comp);
      lsh_expand_backward<T>(d_dxp.get(), d_dxc.get(), d_dyc.get(), d_dyp.get(), d_pos.get(),
                             d_cnt.get(), n, C, comp);
      const std::string tag = comp ? " (compensate)" : "";
      EXPECT_TRUE(close("expand yp" + tag, d_yp.download(), stored<T>(yp), kCombine<T>));
      EXPECT_TRUE(
          close("expand backward dxp" + tag, d_dxp.download(), stored<T>(dxp), kCombine<T>));
    }
  }
}

}  // namespace
}  // namespace grove::cuda
