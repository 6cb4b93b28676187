// Vocabulary-shard embedding and cross-entropy (the counterpart of kernels/cpu/vocab_shard.cc):
// the kernels of the vocabulary-parallel embedding and loss (parallel/vocab_parallel.h). This
// rank owns the ids [vocab_start, vocab_start + V). Row reductions run one block per row in fp32;
// the embedding backward scatters with fp32 atomics (not bitwise deterministic run to run).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr int kThreads = 256;

// The shard-local id of a global id, or -1 when this shard does not own it.
__device__ __forceinline__ int local_id(int32_t id, int vocab_start, int V) {
  const int64_t local = int64_t{id} - vocab_start;
  return id >= 0 && local >= 0 && local < V ? static_cast<int>(local) : -1;
}

template <typename T>
__global__ void embedding_forward_shard_kernel(T* out, const int32_t* tokens, const T* table, int N,
                                               int C, int vocab_start, int V) {
  GROVE_GRID_STRIDE(i, int64_t{N} * C) {
    const int64_t n = i / C, c = i % C;
    const int id = local_id(tokens[n], vocab_start, V);
    out[i] = id >= 0 ? table[int64_t{id} * C + c] : from_f32<T>(0.f);
  }
}

template <typename T>
__global__ void embedding_backward_shard_kernel(float* dtable, const T* dout, const int32_t* tokens,
                                                int N, int C, int vocab_start, int V) {
  GROVE_GRID_STRIDE(i, int64_t{N} * C) {
    const int64_t n = i / C, c = i % C;
    const int id = local_id(tokens[n], vocab_start, V);
    if (id >= 0) atomicAdd(&dtable[int64_t{id} * C + c], to_f32(dout[i]));
  }
}

template <typename T>
__global__ void cross_entropy_shard_max_kernel(float* row_max, const T* logits, int V) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, to_f32(x[j]));
  m = detail::block_reduce(m, scratch, -INFINITY, detail::MaxOp{});
  if (threadIdx.x == 0) row_max[row] = m;
}

template <typename T>
__global__ void cross_entropy_shard_sums_kernel(float* packed, const T* logits,
                                                const float* row_max, const int32_t* targets, int N,
                                                int V, int vocab_start) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  const float m = row_max[row];
  float s = 0.f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(to_f32(x[j]) - m);
  s = detail::block_reduce(s, scratch, 0.f, detail::SumOp{});
  if (threadIdx.x == 0) {
    packed[row] = s;
    const int id = local_id(targets[row], vocab_start, V);
    packed[N + row] = id >= 0 ? to_f32(x[id]) : 0.f;
  }
}

__global__ void cross_entropy_shard_finish_kernel(float* losses, float* lse, const float* row_max,
                                                  const float* packed, const int32_t* targets,
                                                  int N) {
  GROVE_GRID_STRIDE(n, int64_t{N}) {
    const float l = row_max[n] + logf(packed[n]);
    lse[n] = l;
    losses[n] = targets[n] >= 0 ? l - packed[N + n] : 0.f;
  }
}

template <typename T>
__global__ void cross_entropy_shard_backward_kernel(T* dlogits, const T* logits, const float* lse,
                                                    const int32_t* targets, const float* dloss,
                                                    int N, int V, int vocab_start) {
  GROVE_GRID_STRIDE(i, int64_t{N} * V) {
    const int64_t row = i / V;
    const int j = static_cast<int>(i % V);
    const int32_t t = targets[row];
    const float scale = t >= 0 ? dloss[row] : 0.f;
    float g = expf(to_f32(logits[i]) - lse[row]) * scale;
    if (local_id(t, vocab_start, V) == j) g -= scale;
    dlogits[i] = from_f32<T>(g);
  }
}

}  // namespace

template <typename T>
void embedding_forward_shard(T* out, const int32_t* tokens, const T* table, int N, int C,
                             int vocab_start, int V, cudaStream_t stream) {
  const int64_t n = int64_t{N} * C;
  if (n == 0) return;
  embedding_forward_shard_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(
      out, tokens, table, N, C, vocab_start, V);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void embedding_backward_shard(float* dtable, const T* dout, const int32_t* tokens, int N, int C,
                              int vocab_start, int V, cudaStream_t stream) {
  const int64_t n = int64_t{N} * C;
  if (n == 0) return;
  embedding_backward_shard_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(
      dtable, dout, tokens, N, C, vocab_start, V);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void cross_entropy_shard_max(float* row_max, const T* logits, int N, int V, cudaStream_t stream) {
  GROVE_CHECK(V > 0) << "cross_entropy_shard_max needs V > 0";
  if (N == 0) return;
  cross_entropy_shard_max_kernel<T><<<N, kThreads, 0, stream>>>(row_max, logits, V);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void cross_entropy_shard_sums(float* packed, const T* logits, const float* row_max,
                              const int32_t* targets, int N, int V, int vocab_start,
                              cudaStream_t stream) {
  GROVE_CHECK(V > 0) << "cross_entropy_shard_sums needs V > 0";
  if (N == 0) return;
  cross_entropy_shard_sums_kernel<T>
      <<<N, kThreads, 0, stream>>>(packed, logits, row_max, targets, N, V, vocab_start);
  GROVE_CUDA_CHECK_LAUNCH();
}

void cross_entropy_shard_finish(float* losses, float* lse, const float* row_max,
                                const float* packed, const int32_t* targets, int N,
                                cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_shard_finish_kernel<<<detail::grid_for(N, kThreads), kThreads, 0, stream>>>(
      losses, lse, row_max, packed, targets, N);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void cross_entropy_shard_backward(T* dlogits, const T* logits, const float* lse,
                                  const int32_t* targets, const float* dloss, int N, int V,
                                  int vocab_start, cudaStream_t stream) {
  const int64_t n = int64_t{N} * V;
  if (n == 0) return;
  cross_entropy_shard_backward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(
      dlogits, logits, lse, targets, dloss, N, V, vocab_start);
  GROVE_CUDA_CHECK_LAUNCH();
}

#define GROVE_INSTANTIATE(T)                                                                      \
  template void embedding_forward_shard<T>(T*, const int32_t*, const T*, int, int, int, int,      \
                                           cudaStream_t);                                         \
  template void embedding_backward_shard<T>(float*, const T*, const int32_t*, int, int, int, int, \
                                            cudaStream_t);                                        \
  template void cross_entropy_shard_max<T>(float*, const T*, int, int, cudaStream_t);             \
  template void cross_entropy_shard_sums<T>(float*, const T*, const float*, const int32_t*, int,  \
                                            int, int, cudaStream_t);                              \
  template void cross_entropy_shard_backward<T>(T*, const T*, const float*, const int32_t*,       \
                                                const float*, int, int, int, cudaStream_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(bf16)
#undef GROVE_INSTANTIATE

}  // namespace grove::cuda
