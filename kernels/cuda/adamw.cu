// AdamW on fp32 master state (the counterpart of kernels/cpu/adamw.cc): decoupled weight decay,
// bias-corrected, step counts from 1; the bias corrections in double on the host.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr int kThreads = 256;

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

}  // namespace

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

}  // namespace grove::cuda
