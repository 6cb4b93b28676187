// Elementwise helpers: y += x, y *= alpha, sum of squares (in double, for gradient norms).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

template <typename T>
GROVE_CPU_CLONES void add_inplace(T* y, const T* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= detail::kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template <typename T>
GROVE_CPU_CLONES void scale_inplace(T* y, T alpha, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= detail::kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) y[i] *= alpha;
}

// Deterministic whatever the thread count: fixed-size blocks are summed independently and the
// block sums are added in order (an OpenMP reduction combines thread partials in completion order,
// which would make the gradient norm, hence clipping and a resumed run, differ in the last bit).
template <typename T>
GROVE_CPU_CLONES double sum_squares(const T* x, int64_t n) {
  constexpr int64_t kBlock = 1 << 15;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks));
#pragma omp parallel for schedule(static) if (n >= detail::kMinParallelWork)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = blk * kBlock, end = std::min(n, begin + kBlock);
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = begin; i < end; ++i)
      sum += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    partial[static_cast<size_t>(blk)] = sum;
  }
  double total = 0;
  for (double v : partial) total += v;
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
