// The sharded KV cache and decode attention on the host backend (parallel/kv_cache.h): the
// templates of parallel/kv_cache_impl.h for CpuBackend, and the host tree combine.
#include "parallel/kv_cache.h"

#include "parallel/kv_cache_impl.h"

namespace grove::parallel {

template class ShardedKvCacheT<CpuBackend>;
template class DecodeAttentionT<CpuBackend>;

void tree_combine(comm::Communicator& cp, float* o, float* lse, int64_t rows, int HD,
                  float* scratch, CommStats* stats) {
  tree_combine<CpuBackend>(cp, o, lse, rows, HD, scratch, stats);
}

}  // namespace grove::parallel
