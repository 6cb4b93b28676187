// train.device=cuda end to end through the Trainer on the Brown corpus: the fp32 GPU loss curve
// equals the CPU one (same data, same initial weights, same AdamW), bf16 mixed precision follows
// it closely, and a checkpoint written by the GPU run resumes on the CPU with the same weights.
// Skips with one line when no CUDA device is present. GROVE_GPU_TRAIN_TEST_SMALL=1 (set for the
// CUDA emulator's run, test_gpu_train_emu) runs a smaller model for fewer steps, same tolerances.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "core/tensor.h"
#include "worker/trainer.h"

namespace grove {
namespace {

namespace fs = std::filesystem;

std::string DataDir() {
  const char* d = std::getenv("GROVE_DATA_DIR");
  return d ? d : "runs/data-brown-8192";
}

// The emulator's size: its GEMMs are plain double loops and every CUDA thread a fiber, so the
// default size would take minutes there.
bool Small() {
  const char* s = std::getenv("GROVE_GPU_TRAIN_TEST_SMALL");
  return s != nullptr && std::string(s) == "1";
}
int Steps() {
  return Small() ? 8 : 20;
}

TrainConfig SmallRun(const std::string& out_dir, const std::string& device,
                     const std::string& precision) {
  const bool small = Small();
  const std::string d = small ? "64" : "128", layers = small ? "1" : "2", seq = small ? "32" : "64",
                    batch = small ? "4" : "8";
  // Small: a larger rate and a shorter warmup, so that 8 steps learn as much as 20 do.
  const std::string lr = small ? "0.01" : "0.003", warmup = small ? "2" : "5";
  auto c = LoadTrainConfig(
      "", {"model.d_model=" + d, "model.n_layers=" + layers, "model.n_heads=4",
           "model.n_kv_heads=2", "model.max_seq_len=" + seq, "train.seq_len=" + seq,
           "train.batch_size=" + batch, "train.lr=" + lr, "train.warmup_steps=" + warmup,
           "train.steps=" + std::to_string(Steps()), "train.eval_every=0", "train.eval_batches=4",
           "train.checkpoint_every=0", "train.device=" + device, "train.precision=" + precision,
           "data.dir=" + DataDir(), "out_dir=" + out_dir});
  EXPECT_TRUE(c.ok()) << c.status().message();
  return c.value();
}

class GpuTrain : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) {
      const char* req = std::getenv("GROVE_REQUIRE_GPU");
      if (req != nullptr && std::string(req) == "1") FAIL() << "GROVE_REQUIRE_GPU=1: no device";
      GTEST_SKIP() << "no CUDA device found: skipping GPU training tests";
    }
    if (!fs::exists(DataDir() + "/val.bin"))
      FAIL() << "prepared Brown dataset not found in " << DataDir() << ": run launch/setup.sh";
    base_ = (fs::temp_directory_path() / "grove_gpu_train").string();
    fs::remove_all(base_);
  }
  void TearDown() override { fs::remove_all(base_); }

  std::vector<float> Losses(const std::string& device, const std::string& precision,
                            const std::string& name) {
    RunOptions run;
    run.quiet = true;
    auto t = Trainer::Create(SmallRun(base_ + "/" + name, device, precision), run);
    EXPECT_TRUE(t.ok()) << t.status().message();
    if (!t.ok()) return {};
    EXPECT_TRUE(t.value()->Run().ok());
    std::vector<float> out;
    for (const StepMetrics& m : t.value()->history()) out.push_back(m.loss);
    return out;
  }
  std::string base_;
};

TEST_F(GpuTrain, Fp32CurveEqualsCpuAndBf16FollowsIt) {
  const std::vector<float> cpu = Losses("cpu", "auto", "cpu");
  const std::vector<float> f32 = Losses("cuda", "fp32", "f32");
  const std::vector<float> b16 = Losses("cuda", "bf16", "b16");
  ASSERT_EQ(cpu.size(), size_t(Steps()));
  ASSERT_EQ(f32.size(), cpu.size());
  ASSERT_EQ(b16.size(), cpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) {
    // fp32 on both sides: only summation orders differ, and <= 20 AdamW steps amplify that little.
    EXPECT_NEAR(f32[i], cpu[i], 1e-3 * cpu[i]) << "step " << i + 1;
    // bf16 activations: a few parts in a thousand per step, compounding; 3% bounds it.
    EXPECT_NEAR(b16[i], cpu[i], 3e-2 * cpu[i]) << "step " << i + 1;
  }
  EXPECT_LT(b16.back(), b16.front() - 0.5f) << "the bf16 run did not learn";
}

TEST_F(GpuTrain, CheckpointFromGpuResumesOnCpu) {
  RunOptions run;
  run.quiet = true;
  TrainConfig gpu_cfg = SmallRun(base_ + "/run", "cuda", "fp32");
  const int half = Steps() / 2;
  gpu_cfg.train.steps = half;
  auto g = Trainer::Create(gpu_cfg, run);
  ASSERT_TRUE(g.ok()) << g.status().message();
  ASSERT_TRUE(g.value()->Run().ok());  // checkpoints at the last step
  TrainConfig cpu_cfg = SmallRun(base_ + "/run", "cpu", "auto");
  cpu_cfg.train.steps = half + 2;
  run.resume = true;
  auto c = Trainer::Create(cpu_cfg, run);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c.value()->step(), half);
  auto a = g.value()->params().named(), b = c.value()->params().named();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(0, std::memcmp(a[i].tensor.raw(), b[i].tensor.raw(), a[i].tensor.bytes()))
        << a[i].name;
  ASSERT_TRUE(c.value()->Run().ok());
  EXPECT_TRUE(std::isfinite(c.value()->history().back().loss));
}

}  // namespace
}  // namespace grove
