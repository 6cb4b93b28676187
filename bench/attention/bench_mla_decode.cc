// Decoding with MLA's latent KV cache against the other caches of a model of the same width, same
// run (model/generate.h): MLA with the latent cache, MLA with the full (padded K/V) cache, MHA and
// GQA (head dim d_model / heads; GQA with --gqa-kv-heads key/value heads). Run under mpirun (cp =
// all ranks) or alone:
//   mpirun --allow-run-as-root --oversubscribe -np 2 bench_mla_decode
//          [--context 512] [--decode 32] [--reps 5] [--layers 4] [--d-model 512] [--heads 8]
//          [--kv-rank 128] [--nope 32] [--rope 16] [--v-dim 32] [--gqa-kv-heads 2]
//          [--vocab 8192] [--attention tree]
// Per repetition every generator prefills the same `context` tokens (step by step), then the
// `decode` next tokens are timed (slowest rank); the order of the caches rotates per repetition.
// One JSON line per cache (name mla_decode): model (mla, mha, gqa), kv_cache (latent, full),
// config (the MLA dims, cp, attention, CPU, OpenMP threads), kv_cache_bytes_per_token (measured
// from the cache: this rank's shard per token it holds, all layers), ms_per_token {median, min,
// max} over the repetitions. The latent line has peer = "full" with ratio = full / latent for
// bytes and time, and bytes_ratio_vs = {mla_full, mha, gqa}: each cache's bytes per token over
// the latent cache's.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "core/rng.h"
#include "core/status.h"
#include "kernels/blas/blas_kernel.h"
#include "model/generate.h"

