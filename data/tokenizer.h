// BPE tokenizer: a thin wrapper over SentencePiece, plus its trainer.
//
// Vocabulary layout (fixed by TrainTokenizer): 0 <unk>, 1 <s>, 2 </s> (EOS, separates
// documents), 3 "\n" (paragraph break), then 256 byte-fallback pieces and the learned merges.
// Encode treats '\n' as a hard paragraph break: each line is encoded on its own (so a paragraph
// starts with the same pieces wherever it appears) and lines are joined by the newline piece.
// SentencePiece normalises whitespace (NFKC, runs of spaces collapsed, ends trimmed), so
// Decode(Encode(t)) == t for text whose lines have no leading, trailing or repeated spaces.
// Any byte sequence encodes (byte fallback); nothing maps to <unk>.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace grove::data {

class Tokenizer {
 public:
  static StatusOr<Tokenizer> Load(const std::string& model_path);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int32_t>& ids) const;
  int vocab_size() const;
  int eos_id() const;
  int newline_id() const { return newline_id_; }  // -1 if the model has no "\n" piece

 private:
  Tokenizer() = default;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int newline_id_ = -1;
};

// Trains a byte-fallback BPE model on `text_file` (one sentence or paragraph per line) and writes
// `model_prefix`.model and `model_prefix`.vocab. Deterministic for a given input: every line is
// used in order (no sampling below 2M lines), fixed random seed. vocab_size must be at least ~300
// (256 byte pieces + specials + the corpus's characters).
Status TrainTokenizer(const std::string& text_file, const std::string& model_prefix,
                      int vocab_size = 8192, int num_threads = 2);

}  // namespace grove::data
