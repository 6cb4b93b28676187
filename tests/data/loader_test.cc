#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "data/batch_loader.h"
#include "tests/data/test_util.h"

namespace grove::data {
namespace {

using testing::ScratchDir;

// A dataset whose token at offset i is i: every batch value reveals where it was read from.
class LoaderTest : public ::testing::Test {
 protected:
  static constexpr int kTokens = 10007;
  void SetUp() override {
    dir_ = std::make_unique<ScratchDir>("loader");
    std::vector<int32_t> t(kTokens);
    for (int i = 0; i < kTokens; ++i) t[i] = i;
    ASSERT_TRUE(WriteTokenFile(dir_->file("iota.bin"), t, TokenDtype::kInt32).ok());
    auto ds = TokenDataset::Open(dir_->file("iota.bin"));
    ASSERT_TRUE(ds.ok()) << ds.status().message();
    ds_ = std::make_unique<TokenDataset>(std::move(ds).value());
  }
  BatchLoader Make(LoaderOptions o) {
    auto l = BatchLoader::Create(*ds_, o);
    EXPECT_TRUE(l.ok()) << l.status().message();
    return std::move(l).value();
  }
  struct Batch {
    std::vector<int32_t> in, tgt;
    bool operator==(const Batch&) const = default;
  };
  static Batch Take(BatchLoader& l) {
    const size_t n = static_cast<size_t>(l.options().seq_len) * l.options().batch_size;
    Batch b{std::vector<int32_t>(n), std::vector<int32_t>(n)};
    l.Next(b.in.data(), b.tgt.data());
    return b;
  }
  std::unique_ptr<ScratchDir> dir_;
  std::unique_ptr<TokenDataset> ds_;
};

TEST_F(LoaderTest, LayoutIsSequenceFirstAndTargetsShiftedByOne) {
  const int S = 16, B = 5;
  BatchLoader l = Make({.seq_len = S, .batch_size = B, .seed = 3});
  EXPECT_EQ(l.num_windows(), (kTokens - 1) / S);
  EXPECT_EQ(l.batches_per_epoch(), l.num_windows() / B);
  for (int step = 0; step < 20; ++step) {
    const LoaderState st = l.State();
    std::vector<int64_t> starts;
    for (int b = 0; b < B; ++b) starts.push_back(l.WindowStart(st.epoch, st.position, b));
    Batch batch = Take(l);
    for (int b = 0; b < B; ++b) {
      ASSERT_EQ(starts[b] % S, 0);
      ASSERT_GE(starts[b], 0);
      ASSERT_LE(starts[b] + S, kTokens - 1);  // the last target is in bounds
      for (int s = 0; s < S; ++s) {
        ASSERT_EQ(batch.in[s * B + b], starts[b] + s) << "s=" << s << " b=" << b;
        ASSERT_EQ(batch.tgt[s * B + b], starts[b] + s + 1) << "s=" << s << " b=" << b;
      }
    }
  }
}

TEST_F(LoaderTest, SameSeedSameBatchesDifferentSeedDifferent) {
  LoaderOptions o{.seq_len = 32, .batch_size = 4, .seed = 11};
  BatchLoader a = Make(o), b = Make(o);
  o.seed = 12;
  BatchLoader c = Make(o);
  bool any_diff = false;
  for (int i = 0; i < 200; ++i) {  // crosses two epoch boundaries (78 batches per epoch)
    Batch x = Take(a), y = Take(b), z = Take(c);
    ASSERT_EQ(x, y) << "batch " << i;
    any_diff |= !(x == z);
  }
  EXPECT_TRUE(any_diff);
  EXPECT_EQ(a.State().epoch, 2);
}

TEST_F(LoaderTest, EpochVisitsDistinctWindowsAndRollsOver) {
  const int S = 64, B = 3;
  BatchLoader l = Make({.seq_len = S, .batch_size = B, .seed = 5});
  const int64_t per_epoch = l.batches_per_epoch();
  std::vector<std::vector<int64_t>> orders(2);
  for (int e = 0; e < 2; ++e) {
    std::set<int64_t> seen;
    for (int64_t p = 0; p < per_epoch; ++p) {
      EXPECT_EQ(l.State().epoch, p == 0 && e == 1 ? 0 : e);  // rollover happens inside Next
      Batch batch = Take(l);
      for (int b = 0; b < B; ++b) {
        const int64_t start = batch.in[b];  // row s = 0
        EXPECT_TRUE(seen.insert(start).second) << "window " << start << " repeated in epoch " << e;
        orders[e].push_back(start);
      }
    }
    EXPECT_EQ(static_cast<int64_t>(seen.size()), per_epoch * B);
    EXPECT_EQ(l.State().epoch, e);
    EXPECT_EQ(l.State().position, per_epoch);
  }
  EXPECT_NE(orders[0], orders[1]) << "each epoch must be reshuffled";
}

TEST_F(LoaderTest, RestoreGivesIdenticalBatches) {
  LoaderOptions o{.seq_len = 50, .batch_size = 4, .seed = 99};
  BatchLoader ref = Make(o);
  const int64_t per_epoch = ref.batches_per_epoch();  // 50
  // Save at several points, including exactly at an epoch boundary.
  for (int64_t save_at : {int64_t{0}, int64_t{7}, per_epoch, per_epoch + 3}) {
    BatchLoader a = Make(o);
    for (int64_t i = 0; i < save_at; ++i) Take(a);
    const nlohmann::json saved = LoaderStateToJson(a.State());
    auto state = LoaderStateFromJson(nlohmann::json::parse(saved.dump()));
    ASSERT_TRUE(state.ok()) << state.status().message();
    EXPECT_EQ(state.value(), a.State());

    LoaderOptions other = o;
    other.seed = 12345;  // the restored state carries the seed
    BatchLoader b = Make(other);
    Take(b);  // some unrelated progress, then restore
    b.Restore(state.value());
    for (int i = 0; i < 60; ++i) ASSERT_EQ(Take(a), Take(b)) << "save_at=" << save_at << " i=" << i;
  }
}

TEST_F(LoaderTest, SequentialModeAndReset) {
  const int S = 100, B = 2;
  BatchLoader l = Make({.seq_len = S, .batch_size = B, .seed = 1, .shuffle = false});
  EXPECT_EQ(l.batches_per_epoch(), 50);
  Batch first = Take(l);
  EXPECT_EQ(first.in[0], 0);
  EXPECT_EQ(first.in[1], S);
  Batch second = Take(l);
  EXPECT_EQ(second.in[0], 2 * S);
  l.Reset();
  EXPECT_EQ(Take(l), first);
  // Same windows regardless of the seed.
  BatchLoader other = Make({.seq_len = S, .batch_size = B, .seed = 777, .shuffle = false});
  EXPECT_EQ(Take(other), first);
}

TEST_F(LoaderTest, DataParallelRanksReadDisjointWindows) {
  const int S = 20, B = 3, D = 2;
  BatchLoader r0 = Make({.seq_len = S, .batch_size = B, .seed = 4, .dp_rank = 0, .dp_size = D});
  BatchLoader r1 = Make({.seq_len = S, .batch_size = B, .seed = 4, .dp_rank = 1, .dp_size = D});
  BatchLoader one = Make({.seq_len = S, .batch_size = B * D, .seed = 4});
  EXPECT_EQ(r0.batches_per_epoch(), one.batches_per_epoch());
  for (int i = 0; i < 30; ++i) {
    Batch a = Take(r0), b = Take(r1), all = Take(one);
    // Rank r's columns are columns [r*B, (r+1)*B) of the single-rank global batch.
    for (int s = 0; s < S; ++s) {
      for (int c = 0; c < B; ++c) {
        ASSERT_EQ(a.in[s * B + c], all.in[s * B * D + c]);
        ASSERT_EQ(b.in[s * B + c], all.in[s * B * D + B + c]);
      }
    }
  }
}

TEST_F(LoaderTest, InvalidOptionsAndStateAreReported) {
  auto too_big = BatchLoader::Create(*ds_, {.seq_len = 5000, .batch_size = 4});
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("iota.bin"), std::string::npos)
      << too_big.status().message();
  auto bad = BatchLoader::Create(*ds_, {.seq_len = 0, .batch_size = 4});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("seq_len"), std::string::npos);
  auto bad_rank = BatchLoader::Create(*ds_, {.seq_len = 8, .batch_size = 4, .dp_rank = 2});
  ASSERT_FALSE(bad_rank.ok());
  EXPECT_NE(bad_rank.status().message().find("dp_rank"), std::string::npos);

  auto st = LoaderStateFromJson(nlohmann::json{{"epoch", 1}, {"seed", 2}});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("position"), std::string::npos);

  BatchLoader l = Make({.seq_len = 8, .batch_size = 4});
  EXPECT_THROW(l.Restore({0, l.batches_per_epoch() + 1, 0}), Error);
}

}  // namespace
}  // namespace grove::data