using namespace grove;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t c = line.find(':');
      return c == std::string::npos ? line : line.substr(c + 2);
    }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  grove::blas::SelectBlasKernel(argv);  // before MPI and any GEMM (may re-execute)
  CLI::App app{"MLA decoding: latent KV cache vs full K/V cache"};
  int context = 512, decode = 32, reps = 5, layers = 4, d_model = 512, heads = 8;
  int kv_rank = 128, nope = 32, rope = 16, v_dim = 32, vocab = 8192, gqa_kv_heads = 2;
  std::string attention = "tree";
  app.add_option("--context", context, "prefilled tokens before the timed ones");
  app.add_option("--decode", decode, "timed decode tokens per repetition");
  app.add_option("--reps", reps, "repetitions");
  app.add_option("--layers", layers, "layers");
  app.add_option("--d-model", d_model, "model width");
  app.add_option("--heads", heads, "attention heads");
  app.add_option("--kv-rank", kv_rank, "MLA kv_lora_rank (r_kv)");
  app.add_option("--nope", nope, "MLA qk_nope_head_dim");
  app.add_option("--rope", rope, "MLA qk_rope_head_dim");
  app.add_option("--v-dim", v_dim, "MLA v_head_dim");
  app.add_option("--gqa-kv-heads", gqa_kv_heads, "key/value heads of the GQA peer");
  app.add_option("--vocab", vocab, "vocabulary");
  app.add_option("--attention", attention, "tree or ring");
  CLI11_PARSE(app, argc, argv);

  comm::MpiSession mpi(&argc, &argv);
  std::unique_ptr<comm::Communicator> world = mpi.world();
  comm::Communicator& w = *world;
  const int p = w.size(), r = w.rank();
  auto algo = parse_cp_attention(attention, "--attention");
  if (!algo.ok()) {
    if (r == 0) std::fprintf(stderr, "%s\n", algo.status().message().c_str());
    return 2;
  }

  ModelConfig mla;
  mla.vocab_size = vocab;
  mla.d_model = d_model;
  mla.n_layers = layers;
  mla.n_heads = heads;
  mla.max_seq_len = context + decode;
  mla.seed = 5;
  ModelConfig mha = mla, gqa = mla;
  mla.attention = Attention::kMla;
  mla.mla = MlaOptions{0, kv_rank, nope, rope, v_dim};
  gqa.n_kv_heads = gqa_kv_heads;
  for (const ModelConfig* c : {&mla, &mha, &gqa}) {
    if (Status st = c->Validate(); !st.ok()) {
      if (r == 0) std::fprintf(stderr, "bench_mla_decode: %s\n", st.message().c_str());
      return 2;
    }
  }
  struct Case {
    const char* model;
    const ModelConfig* config;
    KvCache kv_cache;
  };
  const Case cases[] = {{"mla", &mla, KvCache::kLatent},
                        {"mla", &mla, KvCache::kFull},
                        {"mha", &mha, KvCache::kFull},
                        {"gqa", &gqa, KvCache::kFull}};
  constexpr int kCases = 4;
  const Weights weights[] = {Weights::Init(mla), Weights::Init(mha), Weights::Init(gqa)};
  auto weights_of = [&](const ModelConfig* c) -> const Weights& {
    return weights[c == &mla ? 0 : c == &mha ? 1 : 2];
  };
  std::vector<int32_t> prompt(size_t(context) + 1);
  Rng rng(3);
  for (auto& t : prompt) t = static_cast<int32_t>(rng.next_u64() % uint64_t(vocab));

  std::vector<double> ms[kCases];
  int64_t bytes[kCases] = {};
  for (int rep = 0; rep < reps; ++rep) {
    for (int o = 0; o < kCases; ++o) {
      const int i = (o + rep) % kCases;  // rotate which cache goes first
      const Case& k = cases[i];
      Generator gen(*k.config, weights_of(k.config), &w, context + decode, algo.value(),
                    k.kv_cache);
      for (int t = 0; t < context; ++t) gen.step(prompt[size_t(t)]);
      int32_t next = prompt[size_t(context)];
      w.barrier();
      const double t0 = now();
      for (int t = 0; t < decode; ++t) {
        next = argmax(gen.step(next), vocab);  // greedy, as generate(); same on every rank
      }
      double secs = now() - t0;
      w.all_reduce(&secs, 1, DType::kF64, comm::ReduceOp::kMax);
      ms[i].push_back(1e3 * secs / decode);
      bytes[i] = gen.cache_bytes_per_token();
    }
  }
  auto stats = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return nlohmann::json{{"median", v[v.size() / 2]}, {"min", v.front()}, {"max", v.back()}};
  };
  const nlohmann::json cfg = {{"cp", p},
                              {"attention", attention},
                              {"layers", layers},
                              {"d_model", d_model},
                              {"heads", heads},
                              {"kv_lora_rank", kv_rank},
                              {"qk_nope", nope},
                              {"qk_rope", rope},
                              {"v_head_dim", v_dim},
                              {"vocab", vocab},
                              {"context", context},
                              {"decode_tokens", decode},
                              {"reps", reps},
                              {"gqa_kv_heads", gqa_kv_heads},
                              {"cpu", cpu_name()},
                              {"omp_threads", omp_get_max_threads()}};
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (int i = 0; i < kCases; ++i) {
    nlohmann::json j = {{"name", "mla_decode"},
                        {"model", cases[i].model},
                        {"kv_cache", kv_cache_name(cases[i].kv_cache)},
                        {"config", cfg},
                        {"kv_cache_bytes_per_token", bytes[i]},
                        {"ms_per_token", stats(ms[i])}};
    if (i == 0) {
      j["peer"] = "full";
      j["ratio"] = {{"bytes", double(bytes[1]) / double(bytes[0])},
                    {"ms_per_token_median", median(ms[1]) / median(ms[0])}};
      j["bytes_ratio_vs"] = {{"mla_full", double(bytes[1]) / double(bytes[0])},
                             {"mha", double(bytes[2]) / double(bytes[0])},
                             {"gqa", double(bytes[3]) / double(bytes[0])}};
    }
    if (r == 0) std::printf("%s\n", j.dump().c_str());
  }
  std::fflush(stdout);
  return 0;
}
