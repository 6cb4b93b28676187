#include "data/prepare.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>
#include <vector>

#include "core/rng.h"
#include "data/brown_corpus.h"
#include "data/file_util.h"
#include "data/token_file.h"
#include "data/tokenizer.h"

namespace grove::data {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kFormat = "grove-data/1";

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::string Join(const std::string& dir, const char* name) {
  return (fs::path(dir) / name).string();
}

Status ValidateOptions(const PrepareOptions& o) {
  if (o.corpus_dir.empty()) return Status::Error("PrepareOptions.corpus_dir is empty");
  if (o.out_dir.empty()) return Status::Error("PrepareOptions.out_dir is empty");
  if (o.vocab_size < 300 || o.vocab_size > 65536) {
    return Status::Error("PrepareOptions.vocab_size=" + std::to_string(o.vocab_size) +
                         " must be in [300, 65536]");
  }
  if (!(o.val_fraction >= 0.0 && o.val_fraction <= 0.5)) {
    return Status::Error("PrepareOptions.val_fraction=" + std::to_string(o.val_fraction) +
                         " must be in [0, 0.5]");
  }
  if (o.num_threads < 1) return Status::Error("PrepareOptions.num_threads must be >= 1");
  return Status::Ok();
}

// Which documents go to validation: the prefix of a seeded partial Fisher-Yates shuffle.
// (Modulo bias is ~n/2^64, irrelevant for document counts.)
std::vector<bool> PickValidation(size_t n, double fraction, uint64_t seed) {
  std::vector<bool> is_val(n, false);
  if (fraction <= 0.0 || n < 2) return is_val;
  size_t n_val = static_cast<size_t>(std::llround(fraction * static_cast<double>(n)));
  n_val = std::clamp<size_t>(n_val, 1, n - 1);
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  Rng rng(seed);
  for (size_t i = 0; i < n_val; ++i) {  // partial shuffle: positions [0, n_val) are the sample
    const size_t j = i + static_cast<size_t>(rng.next_u64() % (n - i));
    std::swap(idx[i], idx[j]);
  }
  for (size_t i = 0; i < n_val; ++i) is_val[idx[i]] = true;
  return is_val;
}

json OptionsJson(const PrepareOptions& o) {
  return {{"vocab_size", o.vocab_size}, {"val_fraction", o.val_fraction}, {"seed", o.seed}};
}

json FileJson(const char* name, const TokenFileInfo& info, int64_t documents) {
  return {{"file", name},
          {"dtype", info.dtype == TokenDtype::kUint16 ? "uint16" : "int32"},
          {"documents", documents},
          {"tokens", info.count},
          {"bytes", info.file_bytes()},
          {"checksum", Hex64(info.checksum)}};
}

// True when out_dir already holds exactly what these options and this corpus would produce.
bool CanReuse(const PrepareOptions& o, uint64_t corpus_checksum, PrepareResult* r) {
  StatusOr<std::string> text = ReadFileToString(Join(o.out_dir, "meta.json"));
  if (!text.ok()) return false;
  json meta = json::parse(text.value(), nullptr, /*allow_exceptions=*/false);
  if (meta.is_discarded() || !meta.is_object()) return false;
  try {
    if (meta.at("format") != kFormat || meta.at("options") != OptionsJson(o) ||
        meta.at("corpus").at("checksum") != Hex64(corpus_checksum)) {
      return false;
    }
    const json& tok = meta.at("tokenizer");
    StatusOr<std::string> model = ReadFileToString(Join(o.out_dir, "tokenizer.model"));
    if (!model.ok()) return false;
    Fnv1a64 h;
    h.Update(model.value());
    if (tok.at("checksum") != Hex64(h.digest())) return false;
    for (const char* split : {"train", "val"}) {
      const json& f = meta.at(split);
      StatusOr<TokenFileInfo> info =
          ReadTokenFileInfo(Join(o.out_dir, f.at("file").get<std::string>().c_str()));
      if (!info.ok() || f.at("tokens") != info->count || f.at("bytes") != info->file_bytes() ||
          f.at("checksum") != Hex64(info->checksum)) {
        return false;
      }
    }
    if (r) {
      r->train_documents = meta.at("train").at("documents").get<int64_t>();
      r->val_documents = meta.at("val").at("documents").get<int64_t>();
      r->train_tokens = meta.at("train").at("tokens").get<int64_t>();
      r->val_tokens = meta.at("val").at("tokens").get<int64_t>();
      r->vocab_size = tok.at("vocab_size").get<int>();
    }
    return true;
  } catch (const json::exception&) {
    return false;  // missing or mistyped field: regenerate
  }
}

// Encodes documents in parallel (SentencePiece encoding is const and thread-safe); each document
// is its paragraphs joined by the newline piece, followed by EOS.
std::vector<int32_t> EncodeDocuments(const Tokenizer& tok, const std::vector<const Document*>& docs,
                                     int num_threads) {
  std::vector<std::vector<int32_t>> encoded(docs.size());
  auto work = [&](size_t begin, size_t step) {
    for (size_t i = begin; i < docs.size(); i += step) {
      std::string text;
      for (const std::string& p : docs[i]->paragraphs) {
        if (!text.empty()) text += '\n';
        text += p;
      }
      encoded[i] = tok.Encode(text);
      encoded[i].push_back(tok.eos_id());
    }
  };
  const size_t t = std::max<size_t>(1, std::min<size_t>(num_threads, docs.size()));
  std::vector<std::thread> threads;
  for (size_t k = 1; k < t; ++k) threads.emplace_back(work, k, t);
  work(0, t);
  for (auto& th : threads) th.join();
  std::vector<int32_t> out;
  for (auto& e : encoded) out.insert(out.end(), e.begin(), e.end());
  return out;
}

Status TrainOnDocuments(const PrepareOptions& o, const std::vector<const Document*>& docs) {
  const std::string input = Join(o.out_dir, ".tokenizer_input.txt");
  const std::string prefix = Join(o.out_dir, ".tokenizer_tmp");
  {
    std::ofstream f(input, std::ios::binary | std::ios::trunc);
    for (const Document* d : docs) {
      for (const std::string& p : d->paragraphs) f << p << '\n';
    }
    if (!f.good()) return Status::Error("cannot write " + input + " (check disk space)");
  }
  Status st = TrainTokenizer(input, prefix, o.vocab_size, o.num_threads);
  std::error_code ec;
  fs::remove(input, ec);
  fs::remove(prefix + ".vocab", ec);
  if (!st.ok()) return st;
  // SentencePiece writes in place; copy through an atomic write so the final file is durable.
  StatusOr<std::string> model = ReadFileToString(prefix + ".model");
  fs::remove(prefix + ".model", ec);
  if (!model.ok()) return model.status();
  return AtomicWriteString(Join(o.out_dir, "tokenizer.model"), model.value());
}

}  // namespace

