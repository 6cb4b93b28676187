// grove-generate's decoding on a device (worker/generate_main.cc): the Generator of the backend
// that --device names, over the context-parallel group of all ranks.
//   cpu:  Generator (model/generate.h), host memory, the MPI group.
//   cuda: CudaGenerator (model/cuda/cuda_generate.h), one GPU per rank (the node-local rank's
//         device), the KV cache, the partials and the combine in device memory; the cp group on
//         device memory (NCCL; MPI on emulated device memory under the CUDA emulator), else the
//         MPI group with each collective staged through host memory.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "model/generate.h"
#include "model/weights.h"
#include "parallel/grid.h"
#include "spec/enums.h"
#include "spec/model_config.h"

namespace grove {

struct GenerateRun {
  std::vector<int32_t> tokens;  // generated (identical on every rank)
  double seconds = 0;           // the prompt and the generation, wall clock
  double attention_bytes = 0;   // the decode attention's communication per rank
  std::string describe;         // "cpu" / "cuda:0 NVIDIA H100 ..., cp group on nccl"
  int64_t cache_bytes_per_token = 0;  // this rank's KV cache shard per token it holds (CPU)
};

// Greedy decoding of `prompt` (model/generate.h's generate) on `device` with the KV cache sharded
// over grid.cp(). A device the build or the machine lacks is an error naming it, on every rank.
// kv_cache: the full K/V cache or, for MLA models on the CPU only, the latent cache
// (model/generate.h); latent on an MHA model or on cuda is an error naming --kv-cache.
StatusOr<GenerateRun> GenerateOnDevice(Device device, const ModelConfig& config,
                                       const Weights& weights, const parallel::ParallelGrid& grid,
                                       int capacity, CpAttention attention,
                                       std::span<const int32_t> prompt, int max_new, int eos_id,
                                       KvCache kv_cache = KvCache::kFull);

// The cuda half (worker/cuda/generate_cuda.cc; an error in a build without CUDA).
StatusOr<GenerateRun> GenerateOnCuda(const ModelConfig& config, const Weights& weights,
                                     const parallel::ParallelGrid& grid, int capacity,
                                     CpAttention attention, std::span<const int32_t> prompt,
                                     int max_new, int eos_id);

}  // namespace grove
