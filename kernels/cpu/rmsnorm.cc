// RMSNorm forward/backward: out = x * rstd * weight, rstd = 1/sqrt(mean(x^2) + eps).
//
// Legend: N rows (tokens), C channels. Backward, with r = rstd and g = dout * weight:
//   dx = r * g - x * r^3 / C * sum_c(g_c x_c),   dweight += sum_n dout * x * r.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

template <typename T>
GROVE_CPU_CLONES void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C,
                                      float eps) {
#pragma omp parallel for schedule(static) if (int64_t{N} * C >= detail::kMinParallelWork)
  for (int n = 0; n < N; ++n) {
    const T* x = inp + static_cast<int64_t>(n) * C;
    T* y = out + static_cast<int64_t>(n) * C;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; ++c) ss += x[c] * x[c];
    const T r = T(1) / std::sqrt(ss / T(C) + T(eps));
#pragma omp simd
    for (int c = 0; c < C; ++c) y[c] = x[c] * r * weight[c];
    rstd[n] = r;
  }
}

template <typename T>
GROVE_CPU_CLONES void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp,
                                       const T* weight, const T* rstd, int N, int C) {
#pragma omp parallel if (int64_t{N} * C >= detail::kMinParallelWork)
  {
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n) {
      const T* x = inp + static_cast<int64_t>(n) * C;
      const T* dy = dout + static_cast<int64_t>(n) * C;
      T* dx = dinp + static_cast<int64_t>(n) * C;
      const T r = rstd[n];
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int c = 0; c < C; ++c) dot += dy[c] * weight[c] * x[c];
      const T k = dot * r * r * r / T(C);
#pragma omp simd
      for (int c = 0; c < C; ++c) dx[c] += r * weight[c] * dy[c] - k * x[c];
    }
    // dweight: each thread owns a block of columns (no reduction race, deterministic).
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int chunk = (C + nt - 1) / nt;
    const int c0 = std::min(C, t * chunk), c1 = std::min(C, c0 + chunk);
    for (int n = 0; n < N; ++n) {
      const T* x = inp + static_cast<int64_t>(n) * C;
      const T* dy = dout + static_cast<int64_t>(n) * C;
      const T r = rstd[n];
#pragma omp simd
      for (int c = c0; c < c1; ++c) dweight[c] += dy[c] * x[c] * r;
    }
  }
}

#define GROVE_INSTANTIATE(T)                                                     \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int, int, float); \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int, int);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

}  // namespace grove::cpu