Status PrepareDataset(const PrepareOptions& o, PrepareResult* result) {
  const auto t0 = Clock::now();
  GROVE_RETURN_IF_ERROR(ValidateOptions(o));
  PrepareResult r;
  auto say = [&](const std::string& line) {
    if (o.verbose) std::printf("%s\n", line.c_str()), std::fflush(stdout);
  };

  StatusOr<Corpus> corpus = ReadBrownCorpus(o.corpus_dir);
  if (!corpus.ok()) return corpus.status();
  const std::vector<Document>& docs = corpus->documents;

  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return Status::Error("cannot create output directory " + o.out_dir + ": " + ec.message());

  if (CanReuse(o, corpus->checksum, &r)) {
    say("reusing " + o.out_dir + ": meta.json matches the options and the corpus");
    r.reused = true;
    r.total_seconds = Seconds(t0);
    if (result) *result = r;
    return Status::Ok();
  }
  // From here on the directory is being rewritten: drop the old metadata first.
  const std::string meta_path = Join(o.out_dir, "meta.json");
  fs::remove(meta_path, ec);
  if (ec) return Status::Error("cannot remove stale " + meta_path + ": " + ec.message());

  const std::vector<bool> is_val = PickValidation(docs.size(), o.val_fraction, o.seed);
  std::vector<const Document*> train_docs, val_docs;
  json val_names = json::array();
  for (size_t i = 0; i < docs.size(); ++i) {
    (is_val[i] ? val_docs : train_docs).push_back(&docs[i]);
    if (is_val[i]) val_names.push_back(docs[i].name);
  }
  r.train_documents = static_cast<int64_t>(train_docs.size());
  r.val_documents = static_cast<int64_t>(val_docs.size());
  say("corpus " + o.corpus_dir + ": " + std::to_string(docs.size()) + " documents, " +
      std::to_string(corpus->num_words) + " words; split " + std::to_string(train_docs.size()) +
      " train / " + std::to_string(val_docs.size()) + " val");

  auto t1 = Clock::now();
  GROVE_RETURN_IF_ERROR(TrainOnDocuments(o, train_docs));
  r.tokenizer_seconds = Seconds(t1);
  const std::string model_path = Join(o.out_dir, "tokenizer.model");
  StatusOr<Tokenizer> tok = Tokenizer::Load(model_path);
  if (!tok.ok()) return tok.status();
  r.vocab_size = tok->vocab_size();
  say("tokenizer: BPE vocab " + std::to_string(r.vocab_size) + " trained in " +
      std::to_string(r.tokenizer_seconds) + " s");

  t1 = Clock::now();
  const TokenDtype dtype = DtypeForVocab(r.vocab_size);
  StatusOr<TokenFileInfo> train_info = WriteTokenFile(
      Join(o.out_dir, "train.bin"), EncodeDocuments(tok.value(), train_docs, o.num_threads), dtype);
  if (!train_info.ok()) return train_info.status();
  StatusOr<TokenFileInfo> val_info = WriteTokenFile(
      Join(o.out_dir, "val.bin"), EncodeDocuments(tok.value(), val_docs, o.num_threads), dtype);
  if (!val_info.ok()) return val_info.status();
  r.encode_seconds = Seconds(t1);
  r.train_tokens = static_cast<int64_t>(train_info->count);
  r.val_tokens = static_cast<int64_t>(val_info->count);
  say("encoded " + std::to_string(r.train_tokens) + " train / " + std::to_string(r.val_tokens) +
      " val tokens in " + std::to_string(r.encode_seconds) + " s");

  StatusOr<std::string> model = ReadFileToString(model_path);
  if (!model.ok()) return model.status();
  Fnv1a64 model_hash;
  model_hash.Update(model.value());
  json meta = {
      {"format", kFormat},
      {"options", OptionsJson(o)},
      {"corpus",
       {{"dir", o.corpus_dir},
        {"checksum", Hex64(corpus->checksum)},
        {"documents", docs.size()},
        {"words", corpus->num_words}}},
      {"tokenizer",
       {{"file", "tokenizer.model"},
        {"type", "sentencepiece-bpe"},
        {"vocab_size", r.vocab_size},
        {"eos_id", tok->eos_id()},
        {"newline_id", tok->newline_id()},
        {"checksum", Hex64(model_hash.digest())}}},
      {"train", FileJson("train.bin", train_info.value(), r.train_documents)},
      {"val", FileJson("val.bin", val_info.value(), r.val_documents)},
      {"val_document_names", val_names},
  };
  GROVE_RETURN_IF_ERROR(AtomicWriteString(meta_path, meta.dump(2) + "\n"));
  r.total_seconds = Seconds(t0);
  say("wrote " + o.out_dir + " (tokenizer.model, train.bin, val.bin, meta.json) in " +
      std::to_string(r.total_seconds) + " s");
  if (result) *result = r;
  return Status::Ok();
}

}  // namespace grove::data
