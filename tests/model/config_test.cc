// ModelConfig validation: each inconsistent config gets an error naming the field.
#include "spec/model_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "model/weights.h"

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
