#include "data/prepare.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/token_file.h"
#include "data/tokenizer.h"
#include "tests/data/test_util.h"

namespace grove::data {
namespace {

using testing::ScratchDir;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

TEST(Prepare, WritesTokenizerShardsAndMetaThenReuses) {
  ScratchDir corpus("corpus"), out("out");
  auto docs = testing::WriteTaggedCorpus(corpus.path(), 40, 3);
  PrepareOptions o{.corpus_dir = corpus.path(),
                   .out_dir = out.file("data"),
                   .vocab_size = 400,
                   .val_fraction = 0.1,
                   .seed = 5};
  PrepareResult r;
  Status st = PrepareDataset(o, &r);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_FALSE(r.reused);
  EXPECT_EQ(r.val_documents, 4);
  EXPECT_EQ(r.train_documents, 36);
  EXPECT_EQ(r.vocab_size, 400);

  auto tok = Tokenizer::Load(out.file("data/tokenizer.model"));
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  auto train = TokenDataset::Open(out.file("data/train.bin"));
  auto val = TokenDataset::Open(out.file("data/val.bin"));
  ASSERT_TRUE(train.ok() && val.ok());
  EXPECT_EQ(static_cast<int64_t>(train->size()), r.train_tokens);
  EXPECT_EQ(static_cast<int64_t>(val->size()), r.val_tokens);

  // One EOS per document, the last token of each file is EOS, and the validation documents
  // decode back to their text (paragraphs joined by newlines).
  nlohmann::json meta = ReadJson(out.file("data/meta.json"));
  std::vector<std::string> val_names = meta.at("val_document_names");
  ASSERT_EQ(val_names.size(), 4u);
  std::vector<int32_t> ids(val->size());
  val->Copy(0, ids.size(), ids.data());
  ASSERT_EQ(ids.back(), tok->eos_id());
  std::vector<int32_t> doc;
  size_t doc_index = 0;
  for (int32_t id : ids) {
    if (id != tok->eos_id()) {
      doc.push_back(id);
      continue;
    }
    const std::string& name = val_names.at(doc_index++);
    const int d = (name[1] - 'a') * 10 + std::stoi(name.substr(2)) - 1;
    std::string text;
    for (const auto& p : docs[d]) {
      if (!text.empty()) text += '\n';
      text += p;
    }
    EXPECT_EQ(tok->Decode(doc), text) << name;
    doc.clear();
  }
  EXPECT_EQ(doc_index, 4u);
  int64_t train_eos = 0;
  for (size_t i = 0; i < train->size(); ++i) train_eos += train.value()[i] == tok->eos_id();
  EXPECT_EQ(train_eos, 36);
  EXPECT_EQ(meta.at("options").at("vocab_size"), 400);
  EXPECT_EQ(meta.at("train").at("tokens"), r.train_tokens);
  EXPECT_GT(UnigramEntropy(val.value()), 1.0);

  // Same options: reused, nothing rewritten.
  const auto mtime = std::filesystem::last_write_time(out.file("data/train.bin"));
  PrepareResult again;
  ASSERT_TRUE(PrepareDataset(o, &again).ok());
  EXPECT_TRUE(again.reused);
  EXPECT_EQ(again.train_tokens, r.train_tokens);
  EXPECT_EQ(std::filesystem::last_write_time(out.file("data/train.bin")), mtime);

  // A damaged output is regenerated, to the same bytes.
  std::filesystem::resize_file(out.file("data/train.bin"), 100);
  PrepareResult repaired;
  ASSERT_TRUE(PrepareDataset(o, &repaired).ok());
  EXPECT_FALSE(repaired.reused);
  auto train2 = TokenDataset::Open(out.file("data/train.bin"));
  ASSERT_TRUE(train2.ok()) << train2.status().message();
  EXPECT_EQ(train2->checksum(), train->checksum());

  // Different options: a new split.
  o.seed = 6;
  PrepareResult other;
  ASSERT_TRUE(PrepareDataset(o, &other).ok());
  EXPECT_FALSE(other.reused);
  EXPECT_NE(ReadJson(out.file("data/meta.json")).at("val_document_names"),
            meta.at("val_document_names"));
  for (const auto& e : std::filesystem::directory_iterator(out.file("data"))) {
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  }
}

TEST(Prepare, MissingCorpusAndBadOptions) {
  ScratchDir out("out");
  PrepareOptions o{.corpus_dir = "/nonexistent/brown", .out_dir = out.path()};
  Status st = PrepareDataset(o);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("/nonexistent/brown"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("launch/fetch_corpus.sh"), std::string::npos) << st.message();
  o.val_fraction = 0.9;
  st = PrepareDataset(o);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("val_fraction"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace grove::data
