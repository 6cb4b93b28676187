// Elementwise helpers (the counterpart of kernels/cpu/elementwise.cc): add, scale, sum of squares
// (in double) and the precision casts. Grid-stride loops; arithmetic in fp32.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr int kThreads = 256;

template <typename T>
__global__ void add_kernel(T* y, const T* x, int64_t n) {
  GROVE_GRID_STRIDE(i, n) y[i] = from_f32<T>(to_f32(y[i]) + to_f32(x[i]));
}

template <typename T>
__global__ void scale_kernel(T* y, float alpha, int64_t n) {
  GROVE_GRID_STRIDE(i, n) y[i] = from_f32<T>(to_f32(y[i]) * alpha);
}

template <typename T>
__global__ void sum_squares_kernel(double* result, const T* x, int64_t n) {
  __shared__ double scratch[32];
  double acc = 0.0;
  GROVE_GRID_STRIDE(i, n) {
    double v = to_f32(x[i]);
    acc += v * v;
  }
  acc = detail::block_reduce(acc, scratch, 0.0, detail::SumOp{});
  if (threadIdx.x == 0) atomicAdd(result, acc);
}

template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, int64_t n) {
  GROVE_GRID_STRIDE(i, n) dst[i] = from_f32<D>(to_f32(src[i]));
}

}  // namespace

template <typename T>
void add_inplace(T* y, const T* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  add_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(y, x, n);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void scale_inplace(T* y, float alpha, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  scale_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(y, alpha, n);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void sum_squares_accumulate(double* result, const T* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  unsigned blocks = std::min<unsigned>(detail::grid_for(n, kThreads), 1024);
  sum_squares_kernel<T><<<blocks, kThreads, 0, stream>>>(result, x, n);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
double sum_squares(const T* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return 0.0;
  double* d = nullptr;
  GROVE_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&d), sizeof(double), stream));
  double h = 0.0;
  try {
    GROVE_CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof(double), stream));
    sum_squares_accumulate(d, x, n, stream);
    GROVE_CUDA_CHECK(cudaMemcpyAsync(&h, d, sizeof(double), cudaMemcpyDeviceToHost, stream));
    GROVE_CUDA_CHECK(cudaFreeAsync(d, stream));
  } catch (...) {
    cudaFreeAsync(d, stream);
    throw;
  }
  GROVE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return h;
}

void convert(bf16* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  convert_kernel<bf16, float><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dst, src, n);
  GROVE_CUDA_CHECK_LAUNCH();
}

void convert(float* dst, const bf16* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  convert_kernel<float, bf16><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dst, src, n);
  GROVE_CUDA_CHECK_LAUNCH();
}

#define GROVE_INSTANTIATE(T)                                         \
  template void add_inplace<T>(T*, const T*, int64_t, cudaStream_t); \
  template void scale_inplace<T>(T*, float, int64_t, cudaStream_t);  \
  template double sum_squares<T>(const T*, int64_t, cudaStream_t);   \
  template void sum_squares_accumulate<T>(double*, const T*, int64_t, cudaStream_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(bf16)
#undef GROVE_INSTANTIATE

}  // namespace grove::cuda
