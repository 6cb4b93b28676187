// SwiGLU forward/backward: out = silu(gate) * up, silu(g) = g * sigmoid(g).
//
// Legend: n elements (tokens * hidden). Backward, with s = sigmoid(g):
//   dgate += dout * up * s * (1 + g * (1 - s)),   dup += dout * g * s.
#include <cstdint>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

template <typename T>
GROVE_CPU_CLONES void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= detail::kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const T g = gate[i];
    const T s = T(1) / (T(1) + detail::exp_approx<T>(-g));
    out[i] = g * s * up[i];
  }
}

template <typename T>
GROVE_CPU_CLONES void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                      int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= detail::kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const T g = gate[i];
    const T s = T(1) / (T(1) + detail::exp_approx<T>(-g));
    dgate[i] += dout[i] * up[i] * s * (T(1) + g * (T(1) - s));
    dup[i] += dout[i] * g * s;
  }
}

#define GROVE_INSTANTIATE(T)                                        \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t); \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

}  // namespace grove::cpu
