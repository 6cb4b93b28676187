// ModelConfig validation: each inconsistent config gets an error naming the field.
#include "model/config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

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

}  // namespace
}  // namespace grove
