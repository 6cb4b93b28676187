// Greedy decoding on one CUDA device per rank (model/generate.h): GeneratorT<CudaBackend<float>>,
// the model, the context-parallel KV cache and the decode attention in device memory; the CP
// group's collectives run on device buffers (NCCL, the thread transport, or MPI on emulated
// device memory) or are staged through the host for a host group (parallel/backend_collectives.h).
#pragma once

#include "kernels/cuda/backend.h"
#include "model/cuda/cuda_transformer.h"
#include "model/generate.h"
#include "parallel/kv_cache.h"

namespace grove {

using CudaGenerator = GeneratorT<CudaBackend<float>>;
extern template class GeneratorT<CudaBackend<float>>;
namespace parallel {
using CudaShardedKvCache = ShardedKvCacheT<CudaBackend<float>>;
using CudaDecodeAttention = DecodeAttentionT<CudaBackend<float>>;
extern template class ShardedKvCacheT<CudaBackend<float>>;
extern template class DecodeAttentionT<CudaBackend<float>>;
}  // namespace parallel

}  // namespace grove
