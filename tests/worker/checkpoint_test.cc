// Checkpoints: exact round trip, atomic replacement, retention, and loud failure on truncated or
// corrupt files without modifying the model.
#include "worker/checkpoint.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "checkpoint/sharded_checkpoint.h"
#include "core/safetensors.h"

namespace grove {
namespace {

namespace fs = std::filesystem;

ModelConfig Tiny() {
  ModelConfig c;
  c.vocab_size = 50;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.max_seq_len = 8;
  return c;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = (fs::temp_directory_path() /
             ("grove_ckpt_" +
              std::string(::testing::UnitTest::GetInstance()->current_test_info()->name())))
                .string();
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string root_;
};

bool SameWeights(const Weights& a, const Weights& b) {
  auto na = a.named(), nb = b.named();
  for (size_t i = 0; i < na.size(); ++i)
    if (std::memcmp(na[i].tensor.raw(), nb[i].tensor.raw(), na[i].tensor.bytes()) != 0)
      return false;
  return true;
}

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  const ModelConfig c = Tiny();
  Weights p = Weights::Init(c);
  AdamW opt(c);
  TrainOptions t;
  Weights g = Weights::Init(c);  // any non-zero gradient
  opt.step(p, g, 1e-3f, t);
  auto dir = SaveCheckpoint(root_, 7, p, opt, {{"loss", 1.5}}, 2);
  ASSERT_TRUE(dir.ok()) << dir.status().message();
  EXPECT_EQ(LatestCheckpoint(root_), dir.value());

  ModelConfig c2 = c;
  c2.seed = 99;  // different init, fully overwritten by the load
  Weights q = Weights::Init(c2);
  AdamW opt2(c2);
  auto state = LoadCheckpoint(dir.value(), q, opt2);
  ASSERT_TRUE(state.ok()) << state.status().message();
  EXPECT_EQ(state.value()["step"], 7);
  EXPECT_EQ(opt2.steps_taken(), 1);
  EXPECT_TRUE(SameWeights(p, q));
  EXPECT_TRUE(SameWeights(opt.m(), opt2.m()));
  EXPECT_TRUE(SameWeights(opt.v(), opt2.v()));
}

TEST_F(CheckpointTest, RetentionKeepsNewest) {
  const ModelConfig c = Tiny();
  Weights p = Weights::Init(c);
  AdamW opt(c);
  for (int step : {10, 20, 30}) ASSERT_TRUE(SaveCheckpoint(root_, step, p, opt, {}, 2).ok());
  EXPECT_FALSE(fs::exists(root_ + "/step_00000010"));
  EXPECT_TRUE(fs::exists(root_ + "/step_00000020"));
  EXPECT_TRUE(fs::exists(root_ + "/step_00000030"));
  EXPECT_EQ(LatestCheckpoint(root_), root_ + "/step_00000030");
}

TEST_F(CheckpointTest, InterruptedSaveLeavesPreviousLatest) {
  const ModelConfig c = Tiny();
  Weights p = Weights::Init(c);
  AdamW opt(c);
  ASSERT_TRUE(SaveCheckpoint(root_, 10, p, opt, {}, 3).ok());
  // A save that died mid-write leaves only its temporary directory behind.
  fs::create_directories(root_ + "/step_00000020.tmp");
  std::ofstream(root_ + "/step_00000020.tmp/model.safetensors") << "partial";
  EXPECT_EQ(LatestCheckpoint(root_), root_ + "/step_00000010");
  Weights q = Weights::Zeros(c);
  AdamW opt2(c);
  EXPECT_TRUE(LoadCheckpoint(LatestCheckpoint(root_), q, opt2).ok());
  EXPECT_TRUE(SameWeights(p, q));
}

// A process killed after writing its shard but before the checkpoint is published (the moment a
// rank dies mid-save) leaves the previous checkpoint as the latest, loadable and intact.
TEST_F(CheckpointTest, KilledMidSaveLeavesPreviousCheckpoint) {
  const ModelConfig c = Tiny();
  Weights p = Weights::Init(c);
  AdamW opt(c);
  ASSERT_TRUE(SaveCheckpoint(root_, 10, p, opt, {}, 3).ok());
  Weights changed = Weights::Init(c);
  changed.wte.data<float>()[0] += 1.0f;
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // child: save step 20 and die right after the shard is on disk
    ckpt::RankInfo rank;
    int calls = 0;
    rank.agree = [&calls](Status s) {
      if (++calls == 2) _exit(7);  // after "shards written", before publishing
      return s;
    };
    ckpt::Piece piece{"model.wte", changed.wte, changed.wte.shape(), {0, 0}, true};
    (void)ckpt::Save(root_, 20, {piece}, {}, 3, rank);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 7) << "the child did not die mid-save";
  EXPECT_TRUE(fs::exists(root_ + "/step_00000020.tmp/shard-00000.safetensors"));
  EXPECT_EQ(LatestCheckpoint(root_), root_ + "/step_00000010");
  Weights q = Weights::Zeros(c);
  AdamW opt2(c);
  ASSERT_TRUE(LoadCheckpoint(LatestCheckpoint(root_), q, opt2).ok());
  EXPECT_TRUE(SameWeights(p, q));
}

