// SwiGLU forward and backward (the counterpart of kernels/cpu/swiglu.cc). Grid-stride loops, fp32
// arithmetic whatever T is:
//   out = silu(g) * u, silu(g) = g * sigmoid(g)
//   dg += dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  du += dout * silu(g)
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float x) {
  return 1.f / (1.f + expf(-x));
}

template <typename T>
__global__ void swiglu_forward_kernel(T* out, const T* gate, const T* up, int64_t n) {
  GROVE_GRID_STRIDE(i, n) {
    float g = to_f32(gate[i]);
    out[i] = from_f32<T>(g * sigmoid(g) * to_f32(up[i]));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                       int64_t n) {
  GROVE_GRID_STRIDE(i, n) {
    float g = to_f32(gate[i]), u = to_f32(up[i]), d = to_f32(dout[i]);
    float sg = sigmoid(g);
    dgate[i] = from_f32<T>(to_f32(dgate[i]) + d * u * sg * (1.f + g * (1.f - sg)));
    dup[i] = from_f32<T>(to_f32(dup[i]) + d * g * sg);
  }
}

}  // namespace

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_forward_kernel<T>
      <<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(out, gate, up, n);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n,
                     cudaStream_t stream) {
  if (n == 0) return;
  swiglu_backward_kernel<T>
      <<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dgate, dup, dout, gate, up, n);
  GROVE_CUDA_CHECK_LAUNCH();
}

#define GROVE_INSTANTIATE(T)                                                      \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t, cudaStream_t); \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, cudaStream_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(bf16)
#undef GROVE_INSTANTIATE

}  // namespace grove::cuda
