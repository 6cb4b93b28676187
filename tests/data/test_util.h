// Helpers for the data tests: scratch directories and a small generated tagged corpus.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/rng.h"

namespace grove::data::testing {

// A fresh, empty directory under the test temp dir, removed when the object goes away.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ =
        std::filesystem::path(::testing::TempDir()) /
        ("grove_data_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" + name);
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Pseudo-English words built from syllables, so BPE has real merges to learn.
inline std::string RandomWord(Rng& rng) {
  static const char* kSyllables[] = {"the", "an", "ing", "er", "re", "on", "at", "ed", "is",
                                     "or",  "st", "en",  "al", "ti", "ou", "ly", "ch", "pro"};
  const int n = 1 + static_cast<int>(rng.next_u64() % 3);
  std::string w;
  for (int i = 0; i < n; ++i) w += kSyllables[rng.next_u64() % std::size(kSyllables)];
  return w;
}

// Writes `num_docs` files in the Brown layout (c<genre><2 digits>, tagged words, a tab before
// each paragraph's first sentence, blank lines between paragraphs). Returns the expected plain
// text paragraphs of each document, in file-name order.
inline std::vector<std::vector<std::string>> WriteTaggedCorpus(const std::string& dir, int num_docs,
                                                               uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<std::string>> expected;
  for (int d = 0; d < num_docs; ++d) {
    char name[8];
    std::snprintf(name, sizeof(name), "c%c%02d", 'a' + d / 10, d % 10 + 1);
    std::ofstream f(std::filesystem::path(dir) / name);
    std::vector<std::string> paragraphs;
    const int num_paras = 2 + static_cast<int>(rng.next_u64() % 3);
    for (int p = 0; p < num_paras; ++p) {
      f << "\n\n\t";
      std::string para;
      const int num_sent = 1 + static_cast<int>(rng.next_u64() % 3);
      for (int s = 0; s < num_sent; ++s) {
        if (s > 0) f << "\n";
        std::string sent;
        const int num_words = 4 + static_cast<int>(rng.next_u64() % 8);
        for (int w = 0; w < num_words; ++w) {
          std::string word = RandomWord(rng);
          if (w == 0) word[0] = static_cast<char>(word[0] - 'a' + 'A');
          f << word << "/nn ";
          if (w > 0) sent += ' ';
          sent += word;
          if (w == 2) {
            f << ",/, ";
            sent += ",";
          }
        }
        f << "./.";
        sent += ".";
        if (s > 0) para += ' ';
        para += sent;
      }
      paragraphs.push_back(para);
    }
    f << "\n";
    expected.push_back(paragraphs);
  }
  return expected;
}

}  // namespace grove::data::testing
