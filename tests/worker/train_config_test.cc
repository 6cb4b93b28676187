// TrainConfig: overrides, unknown keys and inconsistent settings give errors naming the field.
#include "worker/train_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace grove {
namespace {

std::string error_of(const std::vector<std::string>& overrides, const std::string& path = "") {
  auto c = LoadTrainConfig(path, overrides);
  return c.ok() ? "OK" : c.status().message();
}

TEST(TrainConfig, OverridesApply) {
  auto c = LoadTrainConfig(
      "", {"train.lr=0.01", "model.d_model=128", "train.recompute=full", "out_dir=runs/x"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_FLOAT_EQ(c.value().train.lr, 0.01f);
  EXPECT_EQ(c.value().model.d_model, 128);
  EXPECT_EQ(c.value().train.recompute, "full");
  EXPECT_EQ(c.value().out_dir, "runs/x");
}

TEST(TrainConfig, UnknownKeys) {
  EXPECT_NE(error_of({"train.learning_rate=1"}).find("unknown config key 'train.learning_rate'"),
            std::string::npos);
  EXPECT_NE(error_of({"optim.lr=1"}).find("unknown config key 'config.optim'"), std::string::npos)
      << error_of({"optim.lr=1"});
}

TEST(TrainConfig, SeqLongerThanRopeTable) {
  const std::string e = error_of({"model.max_seq_len=64", "train.seq_len=128"});
  EXPECT_NE(e.find("train.seq_len=128 is longer than model.max_seq_len=64"), std::string::npos)
      << e;
}

TEST(TrainConfig, BadRecomputeAndHeads) {
  EXPECT_NE(error_of({"train.recompute=some"}).find("none | selective | full"), std::string::npos);
  EXPECT_NE(error_of({"model.n_heads=7"}).find("model.n_heads=7 does not divide"),
            std::string::npos);
}

TEST(TrainConfig, MissingAndInvalidFiles) {
  EXPECT_NE(error_of({}, "/nonexistent/cfg.json").find("cannot read config file /nonexistent"),
            std::string::npos);
  const std::string p = (std::filesystem::temp_directory_path() / "grove_bad_cfg.json").string();
  std::ofstream(p) << "{ not json";
  EXPECT_NE(error_of({}, p).find("is not a valid JSON object"), std::string::npos);
  std::filesystem::remove(p);
}

TEST(TrainConfig, DeviceAndPrecision) {
  EXPECT_NE(error_of({"train.device=tpu"}).find("train.device must be cpu or cuda"),
            std::string::npos);
  EXPECT_NE(error_of({"train.precision=fp16"}).find("train.precision must be auto, bf16 or fp32"),
            std::string::npos);
  EXPECT_NE(error_of({"train.precision=bf16"}).find("needs train.device=cuda"), std::string::npos);
#ifdef GROVE_HAVE_CUDA
  EXPECT_EQ(error_of({"train.device=cuda"}), "OK");
  EXPECT_NE(error_of({"train.device=cuda", "parallel.tp=2"}).find("set parallel.tp"),
            std::string::npos);
  EXPECT_EQ(error_of({"train.device=cuda", "model.moe.num_experts=4"}), "OK");
  EXPECT_NE(
      error_of({"train.device=cuda", "model.moe.num_experts=4", "model.moe.capacity_factor=1"})
          .find("set model.moe.capacity_factor=0"),
      std::string::npos);
#else
  EXPECT_NE(error_of({"train.device=cuda"}).find("this build has no CUDA support"),
            std::string::npos);
#endif
}

TEST(TrainConfig, RoundTrip) {
  auto c = LoadTrainConfig("", {"train.steps=7", "model.n_kv_heads=4"});
  ASSERT_TRUE(c.ok());
  auto d = TrainConfigFromJson(c.value().ToJson());
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(c.value().ToJson(), d.value().ToJson());
}

}  // namespace
}  // namespace grove
