// RoPE forward/backward, rotate-half convention (Llama, PyTorch reference implementations).
//
// Legend: S sequence, B batch, NHx heads of the tensor (q or kv), HD head dim, half = HD/2.
// For x = [x1, x2] (halves of a head), angle a_i = pos * theta^(-2i/HD):
//   out1 = x1 cos - x2 sin,  out2 = x2 cos + x1 sin.
// The backward applies the transposed rotation (angle -a), which is the exact adjoint even
// though the float tables are rounded.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

void rope_table(float* cos_table, float* sin_table, int max_pos, int HD, float theta) {
  const int half = HD / 2;
#pragma omp parallel for schedule(static) if (int64_t{max_pos} * HD >= 1024)
  for (int p = 0; p < max_pos; ++p) {
    for (int i = 0; i < half; ++i) {
      const double inv_freq = std::pow(static_cast<double>(theta), -2.0 * i / HD);
      const double angle = static_cast<double>(p) * inv_freq;
      cos_table[static_cast<int64_t>(p) * half + i] = static_cast<float>(std::cos(angle));
      sin_table[static_cast<int64_t>(p) * half + i] = static_cast<float>(std::sin(angle));
    }
  }
}

namespace {

// sign = +1: forward rotation; sign = -1: inverse (transpose).
template <typename T>
GROVE_CPU_CLONES void rope_apply(T* x, const float* cos_table, const float* sin_table, int S, int B,
                                 int NHx, int HD, int pos0, T sign) {
  const int half = HD / 2;
  const int64_t rows = static_cast<int64_t>(S) * B * NHx;
#pragma omp parallel for schedule(static) if (rows * HD >= detail::kMinParallelWork)
  for (int64_t row = 0; row < rows; ++row) {
    const int s = static_cast<int>(row / (static_cast<int64_t>(B) * NHx));
    const float* cs = cos_table + static_cast<int64_t>(pos0 + s) * half;
    const float* sn = sin_table + static_cast<int64_t>(pos0 + s) * half;
    T* x1 = x + row * HD;
    T* x2 = x1 + half;
#pragma omp simd
    for (int i = 0; i < half; ++i) {
      const T c = cs[i], si = sign * static_cast<T>(sn[i]);
      const T a = x1[i], b = x2[i];
      x1[i] = a * c - b * si;
      x2[i] = b * c + a * si;
    }
  }
}

}  // namespace

template <typename T>
void rope_forward(T* x, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                  int HD, int pos0) {
  rope_apply<T>(x, cos_table, sin_table, S, B, NHx, HD, pos0, T(1));
}

template <typename T>
void rope_backward(T* dx, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                   int HD, int pos0) {
  rope_apply<T>(dx, cos_table, sin_table, S, B, NHx, HD, pos0, T(-1));
}

#define GROVE_INSTANTIATE(T)                                                              \
  template void rope_forward<T>(T*, const float*, const float*, int, int, int, int, int); \
  template void rope_backward<T>(T*, const float*, const float*, int, int, int, int, int);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

}  // namespace grove::cpu
