// The model.moe.lsh config keys and their wiring into the transformer's MoE blocks: JSON round
// trip, messages naming the field, unknown keys rejected; a Transformer with model.moe.lsh
// enabled runs every MoE block on the LshDispatcher; with min_tokens above every group (one
// token per bucket) its loss and gradients equal the plain model's bit for bit, and with
// compression they differ (the switch is live).
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/rng.h"
#include "model/transformer.h"
#include "parallel/lsh_dispatcher.h"
#include "spec/model_config.h"

namespace grove {
namespace {

ModelConfig TinyMoe() {
  ModelConfig c;
  c.vocab_size = 64;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.max_seq_len = 32;
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  return c;
}

TEST(LshModelConfig, JsonKeysRoundTripAndValidate) {
  ModelConfig c = TinyMoe();
  nlohmann::json j = ModelConfigToJson(c);
  EXPECT_FALSE(j["moe"].contains("lsh"));  // written only when enabled
  j["moe"]["lsh"] = {
      {"enabled", true}, {"num_hashes", 3}, {"rotation_dim", 16}, {"min_tokens", 5}, {"seed", 77}};
  ModelConfig d = TinyMoe();
  ASSERT_TRUE(ModelConfigFromJson(j, &d).ok());
  EXPECT_TRUE(d.moe.lsh.enabled);
  EXPECT_EQ(d.moe.lsh.num_hashes, 3);
  EXPECT_EQ(d.moe.lsh.rotation_dim, 16);
  EXPECT_EQ(d.moe.lsh.min_tokens, 5);
  EXPECT_EQ(d.moe.lsh.seed, 77u);
  EXPECT_EQ(ModelConfigToJson(d), j);
  EXPECT_TRUE(d.Validate().ok());
  d.moe.lsh.rotation_dim = 33;
  EXPECT_EQ(d.Validate().message(),
            "model config: model.moe.lsh.rotation_dim=33 must be in [1, model.d_model=32]");
  d.moe.lsh.enabled = false;  // checked only when on: a small model with the defaults is fine
  EXPECT_TRUE(d.Validate().ok());
  d.moe.lsh.enabled = true;
  d.moe.lsh.rotation_dim = 16;
  d.moe.lsh.num_hashes = 0;
  EXPECT_EQ(d.Validate().message(), "model config: model.moe.lsh.num_hashes must be >= 1");
  // The later keys: written only when they differ from their defaults, validated by name.
  ModelConfig e = TinyMoe();
  e.moe.lsh.enabled = true;
  nlohmann::json je = ModelConfigToJson(e);
  EXPECT_FALSE(je["moe"]["lsh"].contains("center"));
  je["moe"]["lsh"]["center"] = !LshOptions{}.center;
  je["moe"]["lsh"]["target_compression"] = 4.5;
  je["moe"]["lsh"]["warmup_steps"] = 30;
  je["moe"]["lsh"]["compensate"] = !LshOptions{}.compensate;
  ASSERT_TRUE(ModelConfigFromJson(je, &e).ok());
  EXPECT_EQ(e.moe.lsh.center, !LshOptions{}.center);
  EXPECT_EQ(e.moe.lsh.target_compression, 4.5);
  EXPECT_EQ(e.moe.lsh.warmup_steps, 30);
  EXPECT_EQ(e.moe.lsh.compensate, !LshOptions{}.compensate);
  EXPECT_EQ(ModelConfigToJson(e), je);
  e.moe.lsh.target_compression = 0.5;
  EXPECT_EQ(e.Validate().message(),
            "model config: model.moe.lsh.target_compression must be 0 (all num_hashes codes) or "
            ">= 1");
  e.moe.lsh.target_compression = 0;
  e.moe.lsh.warmup_steps = -1;
  EXPECT_EQ(e.Validate().message(), "model config: model.moe.lsh.warmup_steps must be >= 0");
  j["moe"]["lsh"]["hashes"] = 2;
  const Status st = ModelConfigFromJson(j, &d);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("unknown config key 'model.moe.lsh.hashes'"), std::string::npos)
      << st.message();
}

struct Step {
  float loss = 0;
  std::vector<std::vector<float>> grads;
};

Step RunModel(const ModelConfig& c, bool expect_lsh) {
  const int b = 4, s = 32;
  Transformer m(c, b, s, Recompute::kNone);
  for (int l = 0; l < c.n_layers; ++l) {
    parallel::MoeLayer* layer = m.moe_layer(l);
    EXPECT_NE(layer, nullptr);
    if (!layer) continue;
    EXPECT_EQ(dynamic_cast<parallel::LshDispatcher*>(&layer->dispatcher()) != nullptr, expect_lsh)
        << "block " << l;
  }
  std::vector<int32_t> tok(b * s), tgt(b * s);
  Rng rng(5);
  for (int i = 0; i < b * s; ++i) {
    tok[i] = int32_t(rng.next_u64() % 64);
    tgt[i] = int32_t(rng.next_u64() % 64);
  }
  Step st;
  m.zero_grads();
  st.loss = m.forward(tok.data(), tgt.data());
  m.backward();
  for (const NamedTensor& g : m.grads().named()) {
    const float* p = g.tensor.data<float>();
    st.grads.emplace_back(p, p + g.tensor.numel());
  }
  return st;
}

TEST(LshModel, TransformerUsesTheLshDispatcherWhenEnabled) {
  ModelConfig plain = TinyMoe();
  const Step ref = RunModel(plain, false);
  ModelConfig one = TinyMoe();
  one.moe.lsh.enabled = true;
  one.moe.lsh.min_tokens = 1 << 30;  // one token per bucket: the plain path, bit for bit
  const Step same = RunModel(one, true);
  EXPECT_EQ(same.loss, ref.loss);
  ASSERT_EQ(same.grads.size(), ref.grads.size());
  for (size_t i = 0; i < ref.grads.size(); ++i) EXPECT_EQ(same.grads[i], ref.grads[i]) << i;
  ModelConfig lsh = TinyMoe();
  lsh.moe.lsh.enabled = true;
  lsh.moe.lsh.rotation_dim = 2;  // 4 buckets per expert group: compresses
  lsh.moe.lsh.min_tokens = 2;
  lsh.moe.lsh.warmup_steps = 0;  // compress in this one step
  const Step comp = RunModel(lsh, true);
  EXPECT_NE(comp.loss, ref.loss);
  EXPECT_TRUE(std::isfinite(comp.loss));
}

}  // namespace
}  // namespace grove
