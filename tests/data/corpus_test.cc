#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "data/brown_corpus.h"
#include "tests/data/test_util.h"

namespace grove::data {
namespace {

using testing::ScratchDir;

TEST(BrownCorpus, DetagSentence) {
  int64_t words = 0;
  EXPECT_EQ(
      DetagSentence("\tThe/at jury/nn said/vbd ,/, ``/`` no/at evidence/nn ''/'' ./.", &words),
      "The jury said, \"no evidence\".");
  EXPECT_EQ(words, 9);
  // Words containing '/', possessives, brackets, headline tags.
  EXPECT_EQ(DetagSentence("a/at 1-1/2/cd inch/nn (/( Atlanta's/np$ )/) ;/. ok/jj-hl ?/."),
            "a 1-1/2 inch (Atlanta's); ok?");
  EXPECT_EQ(DetagSentence("   "), "");
}

TEST(BrownCorpus, ParseFileKeepsParagraphs) {
  const std::string text =
      "\n\n\tFirst/od sentence/nn ./.\nSecond/od one/pn ./.\n\n\n\tNew/jj paragraph/nn !/.\n";
  auto paras = ParseBrownFile(text);
  ASSERT_EQ(paras.size(), 2u);
  EXPECT_EQ(paras[0], "First sentence. Second one.");
  EXPECT_EQ(paras[1], "New paragraph!");
}

TEST(BrownCorpus, MissingDirectoryNamesPathAndFix) {
  const std::string dir = "/nonexistent/grove/corpus/brown";
  auto c = ReadBrownCorpus(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(dir), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("launch/fetch_corpus.sh " + dir), std::string::npos)
      << c.status().message();

  ScratchDir empty("empty");
  c = ReadBrownCorpus(empty.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("launch/fetch_corpus.sh"), std::string::npos);
}

TEST(BrownCorpus, ReadsGeneratedCorpusInOrder) {
  ScratchDir dir("corpus");
  auto expected = testing::WriteTaggedCorpus(dir.path(), 23, 7);
  auto c = ReadBrownCorpus(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().message();
  ASSERT_EQ(c->documents.size(), 23u);
  EXPECT_EQ(c->documents[0].name, "ca01");
  EXPECT_EQ(c->documents[22].name, "cc03");
  for (size_t d = 0; d < expected.size(); ++d) EXPECT_EQ(c->documents[d].paragraphs, expected[d]);
  auto again = ReadBrownCorpus(dir.path());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->checksum, c->checksum);
}

// The real corpus: $GROVE_CORPUS_DIR, else third_party/corpus/brown in the source tree.
std::string RealCorpusDir() {
  if (const char* d = std::getenv("GROVE_CORPUS_DIR"); d != nullptr && *d != '\0') return d;
  if (const char* src = std::getenv("GROVE_SOURCE_DIR"); src != nullptr) {
    const std::string d = std::string(src) + "/third_party/corpus/brown";
    if (std::filesystem::is_directory(d)) return d;
  }
  return "";
}

TEST(BrownCorpus, RealCorpus) {
  const std::string dir = RealCorpusDir();
  if (dir.empty()) {
    GTEST_SKIP() << "Brown corpus not found: set GROVE_CORPUS_DIR=DIR after running "
                    "launch/fetch_corpus.sh DIR (or fetch it into third_party/corpus/brown)";
  }
  auto c = ReadBrownCorpus(dir);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->documents.size(), 500u);
  EXPECT_EQ(c->num_words, 1161192);
  ASSERT_FALSE(c->documents[0].paragraphs.empty());
  EXPECT_EQ(c->documents[0].paragraphs[0].rfind(
                "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent "
                "primary election produced \"no evidence\" that any irregularities took place.",
                0),
            0u)
      << c->documents[0].paragraphs[0];
  for (const auto& d : c->documents) {
    for (const auto& p : d.paragraphs) {
      ASSERT_EQ(p.find('\n'), std::string::npos);
      ASSERT_EQ(p.find("/nn"), std::string::npos) << d.name << ": tag left in " << p;
    }
  }
}

}  // namespace
}  // namespace grove::data