TEST_F(CheckpointTest, TruncatedFileIsNamedAndNothingLoads) {
  const ModelConfig c = Tiny();
  Weights p = Weights::Init(c);
  AdamW opt(c);
  auto dir = SaveCheckpoint(root_, 5, p, opt, {}, 2);
  ASSERT_TRUE(dir.ok());
  const std::string file = dir.value() + "/shard-00000.safetensors";
  fs::resize_file(file, fs::file_size(file) - 100);
  Weights q = Weights::Zeros(c);
  AdamW opt2(c);
  auto st = LoadCheckpoint(dir.value(), q, opt2);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find(file), std::string::npos) << st.status().message();
  EXPECT_NE(st.status().message().find("truncated"), std::string::npos) << st.status().message();
  EXPECT_TRUE(SameWeights(q, Weights::Zeros(c))) << "a failed load modified the model";
}

TEST_F(CheckpointTest, FlippedByteIsDetected) {
  const ModelConfig c = Tiny();
  Weights p = Weights::Init(c);
  AdamW opt(c);
  auto dir = SaveCheckpoint(root_, 5, p, opt, {}, 2);
  ASSERT_TRUE(dir.ok());
  const std::string file = dir.value() + "/shard-00000.safetensors";
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(file) - 10));
    char ch;
    f.read(&ch, 1);
    ch ^= 0x10;
    f.seekp(static_cast<std::streamoff>(fs::file_size(file) - 10));
    f.write(&ch, 1);
  }
  Weights q = Weights::Zeros(c);
  AdamW opt2(c);
  auto st = LoadCheckpoint(dir.value(), q, opt2);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("checksum mismatch in tensor 'adam_v.lm_head'"),
            std::string::npos)
      << st.status().message();
  EXPECT_TRUE(SameWeights(q, Weights::Zeros(c)));
}

TEST_F(CheckpointTest, ShapeMismatchNamesTensor) {
  const ModelConfig c = Tiny();
  Weights p = Weights::Init(c);
  AdamW opt(c);
  auto dir = SaveCheckpoint(root_, 5, p, opt, {}, 2);
  ASSERT_TRUE(dir.ok());
  ModelConfig other = c;
  other.d_model = 32;
  Weights q = Weights::Zeros(other);
  AdamW opt2(other);
  auto st = LoadCheckpoint(dir.value(), q, opt2);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find(
                "tensor 'model.wte' has global shape [50,16], this model expects [50, 32]"),
            std::string::npos)
      << st.status().message();
}

}  // namespace
}  // namespace grove
