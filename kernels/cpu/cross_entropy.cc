// Softmax cross-entropy forward/backward.
//
// Legend: N rows (tokens), V vocabulary. Stable: lse = max + log(sum exp(logit - max)).
// A target < 0 is ignored (loss 0, zero gradient row). The backward writes (not accumulates)
// and may run in place (dlogits == logits): each element is read once, then overwritten.
#include <cmath>
#include <cstdint>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

template <typename T>
GROVE_CPU_CLONES void cross_entropy_forward(T* losses, T* lse, const T* logits,
                                            const int32_t* targets, int N, int V) {
#pragma omp parallel for schedule(static) if (int64_t{N} * V >= detail::kMinParallelWork)
  for (int n = 0; n < N; ++n) {
    const T* row = logits + static_cast<int64_t>(n) * V;
    const T m = detail::row_max(row, V);
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) sum += detail::exp_approx<T>(row[j] - m);
    const T l = m + std::log(sum);
    lse[n] = l;
    losses[n] = targets[n] < 0 ? T(0) : l - row[targets[n]];
  }
}

template <typename T>
GROVE_CPU_CLONES void cross_entropy_backward(T* dlogits, const T* logits, const T* lse,
                                             const int32_t* targets, const T* dloss, int N, int V) {
#pragma omp parallel for schedule(static) if (int64_t{N} * V >= detail::kMinParallelWork)
  for (int n = 0; n < N; ++n) {
    const T* row = logits + static_cast<int64_t>(n) * V;
    T* drow = dlogits + static_cast<int64_t>(n) * V;
    const int32_t t = targets[n];
    if (t < 0) {
      for (int j = 0; j < V; ++j) drow[j] = 0;
      continue;
    }
    const T l = lse[n], g = dloss[n];
    const T target_logit = row[t];  // read before the row is overwritten in place
#pragma omp simd
    for (int j = 0; j < V; ++j) drow[j] = detail::exp_approx<T>(row[j] - l) * g;
    drow[t] = (detail::exp_approx<T>(target_logit - l) - T(1)) * g;
  }
}

#define GROVE_INSTANTIATE(T)                                                                     \
  template void cross_entropy_forward<T>(T*, T*, const T*, const int32_t*, int, int);            \
  template void cross_entropy_backward<T>(T*, const T*, const T*, const int32_t*, const T*, int, \
                                          int);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

}  // namespace grove::cpu
