// MLA decoding: the latent KV cache against the full K/V cache (model/generate.h), same model,
// same run. Run under mpirun (cp = all ranks) or alone:
//   mpirun --allow-run-as-root --oversubscribe -np 2 bench_mla_decode
//          [--context 512] [--decode 32] [--reps 5] [--layers 4] [--d-model 512] [--heads 8]
//          [--kv-rank 128] [--nope 32] [--rope 16] [--v-dim 32] [--vocab 8192] [--attention tree]
// Per repetition both generators prefill the same `context` tokens (step by step), then the
// `decode` next tokens are timed (slowest rank); the order latent/full alternates per repetition.
// One JSON line per cache (name mla_decode): config (model, cp, attention, CPU, OpenMP threads),
// kv_cache_bytes_per_token (this rank's shard per token it holds, all layers),
// ms_per_token {median, min, max} over the repetitions; the latent line has peer = "full" and
// ratio = full / latent for both.
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
  int kv_rank = 128, nope = 32, rope = 16, v_dim = 32, vocab = 8192;
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

  ModelConfig c;
  c.vocab_size = vocab;
  c.d_model = d_model;
  c.n_layers = layers;
  c.n_heads = heads;
  c.max_seq_len = context + decode;
  c.seed = 5;
  c.attention = Attention::kMla;
  c.mla = MlaOptions{0, kv_rank, nope, rope, v_dim};
  const Weights weights = Weights::Init(c);
  std::vector<int32_t> prompt(size_t(context) + 1);
  Rng rng(3);
  for (auto& t : prompt) t = static_cast<int32_t>(rng.next_u64() % uint64_t(vocab));

  const KvCache kinds[2] = {KvCache::kLatent, KvCache::kFull};
  std::vector<double> ms[2];
  int64_t bytes[2] = {0, 0};
  for (int rep = 0; rep < reps; ++rep) {
    for (int o = 0; o < 2; ++o) {
      const int i = (o + rep) % 2;  // alternate which cache goes first
      Generator gen(c, weights, &w, context + decode, algo.value(), kinds[i]);
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
                              {"cpu", cpu_name()},
                              {"omp_threads", omp_get_max_threads()}};
  for (int i = 0; i < 2; ++i) {
    nlohmann::json j = {{"name", "mla_decode"},
                        {"kv_cache", kv_cache_name(kinds[i])},
                        {"config", cfg},
                        {"kv_cache_bytes_per_token", bytes[i]},
                        {"ms_per_token", stats(ms[i])}};
    if (i == 0) {
      std::vector<double> a = ms[0], b = ms[1];
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      j["peer"] = "full";
      j["ratio"] = {{"bytes", double(bytes[1]) / double(bytes[0])},
                    {"ms_per_token_median", b[b.size() / 2] / a[a.size() / 2]}};
    }
    if (r == 0) std::printf("%s\n", j.dump().c_str());
  }
  std::fflush(stdout);
  return 0;
}
