// AdamW (decoupled weight decay, bias-corrected, step counts from 1), as torch.optim.AdamW:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   param -= lr * (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd * param)
#include <cmath>
#include <cstdint>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

GROVE_CPU_CLONES void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n,
                                   float lr, float beta1, float beta2, float eps,
                                   float weight_decay, int step) {
  // Bias corrections in double: 1 - beta2^t is tiny for small t and beta2 close to 1.
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), step));
  const float bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), step));
  const float inv_bc1 = 1.0f / bc1, inv_bc2 = 1.0f / bc2;
#pragma omp parallel for simd schedule(static) if (n >= detail::kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float update = (mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + eps);
    param[i] -= lr * (update + weight_decay * param[i]);
  }
}

}  // namespace grove::cpu
