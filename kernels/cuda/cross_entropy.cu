// Softmax cross-entropy, forward and backward. One block per row for the forward (online
// max / sum-of-exp in fp32, one pass over the logits); a flat grid for the backward, which may
// write in place over the logits.
//   loss = lse - x[t],  lse = m + log(sum exp(x - m));  dx = (exp(x - lse) - [v == t]) * dloss
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr int kThreads = 512;

// Merges two (max, sum of exp(x - max)) pairs; an empty pair is (-inf, 0).
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

template <typename T>
__global__ void cross_entropy_forward_kernel(float* losses, float* lse, const T* logits,
                                             const int32_t* targets, int V) {
  __shared__ float sm[32], ss[32];
  int row = blockIdx.x;
  const T* x = logits + int64_t{row} * V;
  float m = -INFINITY, s = 0.f;
  for (int v = threadIdx.x; v < V; v += blockDim.x) {  // one exp per element
    float xv = to_f32(x[v]);
    if (xv > m) {
      s = s * expf(m - xv) + 1.f;
      m = xv;
    } else if (xv > -INFINITY) {  // a -inf logit (masked padding) contributes nothing
      s += expf(xv - m);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sm[warp] = m, ss[warp] = s;
  __syncthreads();
  if (warp == 0) {
    int nwarps = blockDim.x >> 5;
    m = lane < nwarps ? sm[lane] : -INFINITY;
    s = lane < nwarps ? ss[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) {
      float l = m + logf(s);
      int t = targets[row];
      lse[row] = l;
      losses[row] = t < 0 ? 0.f : l - to_f32(x[t]);
    }
  }
}

template <typename T>
__global__ void cross_entropy_backward_kernel(T* dlogits, const T* logits, const float* lse,
                                              const int32_t* targets, const float* dloss, int N,
                                              int V) {
  int64_t total = int64_t{N} * V;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t row = i / V;
    int v = static_cast<int>(i % V);
    int t = targets[row];
    float g = 0.f;
    if (t >= 0) g = (expf(to_f32(logits[i]) - lse[row]) - (v == t ? 1.f : 0.f)) * dloss[row];
    dlogits[i] = from_f32<T>(g);
  }
}

}  // namespace

template <typename T>
void cross_entropy_forward(float* losses, float* lse, const T* logits, const int32_t* targets,
                           int N, int V, cudaStream_t stream) {
  GROVE_CHECK(V > 0) << "cross-entropy needs V > 0";
  if (N == 0) return;
  cross_entropy_forward_kernel<T><<<N, kThreads, 0, stream>>>(losses, lse, logits, targets, V);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets,
                            const float* dloss, int N, int V, cudaStream_t stream) {
  int64_t total = int64_t{N} * V;
  if (total == 0) return;
  cross_entropy_backward_kernel<T><<<detail::grid_for(total, 256), 256, 0, stream>>>(
      dlogits, logits, lse, targets, dloss, N, V);
  GROVE_CUDA_CHECK_LAUNCH();
}

#define GROVE_INSTANTIATE(T)                                                                 \
  template void cross_entropy_forward<T>(float*, float*, const T*, const int32_t*, int, int, \
                                         cudaStream_t);                                      \
  template void cross_entropy_backward<T>(T*, const T*, const float*, const int32_t*,        \
                                          const float*, int, int, cudaStream_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(bf16)
#undef GROVE_INSTANTIATE

}  // namespace grove::cuda
