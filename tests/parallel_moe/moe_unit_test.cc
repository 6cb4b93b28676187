// Single-process checks of the MoE layer with closed-form answers: config validation messages,
// capacity dropping on forced routing, parameter init/slicing across ep layouts, the stash size,
// and central finite differences of the whole layer's loss (an oracle independent of PyTorch).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/rng.h"
#include "parallel/moe_layer.h"

namespace grove::parallel {
namespace {

// The layer's settings with 8 experts (MoeOptions defaults to 0 experts: a dense model).
MoeOptions EightExperts() {
  MoeOptions c;
  c.num_experts = 8;
  return c;
}

TEST(MoeOptions, ValidateNamesTheField) {
  EXPECT_EQ(MoeOptions{}.Validate(1).message(), "moe.num_experts=0 must be >= 1");
  MoeOptions c = EightExperts();
  EXPECT_TRUE(c.Validate(4).ok());
  c.num_experts = 6;
  EXPECT_EQ(c.Validate(4).message(), "moe.num_experts=6 is not divisible by parallel.ep=4");
  c = EightExperts();
  c.top_k = 9;
  EXPECT_EQ(c.Validate(1).message(), "moe.top_k=9 must be in [1, moe.num_experts=8]");
  c = EightExperts();
  c.capacity_factor = -1;
  EXPECT_EQ(c.Validate(1).message(), "moe.capacity_factor=-1 must be >= 0 (0: dropless)");
  c = EightExperts();
  c.aux_loss_coef = -0.5f;
  EXPECT_EQ(c.Validate(1).message(), "moe.aux_loss_coef=-0.5 must be >= 0");
  c = EightExperts();
  c.expert_ffn = 0;
  EXPECT_EQ(c.expert_hidden(96), 96);
  c.expert_ffn = 32;
  EXPECT_EQ(c.expert_hidden(96), 32);
}

// Zero router: every token picks expert 0 (k = 1). Capacity ceil(1.0·16·1/4) = 4: the first four
// tokens are processed, the other twelve dropped (output exactly 0, counted).
TEST(MoeLayer, CapacityDropsLaterTokensOnForcedRouting) {
  MoeOptions cfg;
  cfg.num_experts = 4;
  cfg.top_k = 1;
  cfg.capacity_factor = 1.0f;
  const int T = 16, h = 8, f = 12;
  MoeLayer layer(cfg, h, f, T, nullptr, nullptr);
  layer.init(5, 0.3, 0.3);
  layer.params()[0].tensor.zero();
  std::vector<float> x(T * h), out(T * h, 7.0f);
  Rng rng(1);
  for (float& v : x) v = float(rng.normal());
  layer.forward(out.data(), x.data(), T);
  for (int t = 0; t < T; ++t) {
    double norm = 0;
    for (int c = 0; c < h; ++c) norm += std::fabs(out[t * h + c]);
    if (t < 4) {
      EXPECT_GT(norm, 0) << "token " << t;
    } else {
      EXPECT_EQ(norm, 0) << "token " << t;
    }
  }
  const MoeMetrics m = layer.metrics();
  EXPECT_EQ(m.dropped, 12);
  EXPECT_EQ(m.dropped_per_expert, (std::vector<int64_t>{12, 0, 0, 0}));
  EXPECT_EQ(m.tokens_per_expert, (std::vector<int64_t>{16, 0, 0, 0}));
  // Dropped tokens get no gradient through the experts; with a zero router and uniform
  // probabilities the aux and z gradients vanish too (softmax backward of a uniform dp).
  std::vector<float> dout(T * h, 1.0f), din(T * h, 0.0f);
  layer.backward(din.data(), dout.data(), 1.0f);
  for (int t = 4; t < T; ++t) {
    for (int c = 0; c < h; ++c) EXPECT_NEAR(din[t * h + c], 0.0f, 1e-6f) << t << "," << c;
  }
}

TEST(MoeLayer, InitKeepsThisRanksExpertsOfTheFullWeights) {
  const MoeOptions cfg = EightExperts();
  const int h = 8, f = 4;
  const std::vector<NamedTensor> full = MoeLayer::init_full(cfg, h, f, 42, 0.1, 0.05);
  ASSERT_EQ(full.size(), 4u);
  // Standalone layers built "as" ep rank r: slice_experts of the full tensors.
  for (int ep : {1, 2, 4}) {
    for (int r = 0; r < ep; ++r) {
      for (int i = 1; i < 4; ++i) {
        const Tensor s = MoeLayer::slice_experts(full[i].tensor, ep, r);
        ASSERT_EQ(s.dim(0), 8 / ep);
        const int64_t per = s.numel();
        EXPECT_EQ(0, std::memcmp(s.data<float>(), full[i].tensor.data<float>() + r * per,
                                 sizeof(float) * per));
      }
    }
  }
  MoeLayer layer(cfg, h, f, 4, nullptr, nullptr);
  layer.init(42, 0.1, 0.05);
  const std::vector<NamedTensor> p = layer.params();
  const char* names[] = {"router", "experts.w_gate", "experts.w_up", "experts.w_down"};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(p[i].name, names[i]);
    EXPECT_EQ(layer.grads()[i].name, names[i]);
    EXPECT_EQ(0, std::memcmp(p[i].tensor.raw(), full[i].tensor.raw(), full[i].tensor.bytes()));
  }
}

TEST(MoeLayer, StashBytesCountsWhatBackwardKeeps) {
  const MoeOptions cfg = EightExperts();  // E = 8, k = 2, dropless: R = S = T·k rows on one rank
  const int T = 10, h = 8, f = 6, E = 8, k = 2;
  MoeLayer layer(cfg, h, f, T, nullptr, nullptr);
  EXPECT_EQ(layer.stash_bytes(), 0u);
  layer.init(1, 0.2, 0.2);
  std::vector<float> x(T * h, 0.5f), out(T * h);
  layer.forward(out.data(), x.data(), T);
  const size_t A = T * k, R = A;
  const size_t want = 4 * T * h                // input
                      + 4 * (T * E + T)        // probs, lse
                      + A * (4 + 4 + 1)        // routing
                      + 4 * A + 4 * 2 * R * h  // weights, expert input, returned outputs
                      + 8 * (R + A)            // permutation both ways
                      + 4 * 2 * R * f;         // gate, up
  EXPECT_EQ(layer.stash_bytes(), want);
}

// Central differences of L = Σ out·dout + s·(aux + z) in fp32 against the analytic gradient.
// Tolerance 1e-3 relative to the largest sampled gradient (|g| ≈ 3): with ε = 1e-2 the
// truncation error ε²/6·L''' is ≈ 1e-5, and the fp32 rounding of out (≈ 1e-7 relative, |L| ≈ 10)
// divided by 2ε adds ≈ 5e-5 absolute; observed ≤ 3e-5. Dropping the z-loss gradient gives 2e-2,
// a wrong sign or a missing renormalisation term O(1e-1..1). The routing does not change under
// the perturbation (checked), so L is smooth there.
TEST(MoeLayer, GradientsMatchFiniteDifferences) {
  MoeOptions cfg;
  cfg.num_experts = 4;
  cfg.top_k = 2;
  cfg.aux_loss_coef = 0.5f;
  cfg.z_loss_coef = 0.2f;
  const int T = 12, h = 6, f = 8;
  const float scale = 2.0f;
  MoeLayer layer(cfg, h, f, T, nullptr, nullptr);
  layer.init(9, 0.4, 0.4);
  std::vector<float> x(T * h), dout(T * h), out(T * h), din(T * h, 0.0f);
  Rng rng(3);
  for (float& v : x) v = float(rng.normal());
  for (float& v : dout) v = float(rng.normal());
  auto loss = [&](std::vector<int64_t>* load) {
    const float aux_z = layer.forward(out.data(), x.data(), T);
    double l = double(scale) * aux_z;
    for (int i = 0; i < T * h; ++i) l += double(out[i]) * dout[i];
    if (load) *load = layer.metrics().tokens_per_expert;
    return l;
  };
  std::vector<int64_t> load0, load;
  loss(&load0);
  layer.zero_grads();
  layer.backward(din.data(), dout.data(), scale);
  struct Target {
    const char* name;
    float* p;
    const float* g;
    int64_t n;
  };
  std::vector<NamedTensor> params = layer.params(), grads = layer.grads();
  std::vector<Target> targets = {{"x", x.data(), din.data(), T * h}};
  for (int i = 0; i < 4; ++i) {
    targets.push_back({params[i].name.c_str(), params[i].tensor.data<float>(),
                       grads[i].tensor.data<float>(), params[i].tensor.numel()});
  }
  const float eps = 1e-2f;
  for (const Target& t : targets) {
    double worst = 0, max_g = 0;
    for (int64_t i = 0; i < t.n; i += std::max<int64_t>(1, t.n / 12)) {
      const float keep = t.p[i];
      t.p[i] = keep + eps;
      const double lp = loss(&load);
      EXPECT_EQ(load, load0) << t.name << "[" << i << "] changed the routing";
      t.p[i] = keep - eps;
      const double lm = loss(&load);
      t.p[i] = keep;
      const double fd = (lp - lm) / (2.0 * eps);
      worst = std::max(worst, std::fabs(fd - t.g[i]));
      max_g = std::max(max_g, std::fabs(double(t.g[i])));
    }
    EXPECT_GT(max_g, 0) << t.name;
    EXPECT_LE(worst / max_g, 1e-3)
        << t.name << ": max |fd - analytic| " << worst << ", max |analytic| " << max_g;
  }
}

}  // namespace
}  // namespace grove::parallel
