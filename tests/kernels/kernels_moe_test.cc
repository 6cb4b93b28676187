// The CPU mixture-of-experts kernels (kernels/cpu/moe.cc):
//  - against the scalar references (kernels/reference/ops_reference.h) in float at sizes above the
//    OpenMP threshold: ids, counts and the permuted layout exactly, values to fp32 rounding;
//  - by central finite differences of their own forwards in double (router with aux and z
//    losses, unpermute, grouped linear; permute by its adjoint);
//  - against the expectations the CUDA kernels are held to (tests/cuda/test_cuda_moe.cc): the
//    hand-computed routing (tie to the lower id, the k = 1 weight, the statistics and losses) and
//    the (expert, token, slot) row order;
//  - and for determinism: the same bits with 1 and several OpenMP threads.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/ops.h"
#include "kernels/reference/ops_reference.h"
#include "tests/common/tensor_compare.h"
#include "tests/kernels/kernel_test_util.h"

namespace grove::cpu {
namespace {

using grove::testing::compare;
using grove::testing::dot;
using grove::testing::minus;
using grove::testing::numeric_grad;
using grove::testing::random_vector;
using IVec = std::vector<int32_t>;

// Float vs the double-accumulating references: the router's exp and sums are in double on both
// sides, so probabilities and weights differ by a few fp32 roundings (1e-6); the combine and the
// GEMMs sum C = 96 fp32 products (sqrt(96)·6e-8 ~ 1e-6): 1e-5 leaves headroom, while a wrong
// index or slot gives errors of order 1.
constexpr double kRouteTol = 1e-6, kRefTol = 1e-5;
// Finite differences in double (eps = 1e-5) agree to ~1e-9 relative here; see kernels_grad_test.
constexpr double kFdTol = 1e-6;
constexpr double kPrefill = 0.25;

template <typename T>
struct Route {
  std::vector<T> probs, lse, weight;
  IVec expert, counts;
  std::vector<double> prob_sum;
  double lse_sq_sum = -1;
  Route(int N, int E, int k)
      : probs(size_t(N) * E),
        lse(N),
        weight(size_t(N) * k),
        expert(size_t(N) * k, -1),
        counts(E, -1),
        prob_sum(E, -1.0) {}
};
template <typename T>
Route<T> route(const std::vector<T>& logits, int N, int E, int k) {
  Route<T> r(N, E, k);
  moe_router_forward(r.probs.data(), r.lse.data(), r.expert.data(), r.weight.data(),
                     r.counts.data(), r.prob_sum.data(), &r.lse_sq_sum, logits.data(), N, E, k);
  return r;
}
template <typename T>
Route<T> route_ref(const std::vector<T>& logits, int N, int E, int k) {
  Route<T> r(N, E, k);
  ref::moe_router_forward(r.probs.data(), r.lse.data(), r.expert.data(), r.weight.data(),
                          r.counts.data(), r.prob_sum.data(), &r.lse_sq_sum, logits.data(), N, E,
                          k);
  return r;
}

TEST(MoeKernels, RouterMatchesReference) {
  const int N = 700, E = 24;  // N·E·k above the OpenMP threshold
  for (int k : {1, 2, 4}) {
    SCOPED_TRACE("k=" + std::to_string(k));
    std::vector<float> logits = random_vector<float>(size_t(N) * E, 100 + k, -3, 3);
    logits[5] = logits[7];  // a tie inside token 0: the lower id must win
    Route<float> r = route(logits, N, E, k), q = route_ref(logits, N, E, k);
    EXPECT_EQ(r.expert, q.expert);
    EXPECT_EQ(r.counts, q.counts);
    EXPECT_TRUE(compare("probs", r.probs, q.probs, kRouteTol));
    EXPECT_TRUE(compare("lse", r.lse, q.lse, kRouteTol));
    EXPECT_TRUE(compare("weight", r.weight, q.weight, kRouteTol));
    EXPECT_TRUE(compare("prob_sum", r.prob_sum, q.prob_sum, kRouteTol));
    EXPECT_NEAR(r.lse_sq_sum, q.lse_sq_sum, kRouteTol * q.lse_sq_sum);

    const float aux = 0.05f, z = 0.01f, ls = 1.5f;
    std::vector<float> dweight = random_vector<float>(size_t(N) * k, 200 + k);
    std::vector<float> dl(size_t(N) * E, 7.f), dl_ref(size_t(N) * E);
    moe_router_backward(dl.data(), dweight.data(), r.probs.data(), r.lse.data(), r.expert.data(),
                        r.weight.data(), r.counts.data(), N, aux, z, ls, N, E, k);
    ref::moe_router_backward(dl_ref.data(), dweight.data(), r.probs.data(), r.lse.data(),
                             r.expert.data(), r.weight.data(), r.counts.data(), N, double{aux},
                             double{z}, double{ls}, N, E, k);
    EXPECT_TRUE(compare("dlogits", dl, dl_ref, kRouteTol));  // written, not accumulated

    // The losses from the kernel's statistics, as the reference computes them in double.
    MoeRouterLosses l =
        moe_router_losses(r.counts.data(), r.prob_sum.data(), r.lse_sq_sum, N, E, k, aux, z);
    EXPECT_NEAR(l.aux + l.z,
                ref::moe_router_aux_z(q.counts.data(), q.prob_sum.data(), q.lse_sq_sum, N, E, k,
                                      double{aux}, double{z}),
                1e-6 * (l.aux + l.z));
  }
}

// Two tokens, three experts, computed by hand (the same example as tests/cuda/test_cuda_moe.cc):
//   token 0, logits (0, ln 2, ln 3): p = (1, 2, 3)/6, lse = ln 6, experts (2, 1), w = (0.6, 0.4)
//   token 1, logits (1, 1, 0): p = (e, e, 1)/(2e + 1); the tie between 0 and 1 goes to 0:
//   experts (0, 1), w = (0.5, 0.5). k = 1: the raw probability (Switch), not 1.
TEST(MoeKernels, RouterHandExample) {
  const double e1 = std::exp(1.0), Z = 2 * e1 + 1;
  std::vector<double> logits{0.0, std::log(2.0), std::log(3.0), 1.0, 1.0, 0.0};
  for (bool fp32 : {false, true}) {
    SCOPED_TRACE(fp32 ? "float" : "double");
    const double tol = fp32 ? 1e-7 : 1e-15;
    auto check = [&](const auto& r) {
      EXPECT_EQ(r.expert, (IVec{2, 1, 0, 1}));
      EXPECT_TRUE(compare("probs", r.probs,
                          std::vector<double>{1 / 6.0, 2 / 6.0, 3 / 6.0, e1 / Z, e1 / Z, 1 / Z},
                          tol));
      EXPECT_TRUE(compare("lse", r.lse, std::vector<double>{std::log(6.0), std::log(Z)}, tol));
      EXPECT_TRUE(compare("weight", r.weight, std::vector<double>{0.6, 0.4, 0.5, 0.5}, tol));
      EXPECT_EQ(r.counts, (IVec{1, 2, 1}));
      std::vector<double> P{1 / 6.0 + e1 / Z, 2 / 6.0 + e1 / Z, 3 / 6.0 + 1 / Z};
      EXPECT_TRUE(compare("prob_sum", r.prob_sum, P, tol));
      const double lsq = std::pow(std::log(6.0), 2) + std::pow(std::log(Z), 2);
      EXPECT_NEAR(r.lse_sq_sum, lsq, 4 * tol);
      // f = counts / (T·k) = (1/4, 1/2, 1/4); aux = α·E·Σ f_i P_i / T, z = β·Σ lse² / T.
      MoeRouterLosses l =
          moe_router_losses(r.counts.data(), r.prob_sum.data(), r.lse_sq_sum, 2, 3, 2, 0.1f, 0.01f);
      EXPECT_NEAR(l.aux, double{0.1f} * 3 * (0.25 * P[0] + 0.5 * P[1] + 0.25 * P[2]) / 2, 1e-7);
      EXPECT_NEAR(l.z, double{0.01f} * lsq / 2, 1e-8);
    };
    if (fp32) {
      std::vector<float> lf(logits.begin(), logits.end());
      check(route(lf, 2, 3, 2));
      Route<float> r1 = route(lf, 2, 3, 1);
      EXPECT_EQ(r1.expert, (IVec{2, 0}));
      EXPECT_TRUE(compare("weight k=1", r1.weight, std::vector<double>{0.5, e1 / Z}, tol));
    } else {
      check(route(logits, 2, 3, 2));
      Route<double> r1 = route(logits, 2, 3, 1);
      EXPECT_EQ(r1.expert, (IVec{2, 0}));
      EXPECT_TRUE(compare("weight k=1", r1.weight, std::vector<double>{0.5, e1 / Z}, tol));
    }
  }
  // Permute layout of the k = 2 routing: assignments (e) = (2, 1, 0, 1) sorted by expert, then
  // token, then slot: rows 0: a2, 1: a1, 2: a3, 3: a0.
  IVec expert{2, 1, 0, 1}, counts{1, 2, 1}, offsets(4), row_of(4);
  std::vector<float> x{10, 11, 20, 21}, xp(8);
  moe_permute(xp.data(), offsets.data(), row_of.data(), x.data(), expert.data(), counts.data(), 2,
              2, 3, 2);
  EXPECT_EQ(offsets, (IVec{0, 1, 3, 4}));
  EXPECT_EQ(row_of, (IVec{3, 1, 0, 2}));
  EXPECT_EQ(xp, (std::vector<float>{20, 21, 10, 11, 20, 21, 10, 11}));
}

TEST(MoeKernels, RouterBackwardMatchesFiniteDifferences) {
  const int N = 5, E = 6;
  const float aux = 0.3f, z = 0.2f, ls = 1.7f;
  for (int k : {1, 2, 3}) {
    SCOPED_TRACE("k=" + std::to_string(k));
    std::vector<double> logits = random_vector<double>(N * E, 41 + k, -2, 2),
                        dweight = random_vector<double>(N * k, 51 + k);
    Route<double> r = route(logits, N, E, k);
    // The ids (hence f_i) stay fixed under the small perturbations: random logits have no ties.
    auto loss = [&] {
      Route<double> q = route(logits, N, E, k);
      EXPECT_EQ(q.expert, r.expert);
      return dot(dweight, q.weight) +
             double{ls} * ref::moe_router_aux_z(q.counts.data(), q.prob_sum.data(), q.lse_sq_sum, N,
                                                E, k, double{aux}, double{z});
    };
    std::vector<double> dl(N * E);
    moe_router_backward(dl.data(), dweight.data(), r.probs.data(), r.lse.data(), r.expert.data(),
                        r.weight.data(), r.counts.data(), N, aux, z, ls, N, E, k);
    EXPECT_TRUE(compare("dlogits", dl, numeric_grad(logits, loss), kFdTol));
  }
}

// Random distinct experts per token.
IVec random_experts(int N, int k, int E, uint32_t seed) {
  std::vector<double> u = random_vector<double>(size_t(N) * E, seed);
  IVec ex(size_t(N) * k);
  for (int n = 0; n < N; ++n) {
    std::vector<float> logits(u.begin() + int64_t{n} * E, u.begin() + int64_t{n + 1} * E);
    std::vector<float> p(E), l(1), w(k);
    IVec counts(E);
    double ps[64], lsq;
    moe_router_forward(p.data(), l.data(), ex.data() + int64_t{n} * k, w.data(), counts.data(), ps,
                       &lsq, logits.data(), 1, E, k);
  }
  return ex;
}
IVec count(const IVec& expert, int E) {
  IVec c(E, 0);
  for (int32_t e : expert) ++c[e];
  return c;
}

TEST(MoeKernels, PermuteCombineGroupedLinearMatchReference) {
  const int N = 300, E = 8, C = 96, OC = 40;
  for (int k : {1, 2, 3}) {
    SCOPED_TRACE("k=" + std::to_string(k));
    const int A = N * k;
    IVec expert = random_experts(N, k, E, 300 + k), counts = count(expert, E);
    std::vector<float> x = random_vector<float>(size_t(N) * C, 1), xp(size_t(A) * C),
                       xp_r(size_t(A) * C);
    IVec off(E + 1), row(A), off_r(E + 1), row_r(A);
    moe_permute(xp.data(), off.data(), row.data(), x.data(), expert.data(), counts.data(), N, k, E,
                C);
    ref::moe_permute(xp_r.data(), off_r.data(), row_r.data(), x.data(), expert.data(),
                     counts.data(), N, k, E, C);
    EXPECT_EQ(off, off_r);
    EXPECT_EQ(row, row_r);
    EXPECT_EQ(xp, xp_r);

    std::vector<float> dxp = random_vector<float>(size_t(A) * C, 2),
                       dx = random_vector<float>(size_t(N) * C, 3), dx_r(dx);
    moe_permute_backward(dx.data(), dxp.data(), row.data(), N, k, C);
    ref::moe_permute_backward(dx_r.data(), dxp.data(), row.data(), N, k, C);
    EXPECT_TRUE(compare("permute dx", dx, dx_r, kRefTol));

    std::vector<float> yp = random_vector<float>(size_t(A) * C, 4),
                       w = random_vector<float>(A, 5, 0, 1), y(size_t(N) * C, 9.f),
                       y_r(size_t(N) * C);
    moe_unpermute(y.data(), yp.data(), w.data(), row.data(), N, k, C);
    ref::moe_unpermute(y_r.data(), yp.data(), w.data(), row.data(), N, k, C);
    EXPECT_TRUE(compare("combine y", y, y_r, kRefTol));
    std::vector<float> dy = random_vector<float>(size_t(N) * C, 6), dyp(size_t(A) * C, 9.f),
                       dw(A, 9.f), dyp_r(size_t(A) * C), dw_r(A);
    moe_unpermute_backward(dyp.data(), dw.data(), dy.data(), yp.data(), w.data(), row.data(), N, k,
                           C);
    ref::moe_unpermute_backward(dyp_r.data(), dw_r.data(), dy.data(), yp.data(), w.data(),
                                row.data(), N, k, C);
    EXPECT_TRUE(compare("combine dyp", dyp, dyp_r, kRefTol));
    EXPECT_TRUE(compare("combine dweight", dw, dw_r, kRefTol));

    std::vector<float> W = random_vector<float>(size_t(E) * OC * C, 7), out(size_t(A) * OC),
                       out_r(size_t(A) * OC);
    grouped_linear_forward(out.data(), xp.data(), W.data(), off.data(), E, C, OC);
    ref::grouped_linear_forward(out_r.data(), xp.data(), W.data(), off.data(), E, C, OC);
    EXPECT_TRUE(compare("grouped out", out, out_r, kRefTol));
    std::vector<float> dout = random_vector<float>(size_t(A) * OC, 8), din(size_t(A) * C, kPrefill),
                       dW(size_t(E) * OC * C, kPrefill), din_r(din), dW_r(dW);
    grouped_linear_backward(din.data(), dW.data(), dout.data(), xp.data(), W.data(), off.data(), E,
                            C, OC);
    ref::grouped_linear_backward(din_r.data(), dW_r.data(), dout.data(), xp.data(), W.data(),
                                 off.data(), E, C, OC);
    EXPECT_TRUE(compare("grouped dinp", din, din_r, kRefTol));
    EXPECT_TRUE(compare("grouped dweight", dW, dW_r, kRefTol));
  }
}

TEST(MoeKernels, CombineAndGroupedLinearMatchFiniteDifferences) {
  const int N = 4, k = 2, E = 3, C = 3, OC = 2, A = N * k;
  IVec expert{2, 0, 1, 2, 0, 1, 2, 1}, counts = count(expert, E), off(E + 1), row(A);
  std::vector<double> x = random_vector<double>(N * C, 61), xp(A * C);
  moe_permute(xp.data(), off.data(), row.data(), x.data(), expert.data(), counts.data(), N, k, E,
              C);
  // Permute's adjoint is its backward: <P x, g> = <x, P^T g>.
  std::vector<double> g = random_vector<double>(A * C, 62), dx(N * C, kPrefill);
  moe_permute_backward(dx.data(), g.data(), row.data(), N, k, C);
  EXPECT_NEAR(dot(xp, g), dot(x, minus(dx, kPrefill)), 1e-12);

  std::vector<double> yp = random_vector<double>(A * C, 63), w = random_vector<double>(A, 64),
                      dy = random_vector<double>(N * C, 65);
  auto comb = [&] {
    std::vector<double> y(N * C);
    moe_unpermute(y.data(), yp.data(), w.data(), row.data(), N, k, C);
    return dot(y, dy);
  };
  std::vector<double> dyp(A * C), dw(A);
  moe_unpermute_backward(dyp.data(), dw.data(), dy.data(), yp.data(), w.data(), row.data(), N, k,
                         C);
  EXPECT_TRUE(compare("unpermute dyp", dyp, numeric_grad(yp, comb), kFdTol));
  EXPECT_TRUE(compare("unpermute dweight", dw, numeric_grad(w, comb), kFdTol));

  std::vector<double> W = random_vector<double>(E * OC * C, 66),
                      R = random_vector<double>(A * OC, 67);
  auto lin = [&] {
    std::vector<double> out(A * OC);
    grouped_linear_forward(out.data(), xp.data(), W.data(), off.data(), E, C, OC);
    return dot(out, R);
  };
  std::vector<double> din(A * C, kPrefill), dW(E * OC * C, kPrefill);
  grouped_linear_backward(din.data(), dW.data(), R.data(), xp.data(), W.data(), off.data(), E, C,
                          OC);
  EXPECT_TRUE(compare("grouped dinp", minus(din, kPrefill), numeric_grad(xp, lin), kFdTol));
  EXPECT_TRUE(compare("grouped dweight", minus(dW, kPrefill), numeric_grad(W, lin), kFdTol));
  // dinp may be null.
  std::vector<double> dW2(E * OC * C, kPrefill);
  grouped_linear_backward(static_cast<double*>(nullptr), dW2.data(), R.data(), xp.data(), W.data(),
                          off.data(), E, C, OC);
  EXPECT_EQ(dW2, dW);
}

TEST(MoeKernels, SameBitsForAnyThreadCount) {
  const int N = 2000, E = 16, k = 2, C = 64;
  std::vector<float> logits = random_vector<float>(size_t(N) * E, 71, -2, 2),
                     x = random_vector<float>(size_t(N) * C, 72);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Route<float> r = route(logits, N, E, k);
    IVec off(E + 1), row(N * k);
    std::vector<float> xp(size_t(N) * k * C), y(size_t(N) * C), dl(size_t(N) * E);
    moe_permute(xp.data(), off.data(), row.data(), x.data(), r.expert.data(), r.counts.data(), N, k,
                E, C);
    moe_unpermute(y.data(), xp.data(), r.weight.data(), row.data(), N, k, C);
    moe_router_backward(dl.data(), r.weight.data(), r.probs.data(), r.lse.data(), r.expert.data(),
                        r.weight.data(), r.counts.data(), N, 0.1f, 0.01f, 1.f, N, E, k);
    std::vector<double> bits(r.prob_sum);
    bits.push_back(r.lse_sq_sum);
    for (float v : y) bits.push_back(v);
    for (float v : dl) bits.push_back(v);
    for (float v : r.weight) bits.push_back(v);
    return bits;
  };
  const int max_threads = omp_get_max_threads();
  std::vector<double> one = run(1), many = run(4);
  omp_set_num_threads(max_threads);
  EXPECT_EQ(one, many);
}

TEST(MoeKernels, BadShapesAreRejected) {
  std::vector<float> logits(12), p(12), l(2), w(8);
  IVec ex(8), counts(6);
  double ps[6], lsq;
  // k > E and k above kMoeMaxTopK.
  EXPECT_THROW(moe_router_forward(p.data(), l.data(), ex.data(), w.data(), counts.data(), ps, &lsq,
                                  logits.data(), 2, 6, 7),
               Error);
  EXPECT_THROW(moe_permute_backward(p.data(), p.data(), ex.data(), 1, kMoeMaxTopK + 1, 1), Error);
  // Counts that do not sum to N·k (e.g. a group's counts).
  IVec expert{0, 1}, bad{2, 1}, off(3), row(2);
  std::vector<float> x(2), xp(4);
  EXPECT_THROW(moe_permute(xp.data(), off.data(), row.data(), x.data(), expert.data(), bad.data(),
                           2, 1, 2, 1),
               Error);
}

// Capacity dropping and the LSH kernels (kernels/cpu/lsh.cc) against the references, at sizes
// above the OpenMP thresholds: drops, ids, buckets and bucket sizes exactly; centroids and bucket
// sums are double sums rounded once (the same bits); the expansion and its backward a few fp32
// operations (the same expressions: the same bits).
TEST(MoeKernels, CapacityAndLshMatchReference) {
  const int N = 150, k = 2, E = 6, A = N * k, C = 20, L = 3, r = 5;
  IVec expert(A);
  const std::vector<float> u = random_vector<float>(A, 701, 0, 1);
  for (int n = 0; n < N; ++n) {
    expert[size_t(n) * k] = int32_t(u[size_t(n) * k] * u[size_t(n) * k] * E) % E;  // skewed
    expert[size_t(n) * k + 1] = (expert[size_t(n) * k] + 1 + n % (E - 1)) % E;
  }
  const std::vector<float> w = random_vector<float>(A, 702, 0.1, 1.0);
  for (int64_t cap : {int64_t{0}, int64_t{40}, int64_t{A}}) {
    IVec ek(A), ck(E + 1), dr(E), ek_r(A), ck_r(E + 1), dr_r(E);
    std::vector<float> wk(A), wk_r(A);
    moe_capacity(ek.data(), wk.data(), ck.data(), dr.data(), expert.data(), w.data(), N, k, E, cap);
    ref::moe_capacity(ek_r.data(), wk_r.data(), ck_r.data(), dr_r.data(), expert.data(), w.data(),
                      N, k, E, cap);
    EXPECT_EQ(ek, ek_r) << "cap=" << cap;
    EXPECT_EQ(wk, wk_r) << "cap=" << cap;
    EXPECT_EQ(ck, ck_r) << "cap=" << cap;
    EXPECT_EQ(dr, dr_r) << "cap=" << cap;
    if (cap == 40) {
      EXPECT_GT(ck[E], 0);
    }
  }

  // Rows grouped like a permute's output (one empty group), with repeats so buckets fill.
  const IVec offsets{0, 90, 90, 200, 300};
  const int G = 4, n = offsets[G];
  const std::vector<float> base = random_vector<float>(size_t(23) * C, 703);
  std::vector<float> x(size_t(n) * C);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < C; ++c) x[size_t(i) * C + c] = base[size_t((i * 5) % 23) * C + c];
  const std::vector<float> rot = random_vector<float>(size_t(L) * r * C, 704);
  const std::vector<float> mu = random_vector<float>(size_t(G) * C, 705, -0.3, 0.3);
  IVec mu_row(n);
  for (int g = 0; g < G; ++g)
    for (int i = offsets[g]; i < offsets[g + 1]; ++i) mu_row[i] = g;
  std::vector<uint64_t> ids(n), ids_r(n);
  lsh_hash<float>(ids.data(), x.data(), rot.data(), mu.data(), mu_row.data(), n, C, L, r);
  ref::lsh_hash<float>(ids_r.data(), x.data(), rot.data(), mu.data(), mu_row.data(), n, C, L, r);
  EXPECT_EQ(ids, ids_r);
  for (const IVec& codes : {IVec{L, 0, 1, -1}, IVec{2, L, 0, L}}) {
    IVec pos(n), nb(G), pos_r(n), nb_r(G);
    lsh_bucket(pos.data(), nb.data(), nullptr, ids.data(), codes.data(), offsets.data(), G, n, L,
               r);
    ref::lsh_bucket(pos_r.data(), nb_r.data(), nullptr, ids.data(), codes.data(), offsets.data(), G,
                    n, L, r);
    ASSERT_EQ(pos, pos_r);
    ASSERT_EQ(nb, nb_r);
    int64_t B = 0;
    for (int32_t b : nb) B += b;
    EXPECT_LT(B, n);
    std::vector<float> xc(size_t(B) * C), xc_r(size_t(B) * C), sum(size_t(B) * C),
        sum_r(size_t(B) * C);
    IVec cnt(B), cnt_r(B);
    std::vector<double> acc(size_t(B) * C);
    lsh_bucket_reduce<float>(xc.data(), cnt.data(), acc.data(), x.data(), pos.data(),
                             offsets.data(), G, B, C, true);
    ref::lsh_bucket_reduce<float>(xc_r.data(), cnt_r.data(), nullptr, x.data(), pos.data(),
                                  offsets.data(), G, B, C, true);
    EXPECT_EQ(cnt, cnt_r);
    EXPECT_EQ(xc, xc_r);
    lsh_bucket_reduce<float>(sum.data(), nullptr, acc.data(), x.data(), pos.data(), offsets.data(),
                             G, B, C, false);
    ref::lsh_bucket_reduce<float>(sum_r.data(), nullptr, nullptr, x.data(), pos.data(),
                                  offsets.data(), G, B, C, false);
    EXPECT_EQ(sum, sum_r);
    const std::vector<float> yc = random_vector<float>(size_t(B) * C, 706);
    const std::vector<float> dyp = random_vector<float>(size_t(n) * C, 707);
    const std::vector<float> dxc = random_vector<float>(size_t(B) * C, 708);
    for (bool comp : {true, false}) {
      std::vector<float> yp(size_t(n) * C), yp_r(size_t(n) * C), dxp(size_t(n) * C),
          dxp_r(size_t(n) * C);
      lsh_expand<float>(yp.data(), yc.data(), x.data(), xc.data(), pos.data(), n, C, comp);
      ref::lsh_expand<float>(yp_r.data(), yc.data(), x.data(), xc.data(), pos.data(), n, C, comp);
      EXPECT_EQ(yp, yp_r) << "compensate=" << comp;
      lsh_expand_backward<float>(dxp.data(), dxc.data(), sum.data(), dyp.data(), pos.data(),
                                 cnt.data(), n, C, comp);
      ref::lsh_expand_backward<float>(dxp_r.data(), dxc.data(), sum.data(), dyp.data(), pos.data(),
                                      cnt.data(), n, C, comp);
      EXPECT_EQ(dxp, dxp_r) << "compensate=" << comp;
    }
  }
}

}  // namespace
}  // namespace grove::cpu
