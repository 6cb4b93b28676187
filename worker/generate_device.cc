#include "worker/generate_device.h"

#include <chrono>

#include "model/generate.h"

namespace grove {

StatusOr<GenerateRun> GenerateOnDevice(Device device, const ModelConfig& config,
                                       const Weights& weights, const parallel::ParallelGrid& grid,
                                       int capacity, CpAttention attention,
                                       std::span<const int32_t> prompt, int max_new, int eos_id,
                                       KvCache kv_cache) {
  if (kv_cache == KvCache::kLatent && !config.is_mla())
    return Status::Error(std::string("--kv-cache latent needs an MLA checkpoint "
                                     "(model.attention=mla); this one is ") +
                         attention_name(config.attention) + ": use --kv-cache full");
  if (kv_cache == KvCache::kLatent && device == Device::kCUDA)
    return Status::Error(
        "--kv-cache latent decodes on the CPU only (--device cpu); use --kv-cache full with "
        "--device cuda");
  if (device == Device::kCUDA)
    return GenerateOnCuda(config, weights, grid, capacity, attention, prompt, max_new, eos_id);
  comm::Communicator& cp = grid.cp();
  Generator gen(config, weights, &cp, capacity, attention, kv_cache);
  GenerateRun run;
  const auto t0 = std::chrono::steady_clock::now();
  run.tokens = gen.generate(prompt, max_new, eos_id);
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  run.attention_bytes = gen.attention_stats().bytes;
  run.describe = "cpu";
  run.cache_bytes_per_token = gen.cache_bytes_per_token();
  return run;
}

#ifndef GROVE_HAVE_CUDA
StatusOr<GenerateRun> GenerateOnCuda(const ModelConfig&, const Weights&,
                                     const parallel::ParallelGrid&, int, CpAttention,
                                     std::span<const int32_t>, int, int) {
  return Status::Error(
      "--device cuda, but this build has no CUDA (configure with the CUDA toolkit, "
      "GROVE_CUDA=ON); use --device cpu");
}
#endif

}  // namespace grove
