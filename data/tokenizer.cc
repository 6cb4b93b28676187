#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <unordered_map>

namespace grove::data {

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

StatusOr<Tokenizer> Tokenizer::Load(const std::string& model_path) {
  Tokenizer t;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st = t.sp_->Load(model_path);
  if (!st.ok()) {
    return Status::Error("cannot load tokenizer model " + model_path + ": " + st.ToString() +
                         " (run grove-prepare-data to create it)");
  }
  if (t.sp_->eos_id() < 0) {
    return Status::Error("tokenizer model " + model_path +
                         " has no EOS piece; retrain it with grove-prepare-data");
  }
  int nl = t.sp_->PieceToId("\n");
  t.newline_id_ = (nl != t.sp_->unk_id()) ? nl : -1;
  return t;
}

std::vector<int32_t> Tokenizer::Encode(const std::string& text) const {
  std::vector<int32_t> out;
  std::vector<int> ids;
  size_t pos = 0;
  while (true) {
    size_t end = text.find('\n', pos);
    const bool last = end == std::string::npos;
    if (last) end = text.size();
    ids.clear();
    sp_->Encode(std::string_view(text).substr(pos, end - pos), &ids);
    out.insert(out.end(), ids.begin(), ids.end());
    if (last) break;
    if (newline_id_ >= 0) out.push_back(newline_id_);
    pos = end + 1;
  }
  return out;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  // Decode line by line so that a line after "\n" does not start with the dummy-prefix space.
  std::string out;
  std::vector<int> line;
  std::string piece;
  auto flush = [&] {
    piece.clear();
    sp_->Decode(line, &piece);
    out += piece;
    line.clear();
  };
  for (int32_t id : ids) {
    if (id == newline_id_) {
      flush();
      out += '\n';
    } else {
      line.push_back(id);
    }
  }
  flush();
  return out;
}

int Tokenizer::vocab_size() const {
  return sp_->GetPieceSize();
}
int Tokenizer::eos_id() const {
  return sp_->eos_id();
}

Status TrainTokenizer(const std::string& text_file, const std::string& model_prefix, int vocab_size,
                      int num_threads) {
  if (vocab_size < 300 || vocab_size > (1 << 20)) {
    return Status::Error("tokenizer vocab_size=" + std::to_string(vocab_size) +
                         " is out of range; use a value in [300, 1048576]");
  }
  sentencepiece::SetRandomGeneratorSeed(1234);
  const std::unordered_map<std::string, std::string> args = {
      {"input", text_file},
      {"model_prefix", model_prefix},
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", "0.9999"},
      {"split_digits", "true"},
      {"user_defined_symbols", "\n"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      // Lines are paragraphs, some longer than the 4192-byte default.
      {"max_sentence_length", "65536"},
      // Deterministic: use every line in file order up to 2M lines, then a seeded sample.
      {"input_sentence_size", "2000000"},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(std::max(1, num_threads))},
      {"minloglevel", "2"},
  };
  auto st = sentencepiece::SentencePieceTrainer::Train(args);
  if (!st.ok()) {
    return Status::Error("training the tokenizer on " + text_file + " failed: " + st.ToString());
  }
  return Status::Ok();
}

}  // namespace grove::data
