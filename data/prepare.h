// PrepareDataset: corpus on disk -> tokenizer + token files + metadata, ready for training.
//
// Writes into out_dir:
//   tokenizer.model  SentencePiece BPE model trained on the training documents only
//   train.bin        token file (see token_file.h) of the training documents, EOS after each
//   val.bin          token file of the validation documents
//   meta.json        options, corpus checksum, vocab, document and token counts, file checksums
// The split is by document: a seeded permutation picks round(val_fraction * documents)
// validation documents (at least 1 when val_fraction > 0); both sets keep corpus order.
// Idempotent: if meta.json matches the requested options and the corpus checksum, and every file
// matches its recorded size and checksum, nothing is rewritten (result.reused = true).
// Atomic: meta.json is removed first and written last; every file goes through temp + fsync +
// rename, so an interrupted run never leaves an output that passes the reuse check.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"

namespace grove::data {

struct PrepareOptions {
  std::string corpus_dir;      // Brown corpus files (launch/fetch_corpus.sh DIR)
  std::string out_dir;         // created if missing
  int vocab_size = 8192;       // tokenizer vocabulary, >= 300
  double val_fraction = 0.05;  // in [0, 0.5]
  uint64_t seed = 1234;        // validation split
  int num_threads = 2;         // training and encoding; tokens do not depend on it
  bool verbose = false;        // progress lines on stdout
};

struct PrepareResult {
  bool reused = false;
  int64_t train_documents = 0;
  int64_t val_documents = 0;
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
  int vocab_size = 0;
  double tokenizer_seconds = 0;  // 0 when reused
  double encode_seconds = 0;
  double total_seconds = 0;
};

Status PrepareDataset(const PrepareOptions& options, PrepareResult* result = nullptr);

}  // namespace grove::data
