// LocalMoe (model/local_moe.h: route -> permute -> grouped expert GEMMs -> unpermute, all backend
// kernels; the CUDA backend's MoE) on the CPU backend against parallel::MoeLayer (the CPU
// backend's MoE: router, dispatcher, experts) on one rank, dropless, with capacity dropping and
// with the LSH-compressed dispatch (LshDispatcher): the same layer output, aux + z loss, input
// gradient and parameter gradients, the same drops and buckets. This ties the MoE kernels both
// backends share to the layer the parallel engine is checked with (layouts, PyTorch).
#include "model/local_moe.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/cpu/backend.h"
#include "parallel/lsh_dispatcher.h"
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

// Rows near a few centres (so that LSH buckets hold several tokens), or plain Gaussian rows.
void fill_clustered(Tensor& t, uint64_t seed, int centres) {
  const int64_t T = t.dim(0), h = t.dim(1);
  Tensor base = Tensor::empty({centres, h});
  fill(base, seed + 1, 1.0);
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < T; ++i)
    for (int64_t c = 0; c < h; ++c)
      p[i * h + c] = base.data<float>()[(i * 7 % centres) * h + c] + float(0.05 * rng.normal());
}

// One layer of each kind from the same weights; `steps` forward + backward passes on the same
// input, compared after each (gradients accumulate in both).
void RunCase(int top_k, MoeOptions m = MoeOptions{}, int steps = 1) {
  m.num_experts = 4;
  m.top_k = top_k;
  m.aux_loss_coef = 1e-2f;
  m.z_loss_coef = 1e-3f;
  const int h = 16, f = 24, T = 40;
  parallel::MoeLayer ref(m, h, f, T, nullptr, nullptr);
  if (m.lsh.enabled)
    ref.set_dispatcher(std::make_unique<parallel::LshDispatcher>(m.num_experts, h, nullptr, m.lsh));
  ref.init(/*seed=*/91, /*std=*/0.3, /*out_std=*/0.2);
  const std::vector<NamedTensor> w = ref.params(), gref = ref.grads();
  ref.zero_grads();

  LocalMoe<CpuBackend>::Scratch scratch = LocalMoe<CpuBackend>::AllocateScratch(m, h, f, T);
  LocalMoe<CpuBackend> local(m, h, f, T, nullptr, &scratch);
  std::vector<Tensor> g;
  for (const NamedTensor& nt : w) g.push_back(Tensor::zeros(nt.tensor.shape()));
  local.bind(w[0].tensor, w[1].tensor, w[2].tensor, w[3].tensor, g[0], g[1], g[2], g[3]);

  Tensor x = Tensor::empty({T, h}), dout = Tensor::empty({T, h});
  if (m.lsh.enabled) {
    fill_clustered(x, 5, 6);
  } else {
    fill(x, 5, 1.0);
  }
  fill(dout, 6, 0.5);
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
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
    EXPECT_EQ(a.dropped_per_expert, b.dropped_per_expert);
    if (m.capacity_factor > 0) {
      EXPECT_GT(b.dropped, 0) << "the capacity must drop something";
    }
    if (m.lsh.enabled) {
      const auto& lsh = static_cast<parallel::LshDispatcher&>(ref.dispatcher()).metrics();
      EXPECT_EQ(local.experts_rows(), lsh.centroids) << "the same buckets";
      if (step >= m.lsh.warmup_steps) {
        EXPECT_LT(lsh.centroids, lsh.assignments) << "nothing was compressed";
      }
    }
  }
}

TEST(LocalMoe, Top2EqualsMoeLayerOnOneRank) {
  RunCase(2);
}
TEST(LocalMoe, Top1EqualsMoeLayerOnOneRank) {
  RunCase(1);
}

// Capacity dropping: the same drops (first slots, then earlier tokens) and the same layer.
TEST(LocalMoe, CapacityEqualsMoeLayerOnOneRank) {
  MoeOptions m;
  m.capacity_factor = 0.6f;
  RunCase(2, m);
  RunCase(1, m);
}

// The LSH-compressed dispatch: the same ids, buckets, centroids, compensation and backward as
// LshDispatcher; with and without centring, compensation, the target compression; after a
// warm-up pass, and with capacity dropping.
TEST(LocalMoe, LshEqualsLshDispatcherOnOneRank) {
  MoeOptions m;
  m.lsh.enabled = true;
  m.lsh.warmup_steps = 0;
  m.lsh.min_tokens = 4;
  for (bool center : {true, false})
    for (double target : {4.0, 0.0}) {
      SCOPED_TRACE("center=" + std::to_string(center) + " target=" + std::to_string(target));
      m.lsh.center = center;
      m.lsh.target_compression = target;
      RunCase(2, m);
    }
  m.lsh.compensate = false;
  RunCase(2, m);
  m.lsh.compensate = true;
  m.lsh.warmup_steps = 1;
  RunCase(1, m, /*steps=*/2);
  m.capacity_factor = 0.8f;
  RunCase(2, m, /*steps=*/2);
}

}  // namespace
}  // namespace grove
