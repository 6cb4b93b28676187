// RMSNorm forward and backward. One warp per row; fp32 statistics for every T.
//   forward : out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps)
//   backward: dx += rstd * w * dy - x * rstd^3 / C * sum_j(dy_j w_j x_j);  dw += sum_rows dy x rstd
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr int kWarps = 8;  // rows per block

template <typename T>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* inp, const float* weight,
                                       int N, int C, float eps) {
  int row = blockIdx.x * kWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= N) return;
  const T* x = inp + int64_t{row} * C;
  float ss = 0.f;
  for (int c = lane; c < C; c += 32) {
    float v = to_f32(x[c]);
    ss += v * v;
  }
  ss = detail::warp_sum(ss);
  float r = rsqrtf(ss / C + eps);
  T* y = out + int64_t{row} * C;
  for (int c = lane; c < C; c += 32) y[c] = from_f32<T>(to_f32(x[c]) * r * weight[c]);
  if (lane == 0) rstd[row] = r;
}

// Grid-stride over rows; dweight partials in shared memory (C floats), one atomicAdd per block
// and channel at the end.
template <typename T>
__global__ void rmsnorm_backward_kernel(T* dinp, float* dweight, const T* dout, const T* inp,
                                        const float* weight, const float* rstd, int N, int C) {
  extern __shared__ float dw[];
  for (int c = threadIdx.x; c < C; c += blockDim.x) dw[c] = 0.f;
  __syncthreads();
  int lane = threadIdx.x & 31;
  for (int row = blockIdx.x * kWarps + (threadIdx.x >> 5); row < N; row += gridDim.x * kWarps) {
    const T* x = inp + int64_t{row} * C;
    const T* dy = dout + int64_t{row} * C;
    T* dx = dinp + int64_t{row} * C;
    float r = rstd[row];
    float dot = 0.f;
    for (int c = lane; c < C; c += 32) dot += to_f32(dy[c]) * weight[c] * to_f32(x[c]);
    dot = detail::warp_sum(dot);
    float k = r * r * r * dot / C;
    for (int c = lane; c < C; c += 32) {
      float xv = to_f32(x[c]), g = to_f32(dy[c]);
      dx[c] = from_f32<T>(to_f32(dx[c]) + r * weight[c] * g - xv * k);
      atomicAdd(&dw[c], g * xv * r);
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(&dweight[c], dw[c]);
}

int sm_count() {
  int device = 0, sms = 0;
  GROVE_CUDA_CHECK(cudaGetDevice(&device));
  GROVE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

}  // namespace

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const float* weight, int N, int C,
                     float eps, cudaStream_t stream) {
  if (N == 0) return;
  rmsnorm_forward_kernel<T>
      <<<(N + kWarps - 1) / kWarps, kWarps * 32, 0, stream>>>(out, rstd, inp, weight, N, C, eps);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void rmsnorm_backward(T* dinp, float* dweight, const T* dout, const T* inp, const float* weight,
                      const float* rstd, int N, int C, cudaStream_t stream) {
  if (N == 0) return;
  size_t smem = sizeof(float) * C;
  if (smem > 48 * 1024)
    GROVE_CUDA_CHECK(cudaFuncSetAttribute(rmsnorm_backward_kernel<T>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
  int blocks = std::min((N + kWarps - 1) / kWarps, 2 * sm_count());
  rmsnorm_backward_kernel<T>
      <<<blocks, kWarps * 32, smem, stream>>>(dinp, dweight, dout, inp, weight, rstd, N, C);
  GROVE_CUDA_CHECK_LAUNCH();
}

#define GROVE_INSTANTIATE(T)                                                                    \
  template void rmsnorm_forward<T>(T*, float*, const T*, const float*, int, int, float,         \
                                   cudaStream_t);                                               \
  template void rmsnorm_backward<T>(T*, float*, const T*, const T*, const float*, const float*, \
                                    int, int, cudaStream_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(bf16)
#undef GROVE_INSTANTIATE

}  // namespace grove::cuda
