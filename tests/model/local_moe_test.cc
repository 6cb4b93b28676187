// LocalMoe (model/local_moe.h: route -> permute -> grouped expert GEMMs -> unpermute, all backend
// kernels; the CUDA backend's MoE) on the CPU backend against parallel::MoeLayer (the CPU
// backend's MoE: router, dispatcher, experts) on one rank, dropless: the same layer output, aux +
// z loss, input gradient and parameter gradients. This ties the MoE kernels both backends share
// to the layer the parallel engine is checked with (layouts, PyTorch).
#include "model/local_moe.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "kernels/cpu/backend.h"
#include "parallel/moe_layer.h"
#include "tests/common/tensor_compare.h"

namespace grove {
namespace {

void fill(Tensor& t, uint64_t seed, double scale) {
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(scale * rng.normal());
}

void check_close(const char* what, const Tensor& a, const Tensor& b, double tol) {
  ASSERT_EQ(a.numel(), b.numel()) << what;
  double worst = 0, norm = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    worst = std::max(worst, double(std::abs(a.data<float>()[i] - b.data<float>()[i])));
    norm = std::max(norm, double(std::abs(b.data<float>()[i])));
  }
  EXPECT_LE(worst, tol * std::max(norm, 1e-30))
      << what << ": max |diff| " << worst << " against max |value| " << norm;
}

void RunCase(int top_k) {
  MoeOptions m;
  m.num_experts = 4;
  m.top_k = top_k;
  m.aux_loss_coef = 1e-2f;
  m.z_loss_coef = 1e-3f;
  const int h = 16, f = 24, T = 40;
  parallel::MoeLayer ref(m, h, f, T, nullptr, nullptr);
  ref.init(/*seed=*/91, /*std=*/0.3, /*out_std=*/0.2);
  const std::vector<NamedTensor> w = ref.params(), gref = ref.grads();
  ref.zero_grads();

  LocalMoe<CpuBackend>::Scratch scratch = LocalMoe<CpuBackend>::AllocateScratch(m, h, f, T);
  LocalMoe<CpuBackend> local(m, h, f, T, nullptr, &scratch);
  std::vector<Tensor> g;
  for (const NamedTensor& nt : w) g.push_back(Tensor::zeros(nt.tensor.shape()));
  local.bind(w[0].tensor, w[1].tensor, w[2].tensor, w[3].tensor, g[0], g[1], g[2], g[3]);

  Tensor x = Tensor::empty({T, h}), dout = Tensor::empty({T, h});
  fill(x, 5, 1.0);
  fill(dout, 6, 0.5);
  Tensor y_ref = Tensor::zeros({T, h}), y = Tensor::zeros({T, h});
  const float loss_ref = ref.forward(y_ref.data<float>(), x.data<float>(), T);
  const float loss = local.forward(y.data<float>(), x.data<float>(), T);
  EXPECT_NEAR(loss, loss_ref, 1e-6 * std::abs(loss_ref));
  check_close("output", y, y_ref, 1e-5);

  const float loss_scale = 0.7f;
  Tensor dx_ref = Tensor::zeros({T, h}), dx = Tensor::zeros({T, h});
  ref.backward(dx_ref.data<float>(), dout.data<float>(), loss_scale);
  local.backward(dx.data<float>(), dout.data<float>(), loss_scale);
  check_close("input gradient", dx, dx_ref, 1e-5);
  for (size_t i = 0; i < g.size(); ++i)
    check_close(gref[i].name.c_str(), g[i], gref[i].tensor, 1e-5);
  const parallel::MoeMetrics a = local.metrics(), b = ref.metrics();
  EXPECT_EQ(a.tokens_per_expert, b.tokens_per_expert);
}

TEST(LocalMoe, Top2EqualsMoeLayerOnOneRank) {
  RunCase(2);
}
TEST(LocalMoe, Top1EqualsMoeLayerOnOneRank) {
  RunCase(1);
}

}  // namespace
}  // namespace grove
