// Elementwise helpers: y += x, y *= alpha, sum of squares (in double, for gradient norms).
#include <omp.h>

#include <cstdint>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

template <typename T>
void add_inplace(T* y, const T* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= detail::kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template <typename T>
void scale_inplace(T* y, T alpha, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= detail::kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) y[i] *= alpha;
}

template <typename T>
double sum_squares(const T* x, int64_t n) {
  double total = 0;
#pragma omp parallel for simd schedule(static) if (n >= detail::kMinParallelWork) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return total;
}

int num_threads() {
  return omp_get_max_threads();
}

#define GROVE_INSTANTIATE(T)                           \
  template void add_inplace<T>(T*, const T*, int64_t); \
  template void scale_inplace<T>(T*, T, int64_t);      \
  template double sum_squares<T>(const T*, int64_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

}  // namespace grove::cpu
