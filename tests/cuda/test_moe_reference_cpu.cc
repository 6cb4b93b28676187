// Host only: the MoE references that judge the CUDA and CPU kernels
// (kernels/reference/ops_reference.h, in double) against the CPU router and the single-rank
// AllToAllDispatcher (parallel/), so that the GPU kernels are held to the CPU
// semantics: top-k and tie rule, the k = 1 weight, aux / z losses and their gradient, the order of
// the permuted rows, combine and both backward stages. Links the CPU libraries (OpenBLAS, MPI), so
// it is a separate binary from test_cuda_kernels, which must link with CUDA alone.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/reference/ops_reference.h"
#include "parallel/moe_dispatcher.h"
#include "parallel/moe_router.h"
#include "spec/moe_options.h"
#include "tests/cuda/test_util.h"

namespace grove::cuda {
namespace {

using testing::close;
using testing::random_vec;
using testing::Vec;

Vec to_vec(const float* p, size_t n) {
  return Vec(p, p + n);
}
std::vector<float> to_floats(const Vec& v) {
  return std::vector<float>(v.begin(), v.end());
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
  double aux_z(double aux_coef, double z_coef) const {
    return ref::moe_router_aux_z(counts.data(), prob_sum.data(), lse_sq_sum, N, E, k, aux_coef,
                                 z_coef);
  }
};

// The CPU computes in fp32 (sums of exponentials in double); the references in double from the
// same fp32 inputs. Forward outputs: a few fp32 ulps (1e-6). Backward: the CPU's dlogits is fp32
// and then goes through an fp32 GEMM of h = 16 terms (1e-5, as Tol<float>::kGemm).
constexpr double kFwd = 1e-6, kBwd = 1e-5;

TEST(CudaMoeReference, RouterAndDispatcherMatchTheCpu) {
  const int N = 37, h = 16, E = 8;
  for (int k : {1, 2, 3}) {
    std::string tag = " k=" + std::to_string(k);
    MoeOptions cfg;
    cfg.num_experts = E;
    cfg.top_k = k;
    cfg.aux_loss_coef = 0.05f;
    cfg.z_loss_coef = 0.01f;
    cfg.capacity_factor = 0;
    parallel::Router router(cfg, h, N);
    std::vector<float> x = to_floats(random_vec(size_t(N) * h, 1 + k));
    std::vector<float> w = to_floats(random_vec(size_t(E) * h, 11 + k));
    parallel::Routing rt;
    router.forward(&rt, x.data(), w.data(), N, nullptr);

    // The same fp32 logits the CPU router computed, then the reference route.
    std::vector<float> logits(size_t(N) * E);
    cpu::linear_forward<float>(logits.data(), x.data(), w.data(), nullptr, N, h, E);
    RefRoute r(to_vec(logits.data(), logits.size()), N, E, k);
    EXPECT_EQ(rt.expert, r.expert) << tag;
    EXPECT_TRUE(
        close("cpu weight" + tag, to_vec(rt.weight.data(), rt.weight.size()), r.weight, kFwd));
    const parallel::RouterStats& st = router.stats();
    EXPECT_EQ(st.tokens, N);
    for (int e = 0; e < E; ++e) EXPECT_EQ(st.tokens_per_expert[e], r.counts[e]) << tag;
    EXPECT_NEAR(st.aux_loss, r.aux_z(double{cfg.aux_loss_coef}, 0), kFwd * st.aux_loss) << tag;
    EXPECT_NEAR(st.z_loss, r.aux_z(0, double{cfg.z_loss_coef}), kFwd * st.z_loss) << tag;
    MoeRouterLosses l = moe_router_losses(r.counts.data(), r.prob_sum.data(), r.lse_sq_sum, N, E, k,
                                          cfg.aux_loss_coef, cfg.z_loss_coef);
    EXPECT_NEAR(l.aux, st.aux_loss, kFwd * st.aux_loss) << tag;
    EXPECT_NEAR(l.z, st.z_loss, kFwd * st.z_loss) << tag;

    // Backward: the reference dlogits through the reference linear backward.
    const float loss_scale = 1.5f;
    Vec dweight = random_vec(size_t(N) * k, 21 + k);
    std::vector<float> dweight32 = to_floats(dweight), din(size_t(N) * h, 0.f),
                       dw(size_t(E) * h, 0.f);
    router.backward(din.data(), dw.data(), dweight32.data(), rt, x.data(), w.data(), loss_scale);
    Vec dlogits(size_t(N) * E), din_ref(size_t(N) * h, 0.0), dw_ref(size_t(E) * h, 0.0);
    Vec dweight_f = to_vec(dweight32.data(), dweight32.size());
    ref::moe_router_backward<double>(dlogits.data(), dweight_f.data(), r.probs.data(), r.lse.data(),
                                     r.expert.data(), r.weight.data(), r.counts.data(), N,
                                     double{cfg.aux_loss_coef}, double{cfg.z_loss_coef}, loss_scale,
                                     N, E, k);
    Vec xd = to_vec(x.data(), x.size()), wd = to_vec(w.data(), w.size());
    ref::linear_backward<double>(din_ref.data(), dw_ref.data(), nullptr, dlogits.data(), xd.data(),
                                 wd.data(), N, h, E);
    EXPECT_TRUE(close("cpu router din" + tag, to_vec(din.data(), din.size()), din_ref, kBwd));
    EXPECT_TRUE(close("cpu router dW_r" + tag, to_vec(dw.data(), dw.size()), dw_ref, kBwd));

    // Dispatcher, one rank: the permuted rows in the reference layout's order, exactly.
    const int A = N * k;
    std::vector<int32_t> offsets(E + 1), row_of(A);
    Vec xp(size_t(A) * h);
    ref::moe_permute<double>(xp.data(), offsets.data(), row_of.data(), xd.data(), r.expert.data(),
                             r.counts.data(), N, k, E, h);
    parallel::AllToAllDispatcher disp(E, h, nullptr);
    disp.preprocess(rt, x.data());
    parallel::ExpertBatch b = disp.dispatch(x.data());
    ASSERT_EQ(b.rows, A) << tag;
    for (int e = 0; e <= E; ++e) EXPECT_EQ(b.offset[e], offsets[e]) << "offset " << e << tag;
    EXPECT_TRUE(close("cpu dispatch rows" + tag, to_vec(b.x, size_t(A) * h), xp, 0.0));

    // Combine and its backward, dispatch backward.
    std::vector<float> yp = to_floats(random_vec(size_t(A) * h, 31 + k)), y(size_t(N) * h);
    disp.combine(y.data(), yp.data());
    Vec ypd = to_vec(yp.data(), yp.size()), wt = to_vec(rt.weight.data(), rt.weight.size());
    Vec y_ref(size_t(N) * h);
    ref::moe_unpermute<double>(y_ref.data(), ypd.data(), wt.data(), row_of.data(), N, k, h);
    EXPECT_TRUE(close("cpu combine" + tag, to_vec(y.data(), y.size()), y_ref, kFwd));

    std::vector<float> dout = to_floats(random_vec(size_t(N) * h, 41 + k)), dyp(size_t(A) * h),
                       dwt(A);
    disp.combine_backward(dyp.data(), dwt.data(), dout.data());
    Vec dyp_ref(size_t(A) * h), dwt_ref(A);
    Vec doutd = to_vec(dout.data(), dout.size());
    ref::moe_unpermute_backward<double>(dyp_ref.data(), dwt_ref.data(), doutd.data(), ypd.data(),
                                        wt.data(), row_of.data(), N, k, h);
    EXPECT_TRUE(close("cpu combine dy" + tag, to_vec(dyp.data(), dyp.size()), dyp_ref, kFwd));
    EXPECT_TRUE(close("cpu combine dweight" + tag, to_vec(dwt.data(), dwt.size()), dwt_ref, kFwd));

    std::vector<float> dx0 = to_floats(random_vec(size_t(N) * h, 51 + k)), dx = dx0;
    disp.dispatch_backward(dx.data(), dyp.data());
    Vec dx_ref = to_vec(dx0.data(), dx0.size());
    Vec dypd = to_vec(dyp.data(), dyp.size());
    ref::moe_permute_backward<double>(dx_ref.data(), dypd.data(), row_of.data(), N, k, h);
    EXPECT_TRUE(close("cpu dispatch backward" + tag, to_vec(dx.data(), dx.size()), dx_ref, kFwd));
  }
}

}  // namespace
}  // namespace grove::cuda
