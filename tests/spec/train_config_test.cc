// TrainConfig: overrides, unknown keys and inconsistent settings give errors naming the field.
#include "spec/train_config.h"

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
  EXPECT_EQ(c.value().train.recompute, Recompute::kFull);
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
  // bf16 on the CPU is a valid config; whether the workers' CPUs run it is the worker's check.
  EXPECT_EQ(error_of({"train.precision=bf16"}), "OK");
  EXPECT_EQ(error_of({"train.precision=bf16", "parallel.tp=2"}), "OK");
#ifdef GROVE_HAVE_CUDA
  EXPECT_EQ(error_of({"train.device=cuda"}), "OK");
  EXPECT_EQ(error_of({"train.device=cuda", "parallel.tp=2"}), "OK");
  EXPECT_EQ(error_of({"train.device=cuda", "parallel.cp=2"}), "OK");
  EXPECT_EQ(error_of({"train.device=cuda", "model.moe.num_experts=4", "parallel.ep=2"}), "OK");
  EXPECT_EQ(error_of({"train.device=cuda", "model.moe.num_experts=4"}), "OK");
  EXPECT_EQ(
      error_of({"train.device=cuda", "model.moe.num_experts=4", "model.moe.capacity_factor=1"}),
      "OK");
  EXPECT_EQ(error_of({"train.device=cuda", "model.moe.num_experts=4", "parallel.ep=2",
                      "model.moe.lsh.enabled=true"}),
            "OK");
#else
  EXPECT_NE(error_of({"train.device=cuda"}).find("this build has no CUDA support"),
            std::string::npos);
#endif
}

// Enum fields are parsed where the JSON is read: the error names the field and the accepted
// values, and the JSON written back holds the same strings.
TEST(TrainConfig, EnumFieldsNameFieldAndAcceptedValues) {
  EXPECT_EQ(error_of({"parallel.cp_attention=star"}),
            "parallel.cp_attention must be tree or ring (got 'star')");
  EXPECT_EQ(error_of({"train.recompute=some"}),
            "train.recompute must be one of none | selective | full (got 'some')");
  EXPECT_EQ(error_of({"train.device=tpu"}), "train.device must be cpu or cuda (got 'tpu')");
  EXPECT_EQ(error_of({"train.precision=3"}),
            "config key 'train.precision' has the wrong type (got 3, expected a string)");
  auto c = LoadTrainConfig(
      "", {"train.recompute=none", "parallel.cp_attention=ring", "train.precision=fp32"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c.value().train.recompute, Recompute::kNone);
  EXPECT_EQ(c.value().parallel.cp_attention, CpAttention::kRing);
  EXPECT_EQ(c.value().train.precision, Precision::kFp32);
  EXPECT_EQ(c.value().train.device, Device::kCPU);
  const nlohmann::json j = c.value().ToJson();
  EXPECT_EQ(j["train"]["recompute"], "none");
  EXPECT_EQ(j["train"]["precision"], "fp32");
  EXPECT_EQ(j["train"]["device"], "cpu");
  EXPECT_EQ(j["parallel"]["cp_attention"], "ring");
}

// The layout checks TrainConfig and the planner share.
TEST(TrainConfig, TensorParallelConflictNamesTheField) {
  ModelConfig m;  // 8 heads, ffn 704, vocab 8192
  EXPECT_EQ(TensorParallelConflict(m, 128, 2, 1, true), "");
  EXPECT_EQ(TensorParallelConflict(m, 128, 3, 1, true), "tp=3 does not divide model.n_heads=8");
  m.n_kv_heads = 2;
  EXPECT_EQ(TensorParallelConflict(m, 128, 4, 1, true),
            "tp=4 does not divide the kv heads (model.n_kv_heads)=2");
  m.n_kv_heads = 0;
  EXPECT_EQ(TensorParallelConflict(m, 100, 8, 2, true),
            "tp=8 does not divide the sequence shard train.seq_len / parallel.cp=50");
  EXPECT_EQ(TensorParallelConflict(m, 100, 8, 2, false), "");
  EXPECT_EQ(error_of({"parallel.tp=3"}),
            "train config: parallel.tp=3 does not divide model.n_heads=8");
}

TEST(TrainConfig, ResolveLayoutChecksTheGrid) {
  auto c = LoadTrainConfig("", {"parallel.tp=2"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  TrainConfig t = c.value();
  ASSERT_TRUE(t.ResolveLayout(4).ok());
  EXPECT_EQ(t.parallel.dp, 2);
  TrainConfig odd = c.value();
  odd.parallel.dp = 3;
  EXPECT_EQ(odd.ResolveLayout(4).message(),
            "parallel: tp=2 × cp=1 × dp=3 ≠ world 4 (world: the number of MPI ranks)");
  TrainConfig zero = c.value();
  zero.parallel.tp = 0;
  EXPECT_EQ(zero.ResolveLayout(4).message(),
            "parallel: tp=0: parallel sizes must be at least 1 (world: the number of MPI ranks)");
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
