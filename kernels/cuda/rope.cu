// RoPE (rotate-half): for i < HD/2, (x_i, x_{i+HD/2}) is rotated by angle pos * theta^(-2i/HD).
//   forward : (a, b) -> (a cos - b sin, b cos + a sin)
//   backward: the inverse (transposed) rotation, (g_a, g_b) -> (g_a cos + g_b sin, g_b cos - g_a
//   sin)
// One thread per (row, head, pair); in place.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;

__global__ void rope_table_kernel(float* cos_table, float* sin_table, int max_pos, int HD,
                                  float theta) {
  int half = HD / 2;
  int64_t total = int64_t{max_pos} * half;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    int p = static_cast<int>(idx / half), i = static_cast<int>(idx % half);
    double angle = p * pow(static_cast<double>(theta), -2.0 * i / HD);
    cos_table[idx] = static_cast<float>(cos(angle));
    sin_table[idx] = static_cast<float>(sin(angle));
  }
}

// sign = +1 forward, -1 backward (rotation by -angle).
template <typename T>
__global__ void rope_kernel(T* x, const float* cos_table, const float* sin_table, int S, int B,
                            int NHx, int HD, int pos0, float sign) {
  int half = HD / 2;
  int64_t total = int64_t{S} * B * NHx * half;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    int i = static_cast<int>(idx % half);
    int64_t head_row = idx / half;  // (s * B + b) * NHx + h
    int s = static_cast<int>(head_row / (int64_t{B} * NHx));
    int64_t t = int64_t{pos0 + s} * half + i;
    float c = cos_table[t], sn = sign * sin_table[t];
    T* p = x + head_row * HD;
    float a = to_f32(p[i]), b = to_f32(p[i + half]);
    p[i] = from_f32<T>(a * c - b * sn);
    p[i + half] = from_f32<T>(b * c + a * sn);
  }
}

template <typename T>
void rope_launch(T* x, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                 int HD, int pos0, float sign, cudaStream_t stream) {
  GROVE_CHECK(HD % 2 == 0) << "RoPE needs an even head dim, got HD=" << HD;
  GROVE_CHECK(pos0 >= 0) << "RoPE pos0 must be >= 0, got " << pos0;
  int64_t total = int64_t{S} * B * NHx * (HD / 2);
  if (total == 0) return;
  rope_kernel<T><<<detail::grid_for(total, 256), 256, 0, stream>>>(x, cos_table, sin_table, S, B,
                                                                   NHx, HD, pos0, sign);
  GROVE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_table(float* cos_table, float* sin_table, int max_pos, int HD, float theta,
                cudaStream_t stream) {
  GROVE_CHECK(HD % 2 == 0) << "RoPE needs an even head dim, got HD=" << HD;
  int64_t total = int64_t{max_pos} * (HD / 2);
  if (total == 0) return;
  rope_table_kernel<<<detail::grid_for(total, 256), 256, 0, stream>>>(cos_table, sin_table, max_pos,
                                                                      HD, theta);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void rope_forward(T* x, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                  int HD, int pos0, cudaStream_t stream) {
  rope_launch(x, cos_table, sin_table, S, B, NHx, HD, pos0, 1.f, stream);
}

template <typename T>
void rope_backward(T* dx, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                   int HD, int pos0, cudaStream_t stream) {
  rope_launch(dx, cos_table, sin_table, S, B, NHx, HD, pos0, -1.f, stream);
}

#define GROVE_INSTANTIATE(T)                                                              \
  template void rope_forward<T>(T*, const float*, const float*, int, int, int, int, int,  \
                                cudaStream_t);                                            \
  template void rope_backward<T>(T*, const float*, const float*, int, int, int, int, int, \
                                 cudaStream_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(bf16)
#undef GROVE_INSTANTIATE

}  // namespace grove::cuda
