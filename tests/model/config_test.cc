// ModelConfig validation: each inconsistent config gets an error naming the field.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "model/weights.h"
#include "spec/model_config.h"

namespace grove {
namespace {

std::string error_of(const ModelConfig& c) {
  Status s = c.Validate();
  return s.ok() ? "OK" : s.message();
}

TEST(ModelConfig, DefaultsAreValid) {
  EXPECT_TRUE(ModelConfig{}.Validate().ok());
}

TEST(ModelConfig, HeadsMustDivideDModel) {
  ModelConfig c;
  c.d_model = 250;
  c.n_heads = 8;
  EXPECT_NE(error_of(c).find("model.n_heads=8 does not divide model.d_model=250"),
            std::string::npos)
      << error_of(c);
}

TEST(ModelConfig, KvHeadsMustDivideHeads) {
  ModelConfig c;
  c.n_kv_heads = 3;
  EXPECT_NE(error_of(c).find("model.n_kv_heads=3"), std::string::npos) << error_of(c);
}

TEST(ModelConfig, OddHeadDimRejectedForRope) {
  ModelConfig c;
  c.d_model = 24;
  c.n_heads = 8;  // head dim 3
  EXPECT_NE(error_of(c).find("must be even for RoPE"), std::string::npos) << error_of(c);
}

// model.attention=mla: the keys, their defaults (DeepSeek-V2's ratios to d_model/n_heads), a JSON
// round trip, and each bad value named.
TEST(ModelConfig, MlaKeysDefaultsAndRoundTrip) {
  ModelConfig c;
  ASSERT_TRUE(
      ModelConfigFromJson(
          {{"d_model", 256}, {"n_heads", 8}, {"attention", "mla"}, {"mla", {{"q_lora_rank", 96}}}},
          &c)
          .ok());
  ASSERT_TRUE(c.Validate().ok()) << c.Validate().message();
  EXPECT_TRUE(c.is_mla());
  EXPECT_EQ(c.mla_kv_rank(), 128);  // 4·32
  EXPECT_EQ(c.mla_nope_dim(), 32);
  EXPECT_EQ(c.mla_rope_dim(), 16);
  EXPECT_EQ(c.mla_v_dim(), 32);
  EXPECT_EQ(c.attn_qk_dim(), 48);
  EXPECT_EQ(c.kv_heads(), 8);
  ModelConfig back;
  ASSERT_TRUE(ModelConfigFromJson(ModelConfigToJson(c), &back).ok());
  EXPECT_EQ(ModelConfigToJson(back), ModelConfigToJson(c));
  // The parameter count is the layout's (no padding: multiples of 8 everywhere here).
  EXPECT_EQ(c.num_parameters(), ParamLayout::Of(c).size);
  // An MHA config's JSON carries no MLA keys (configs and checkpoints of MHA models unchanged).
  EXPECT_FALSE(ModelConfigToJson(ModelConfig{}).contains("mla"));
}

TEST(ModelConfig, MlaBadValuesNamed) {
  auto mla = [] {
    ModelConfig c;
    c.attention = Attention::kMla;
    return c;
  };
  ModelConfig c = mla();
  c.mla.qk_rope_head_dim = 5;
  EXPECT_NE(error_of(c).find("model.mla.qk_rope_head_dim=5 must be even"), std::string::npos)
      << error_of(c);
  c = mla();
  c.mla.v_head_dim = 64;  // > qk 32 + 16
  EXPECT_NE(error_of(c).find("model.mla.v_head_dim=64 must be <= qk_nope_head_dim + "
                             "qk_rope_head_dim = 48"),
            std::string::npos)
      << error_of(c);
  c = mla();
  c.mla.kv_lora_rank = -1;
  EXPECT_NE(error_of(c).find("model.mla.kv_lora_rank=-1 must be >= 0"), std::string::npos)
      << error_of(c);
  c = mla();
  c.n_kv_heads = 2;
  EXPECT_NE(error_of(c).find("model.n_kv_heads=2 applies to model.attention=mha only"),
            std::string::npos)
      << error_of(c);
  ModelConfig j;
  Status s = ModelConfigFromJson({{"attention", "gqa"}}, &j);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.attention must be mha or mla (got 'gqa')"), std::string::npos)
      << s.message();
  s = ModelConfigFromJson({{"attention", "mla"}, {"mla", {{"kv_rank", 8}}}}, &j);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.mla.kv_rank"), std::string::npos) << s.message();
}

TEST(ModelConfig, UnknownKeyNamed) {
  ModelConfig c;
  Status s = ModelConfigFromJson({{"d_model", 64}, {"n_layer", 2}}, &c);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("unknown config key 'model.n_layer'"), std::string::npos)
      << s.message();
}

TEST(ModelConfig, WrongTypeNamed) {
  ModelConfig c;
  Status s = ModelConfigFromJson({{"d_model", "big"}}, &c);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'model.d_model' has the wrong type"), std::string::npos)
      << s.message();
}

TEST(ModelConfig, JsonRoundTrip) {
  ModelConfig c;
  c.d_model = 96;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  ModelConfig d;
  ASSERT_TRUE(ModelConfigFromJson(ModelConfigToJson(c), &d).ok());
  EXPECT_EQ(ModelConfigToJson(c), ModelConfigToJson(d));
}

// MFU's numerator, counted by hand for the default model: per token 6 FLOPs per matmul weight
// (q, k, v, o: 4·h², SwiGLU: 3·h·f per layer, and the LM head V·h; norms are not matmuls but are
// parameters, and count as in PaLM's 6N), plus attention 4·s²·d per head per sequence, x3.
TEST(ModelConfig, TrainingFlopsCountedByHand) {
  ModelConfig c;  // V 8192, h 256, L 4, 8 heads, f 704
  ASSERT_EQ(c.ffn(), 704);
  const double h = 256, f = 704, V = 8192, L = 4, batch = 2, seq = 16;
  const double params = L * (4 * h * h + 3 * h * f + 2 * h) + h + V * h;  // + wte: not a matmul
  const double attn = 4.0 * seq * seq * (h / 8) * 8 * batch * L;
  EXPECT_DOUBLE_EQ(c.training_flops(batch, seq), 6.0 * params * batch * seq + 3.0 * attn);
}

// Weights::Init fills large models on several threads; every tensor must still hold exactly the
// draws of its own stream derive_seed(seed, index), whatever thread filled it.
TEST(WeightsInit, EveryTensorDrawsItsOwnStream) {
  ModelConfig c;  // 8192 x 256 embeddings alone exceed the threaded-fill threshold
  c.seed = 99;
  Weights w = Weights::Init(c);
  const std::vector<NamedTensor> named = w.named();
  const double out_std = c.init_std / std::sqrt(2.0 * c.n_layers);
  for (size_t i = 0; i < named.size(); ++i) {
    const float* p = named[i].tensor.data<float>();
    if (named[i].tensor.ndim() == 1) {
      EXPECT_EQ(p[0], 1.0f) << named[i].name;
      continue;
    }
    const bool out = named[i].name.ends_with(".wo") || named[i].name.ends_with("w_down");
    Rng rng(derive_seed(c.seed, i));
    for (int j = 0; j < 16; ++j)
      ASSERT_EQ(p[j], static_cast<float>((out ? out_std : c.init_std) * rng.normal()))
          << named[i].name << "[" << j << "]";
  }
  Weights again = Weights::Init(c);
  const std::vector<NamedTensor> b = again.named();
  for (size_t i = 0; i < named.size(); ++i)
    ASSERT_EQ(0, std::memcmp(named[i].tensor.raw(), b[i].tensor.raw(), b[i].tensor.bytes()));
}

}  // namespace
}  // namespace grove
