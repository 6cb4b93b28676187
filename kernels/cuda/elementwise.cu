// Elementwise ops, each forward next to its backward: SwiGLU, embedding, add/scale, sum of
// squares, precision casts, AdamW. Grid-stride loops; all arithmetic in fp32 (sum_squares in
// double).
//   swiglu : out = silu(g) * u, silu(g) = g * sigmoid(g)
//            dg += dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  du += dout * silu(g)
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr int kThreads = 256;

#define GROVE_GRID_STRIDE(i, n)                                             \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); \
       i += int64_t{gridDim.x} * blockDim.x)

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

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                             float lr, float beta1, float beta2, float eps, float weight_decay,
                             float inv_bc1, float inv_bc2) {
  GROVE_GRID_STRIDE(i, n) {
    float g = grad[i];
    float mi = beta1 * m[i] + (1.f - beta1) * g;
    float vi = beta2 * v[i] + (1.f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float p = param[i];
    param[i] = p - lr * (mi * inv_bc1 / (sqrtf(vi * inv_bc2) + eps) + weight_decay * p);
  }
}

#undef GROVE_GRID_STRIDE

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

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step,
                  cudaStream_t stream) {
  GROVE_CHECK(step >= 1) << "AdamW step counts from 1, got " << step;
  if (n == 0) return;
  // Bias corrections in double on the host (beta^step underflows gracefully).
  auto inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(double{beta1}, step)));
  auto inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(double{beta2}, step)));
  adamw_kernel<<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(
      param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, inv_bc1, inv_bc2);
  GROVE_CUDA_CHECK_LAUNCH();
}

#define GROVE_INSTANTIATE(T)                                                                     \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t, cudaStream_t);                \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, cudaStream_t); \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int, int, cudaStream_t);      \
  template void embedding_backward<T>(float*, const T*, const int32_t*, int, int, cudaStream_t); \
  template void add_inplace<T>(T*, const T*, int64_t, cudaStream_t);                             \
  template void scale_inplace<T>(T*, float, int64_t, cudaStream_t);                              \
  template double sum_squares<T>(const T*, int64_t, cudaStream_t);                               \
  template void sum_squares_accumulate<T>(double*, const T*, int64_t, cudaStream_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(bf16)
#undef GROVE_INSTANTIATE

}  // namespace grove::cuda
