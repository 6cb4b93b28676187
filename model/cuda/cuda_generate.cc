// Decoding on the CUDA backend: the templates of parallel/kv_cache_impl.h and
// model/generate_impl.h for CudaBackend<float>.
#include "model/cuda/cuda_generate.h"

#include "model/generate_impl.h"
#include "parallel/kv_cache_impl.h"

namespace grove {

template class GeneratorT<CudaBackend<float>>;
namespace parallel {
template class ShardedKvCacheT<CudaBackend<float>>;
template class DecodeAttentionT<CudaBackend<float>>;
}  // namespace parallel

}  // namespace grove
