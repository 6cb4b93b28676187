// The MoE layer against a PyTorch re-implementation (moe_reference.py): forward output, aux and z
// losses, the routing, and the gradients of the input, the router and every expert weight, within
// 1e-4 relative (docs/testing.md), dropless and with capacity dropping, and with only the aux/z
// losses driving the router (k = 1, dout = 0).
//
// Why 1e-4: the reference runs in float64 on the same fp32 inputs and weights, so the difference is
// Grove's fp32 rounding alone — dot products of ≤ 48 terms, a softmax over E ≤ 8, and weight
// gradients summed over ≤ 48·k rows — about 1e-6 relative in practice. The routing is chosen
// with a top-k margin > 1e-4 (the oracle asserts it), so fp32 and fp64 pick the same experts. A
// wrong sign, scale, missing term (e.g. the aux loss) or mis-routed row is O(1e-2..1) relative.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "parallel/moe_layer.h"
#include "tests/common/tensor_compare.h"
#include "tests/common/torch_oracle.h"

namespace grove::parallel {
namespace {

struct Case {
  std::string name;
  int T, h, f, E, k;
  float aux, z, cf, loss_scale;
  int seed;
  bool dout_zero;
  std::string json() const {
    return "{\"T\":" + std::to_string(T) + ",\"h\":" + std::to_string(h) +
           ",\"f\":" + std::to_string(f) + ",\"E\":" + std::to_string(E) +
           ",\"k\":" + std::to_string(k) + ",\"aux\":" + std::to_string(aux) +
           ",\"z\":" + std::to_string(z) + ",\"cf\":" + std::to_string(cf) +
           ",\"loss_scale\":" + std::to_string(loss_scale) + ",\"seed\":" + std::to_string(seed) +
           ",\"dout_zero\":" + (dout_zero ? "true" : "false") + "}";
  }
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

SafetensorsFile RunOracle(const Case& c) {
  std::string args = "'";
  args += c.json();
  args += "'";
  return testing::RunTorchOracle("tests/parallel_moe/moe_reference.py", "moe_" + c.name, args);
}

class MoeVsTorch : public ::testing::TestWithParam<Case> {};

TEST_P(MoeVsTorch, ForwardLossesAndEveryGradient) {
  const Case& c = GetParam();
  SafetensorsFile ref = RunOracle(c);
  ASSERT_FALSE(ref.tensors.empty());
  MoeOptions cfg;
  cfg.num_experts = c.E;
  cfg.top_k = c.k;
  cfg.aux_loss_coef = c.aux;
  cfg.z_loss_coef = c.z;
  cfg.capacity_factor = c.cf;
  MoeLayer layer(cfg, c.h, c.f, c.T, nullptr, nullptr);
  std::vector<NamedTensor> full;
  for (const char* n : {"router", "experts.w_gate", "experts.w_up", "experts.w_down"}) {
    full.push_back({n, ref.tensors.at(n)});
  }
  layer.load_full(full);

  std::vector<float> out(size_t(c.T) * c.h), din(out.size(), 0.0f);
  const float total = layer.forward(out.data(), ref.tensors["x"].data<float>(), c.T);
  layer.zero_grads();
  layer.backward(din.data(), ref.tensors["dout"].data<float>(), c.loss_scale);

  const double aux = ref.tensors["aux"].data<double>()[0], z = ref.tensors["z"].data<double>()[0];
  const float got_aux = layer.aux_loss(), got_z = layer.z_loss();
  EXPECT_TRUE(testing::compare("aux", &got_aux, &aux, 1, 1e-4));
  EXPECT_TRUE(testing::compare("z", &got_z, &z, 1, 1e-4));
  EXPECT_FLOAT_EQ(total, got_aux + got_z);
  EXPECT_TRUE(testing::compare("out", out.data(), ref.tensors["out"].data<double>(),
                               int64_t(out.size()), 1e-4));
  EXPECT_TRUE(testing::compare("grad.x", din.data(), ref.tensors["grad.x"].data<double>(),
                               int64_t(din.size()), 1e-4));
  for (const NamedTensor& g : layer.grads()) {
    const Tensor& r = ref.tensors.at("grad." + g.name);
    ASSERT_EQ(r.numel(), g.tensor.numel()) << g.name;
    EXPECT_TRUE(testing::compare("grad." + g.name, g.tensor.data<float>(), r.data<double>(),
                                 r.numel(), 1e-4));
  }
  // Routing and dropping agree with the reference, and the metrics count the drops.
  const int32_t* kept = ref.tensors["kept"].data<int32_t>();
  int64_t dropped = 0;
  for (int64_t i = 0; i < int64_t(c.T) * c.k; ++i) dropped += kept[i] == 0;
  const MoeMetrics m = layer.metrics();
  EXPECT_EQ(m.dropped, dropped);
  EXPECT_EQ(m.tokens, c.T);
  if (c.cf > 0) {
    EXPECT_GT(dropped, 0) << "the capacity case should drop something";
  }
  const int32_t* ex = ref.tensors["expert"].data<int32_t>();
  std::vector<int64_t> load(c.E, 0);
  for (int64_t i = 0; i < int64_t(c.T) * c.k; ++i) ++load[ex[i]];
  EXPECT_EQ(m.tokens_per_expert, load);
}

// aux/z coefficients are raised above the defaults so their gradients are a visible part of the
// router gradient (with dout = 0 in "aux_z_only" they are all of it).
INSTANTIATE_TEST_SUITE_P(
    Cases, MoeVsTorch,
    ::testing::Values(Case{"dropless_k2", 48, 32, 48, 8, 2, 0.1f, 0.05f, 0.0f, 2.0f, 1, false},
                      Case{"capacity_k2", 48, 32, 48, 8, 2, 0.1f, 0.05f, 1.0f, 1.5f, 3, false},
                      Case{"switch_k1", 40, 16, 24, 4, 1, 0.1f, 0.05f, 0.0f, 2.0f, 7, false},
                      Case{"aux_z_only_k1", 40, 16, 24, 4, 1, 0.1f, 0.05f, 0.0f, 3.0f, 5, true}),
    [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
}  // namespace grove::parallel
