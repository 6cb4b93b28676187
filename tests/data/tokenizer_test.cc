#include "data/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/data/test_util.h"

namespace grove::data {
namespace {

using testing::ScratchDir;

// Trains a 400-piece model on generated pseudo-English (256 byte pieces + specials + merges).
std::string TrainSmall(const ScratchDir& dir, const std::string& prefix) {
  const std::string text = dir.file(prefix + ".txt");
  {
    std::ofstream f(text);
    Rng rng(42);
    for (int line = 0; line < 3000; ++line) {
      for (int w = 0; w < 10; ++w) f << (w ? " " : "") << testing::RandomWord(rng);
      f << ".\n";
    }
  }
  Status st = TrainTokenizer(text, dir.file(prefix), 400, 2);
  EXPECT_TRUE(st.ok()) << st.message();
  return dir.file(prefix + ".model");
}

TEST(Tokenizer, TrainEncodeDecodeRoundTrip) {
  ScratchDir dir("tok");
  auto tok = Tokenizer::Load(TrainSmall(dir, "m"));
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  EXPECT_EQ(tok->vocab_size(), 400);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->newline_id(), 3);

  const std::vector<std::string> texts = {
      "the thing is rather strong.",
      "Proteins alter the station, ready?",
      "First paragraph.\nSecond one, with 12345 digits.\nThird.",
      "caf\xc3\xa9 na\xc3\xafve \xe6\x9d\xb1\xe4\xba\xac",  // unseen characters: byte fallback
      "",
  };
  for (const std::string& t : texts) {
    std::vector<int32_t> ids = tok->Encode(t);
    for (int32_t id : ids) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, tok->vocab_size());
      ASSERT_NE(id, 0) << "no <unk> with byte fallback: " << t;
    }
    EXPECT_EQ(tok->Decode(ids), t);
  }
  // Learned merges make text like the training text much shorter than its bytes.
  Rng rng(42);
  std::string common;
  for (int w = 0; w < 20; ++w) {
    if (w > 0) common += ' ';
    common += testing::RandomWord(rng);
  }
  EXPECT_LT(tok->Encode(common).size(), common.size() / 2) << common;
  // A paragraph encodes the same wherever it appears.
  auto alone = tok->Encode("Second one.");
  auto joined = tok->Encode("First.\nSecond one.");
  ASSERT_GE(joined.size(), alone.size());
  EXPECT_TRUE(std::equal(alone.rbegin(), alone.rend(), joined.rbegin()));
}

TEST(Tokenizer, TrainingIsDeterministic) {
  ScratchDir dir("tok");
  auto a = Tokenizer::Load(TrainSmall(dir, "a"));
  auto b = Tokenizer::Load(TrainSmall(dir, "b"));
  ASSERT_TRUE(a.ok() && b.ok());
  const std::string t = "the proteins are strong; station rest online.";
  EXPECT_EQ(a->Encode(t), b->Encode(t));
}

TEST(Tokenizer, ErrorsNameTheFile) {
  auto tok = Tokenizer::Load("/nonexistent/tokenizer.model");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("/nonexistent/tokenizer.model"), std::string::npos);
  Status st = TrainTokenizer("/nonexistent/text.txt", "/tmp/x", 100, 1);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("vocab_size"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace grove::data
