// grove-generate: greedy text generation from a checkpoint, the context sharded over N ranks.
//
//   mpirun -np 4 grove-generate --run runs/t1 --prompt "The jury said" --max-new-tokens 40
//
// Every rank loads the full (tp = 1) weights; the KV cache is sharded over the context-parallel
// group of all ranks (cp = N) and each layer's attention combines the shards with tree attention
// (or the ring baseline, --attention ring). Rank 0 prints the prompt and the generated text, then
// one JSON line with the token count, time per token and the attention's bytes per rank.
//
// --device cpu (default) decodes on the host; --device cuda on one GPU per rank (the node-local
// rank's device), the model, the KV cache shards and the combine in device memory, the cp group
// on NCCL when the build has it (worker/generate_device.h). The device is chosen here, not taken
// from the checkpoint's train.device: a checkpoint trained on GPUs decodes on CPUs and back. A
// build without CUDA, or a rank without a device, ends with an error saying so.
//
// --kv-cache latent|full: an MLA checkpoint decodes by default (on the CPU) with the latent cache
// ([c | k_R] per token, the up-projections absorbed; model/generate.h), else with the full K/V
// cache; latent on an MHA checkpoint, or with --device cuda, is an error naming the flag.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "data/tokenizer.h"
#include "kernels/blas/blas_kernel.h"
#include "parallel/grid.h"
#include "worker/generate_device.h"
#include "worker/generate_load.h"

namespace {

int fail(int rank, const std::string& message) {
  if (rank == 0) std::fprintf(stderr, "grove-generate: error: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Before MPI, threads and any GEMM: may execute the program again on the right BLAS kernel.
  grove::blas::SelectBlasKernel(argv);
  CLI::App app{"Grove generate: greedy decoding from a checkpoint over N context-parallel ranks"};
  std::string checkpoint, run_dir, prompt, attention = "tree", device = "cpu", kv_cache;
  std::string tokenizer_path = "runs/data-brown-8192/tokenizer.model";
  int max_new = 32, capacity = 0;
  app.add_option("--checkpoint", checkpoint, "checkpoint directory (step_XXXXXXXX)");
  app.add_option("--run", run_dir, "training output directory: use its latest checkpoint");
  app.add_option("--tokenizer", tokenizer_path, "SentencePiece model")->capture_default_str();
  app.add_option("--prompt", prompt, "text to continue")->required();
  app.add_option("--max-new-tokens", max_new, "tokens to generate")->capture_default_str();
  app.add_option("--attention", attention, "context-parallel attention: tree or ring")
      ->capture_default_str();
  app.add_option("--device", device, "where to decode: cpu or cuda (one GPU per rank)")
      ->capture_default_str();
  app.add_option("--kv-cache", kv_cache,
                 "latent (MLA: keep [c | k_R] per token, absorb the up-projections; CPU only) or "
                 "full (the per-head K/V); default latent for MLA checkpoints, full otherwise");
  app.add_option("--capacity", capacity, "context capacity in tokens (0: prompt + new tokens)");
  CLI11_PARSE(app, argc, argv);

  grove::comm::MpiSession mpi(&argc, &argv);
  const int rank = mpi.world_rank(), n = mpi.world_size();
  try {
    auto algo = grove::parse_cp_attention(attention, "--attention");
    if (!algo.ok()) return fail(rank, algo.status().message());
    auto dev = grove::parse_device(device, "--device");
    if (!dev.ok()) return fail(rank, dev.status().message());
    auto dir = grove::ResolveCheckpointDir(checkpoint, run_dir);
    if (!dir.ok()) return fail(rank, dir.status().message());
    grove::ModelConfig config;
    grove::Weights weights;
    grove::Status st = grove::LoadForGeneration(dir.value(), &config, &weights);
    if (!st.ok()) return fail(rank, st.message());
    auto tok = grove::data::Tokenizer::Load(tokenizer_path);
    if (!tok.ok()) return fail(rank, tok.status().message());
    if (tok.value().vocab_size() > config.vocab_size)
      return fail(rank, "the tokenizer's vocabulary (" + std::to_string(tok.value().vocab_size()) +
                            ") does not fit the model's (" + std::to_string(config.vocab_size) +
                            ")");
    const std::vector<int32_t> ids = tok.value().Encode(prompt);
    if (ids.empty()) return fail(rank, "the prompt encodes to no tokens");
    if (kv_cache.empty())
      kv_cache = config.is_mla() && dev.value() == grove::Device::kCPU ? "latent" : "full";
    if (kv_cache != "latent" && kv_cache != "full")
      return fail(rank, "--kv-cache must be latent or full, not '" + kv_cache + "'");
    const grove::KvCache kv =
        kv_cache == "latent" ? grove::KvCache::kLatent : grove::KvCache::kFull;
    if (capacity <= 0) capacity = static_cast<int>(ids.size()) + max_new;

    // The context-parallel group is the whole world: cp = N.
    std::shared_ptr<grove::comm::Communicator> world(mpi.world());
    auto grid = grove::parallel::ParallelGrid::create(
        world, {.world = n, .tp = 1, .cp = n, .ep = 1, .dp = 1});
    if (!grid.ok()) return fail(rank, grid.status().message());
    auto run = grove::GenerateOnDevice(dev.value(), config, weights, grid.value(), capacity,
                                       algo.value(), ids, max_new, tok.value().eos_id(), kv);
    if (!run.ok()) return fail(rank, run.status().message());
    const std::vector<int32_t>& out = run.value().tokens;
    const double secs = run.value().seconds;
    if (rank == 0) {
      // Decoded together: a continuation decoded alone would lose its leading space.
      std::vector<int32_t> all = ids;
      all.insert(all.end(), out.begin(), out.end());
      std::printf("%s\n", tok.value().Decode(all).c_str());
      const nlohmann::json line = {{"checkpoint", dir.value()},
                                   {"device", run.value().describe},
                                   {"cp", n},
                                   {"attention", grove::cp_attention_name(algo.value())},
                                   {"kv_cache", kv_cache},
                                   {"kv_cache_bytes_per_token", run.value().cache_bytes_per_token},
                                   {"prompt_tokens", ids.size()},
                                   {"new_tokens", out.size()},
                                   {"ms_per_token", 1e3 * secs / double(ids.size() + out.size())},
                                   {"attention_bytes_per_rank", run.value().attention_bytes}};
      std::printf("%s\n", line.dump().c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "grove-generate: error on rank %d: %s\n", rank, e.what());
    return 3;
  }
}
