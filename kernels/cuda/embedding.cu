// Embedding forward and backward (the counterpart of kernels/cpu/embedding.cc): out[n, :] =
// table[tokens[n], :]; the backward scatters dout rows into the fp32 dtable with atomics (not
// bitwise deterministic from run to run, see ops.h).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr int kThreads = 256;

template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* table, int N,
                                         int C) {
  GROVE_GRID_STRIDE(i, int64_t{N} * C) {
    int64_t n = i / C, c = i % C;
    out[i] = table[int64_t{tokens[n]} * C + c];
  }
}

template <typename T>
__global__ void embedding_backward_kernel(float* dtable, const T* dout, const int32_t* tokens,
                                          int N, int C) {
  GROVE_GRID_STRIDE(i, int64_t{N} * C) {
    int64_t n = i / C, c = i % C;
    atomicAdd(&dtable[int64_t{tokens[n]} * C + c], to_f32(dout[i]));
  }
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int N, int C,
                       cudaStream_t stream) {
  int64_t n = int64_t{N} * C;
  if (n == 0) return;
  embedding_forward_kernel<T>
      <<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(out, tokens, table, N, C);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void embedding_backward(float* dtable, const T* dout, const int32_t* tokens, int N, int C,
                        cudaStream_t stream) {
  int64_t n = int64_t{N} * C;
  if (n == 0) return;
  embedding_backward_kernel<T>
      <<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dtable, dout, tokens, N, C);
  GROVE_CUDA_CHECK_LAUNCH();
}

#define GROVE_INSTANTIATE(T)                                                                \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int, int, cudaStream_t); \
  template void embedding_backward<T>(float*, const T*, const int32_t*, int, int, cudaStream_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(bf16)
#undef GROVE_INSTANTIATE

}  // namespace grove::cuda
