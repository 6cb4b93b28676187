// grove-prepare-data: Brown corpus -> tokenizer.model, train.bin, val.bin, meta.json.
//
//   launch/fetch_corpus.sh third_party/corpus/brown
//   grove-prepare-data --corpus third_party/corpus/brown --out runs/data-brown-8192
#include <CLI/CLI.hpp>
#include <cstdio>
#include <thread>

#include "data/prepare.h"
#include "data/token_file.h"

int main(int argc, char** argv) {
  grove::data::PrepareOptions o;
  o.verbose = true;
  o.num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  CLI::App app{"Tokenize the Brown corpus into Grove token files"};
  app.add_option("--corpus", o.corpus_dir, "Brown corpus directory (launch/fetch_corpus.sh DIR)")
      ->required();
  app.add_option("--out", o.out_dir, "output directory")->required();
  app.add_option("--vocab", o.vocab_size, "tokenizer vocabulary size")->capture_default_str();
  app.add_option("--val-fraction", o.val_fraction, "fraction of documents held out")
      ->capture_default_str();
  app.add_option("--seed", o.seed, "seed of the train/val split")->capture_default_str();
  app.add_option("--threads", o.num_threads, "threads for training and encoding")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  grove::data::PrepareResult r;
  grove::Status st = grove::data::PrepareDataset(o, &r);
  if (!st.ok()) {
    std::fprintf(stderr, "grove-prepare-data: %s\n", st.message().c_str());
    return 1;
  }
  auto val = grove::data::TokenDataset::Open(o.out_dir + "/val.bin");
  if (!val.ok()) {
    std::fprintf(stderr, "grove-prepare-data: %s\n", val.status().message().c_str());
    return 1;
  }
  std::printf(
      "%s: documents %lld train / %lld val, tokens %lld train / %lld val, vocab %d, "
      "val unigram entropy %.4f nats/token, tokenizer %.2f s, encode %.2f s, total %.2f s\n",
      r.reused ? "reused" : "prepared", static_cast<long long>(r.train_documents),
      static_cast<long long>(r.val_documents), static_cast<long long>(r.train_tokens),
      static_cast<long long>(r.val_tokens), r.vocab_size, grove::data::UnigramEntropy(val.value()),
      r.tokenizer_seconds, r.encode_seconds, r.total_seconds);
  return 0;
}
