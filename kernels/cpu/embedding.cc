// Embedding forward/backward: out[n, :] = table[tokens[n], :].
//
// Legend: N tokens, C channels (table [V, C]). The backward scatters rows with +=; a token that
// appears twice sums both gradients. Threads own blocks of columns, so repeated tokens never
// race and the summation order is fixed (deterministic).
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

template <typename T>
GROVE_CPU_CLONES void embedding_forward(T* out, const int32_t* tokens, const T* table, int N,
                                        int C) {
#pragma omp parallel for schedule(static) if (int64_t{N} * C >= detail::kMinParallelWork)
  for (int n = 0; n < N; ++n) {
    const T* row = table + static_cast<int64_t>(tokens[n]) * C;
    std::copy(row, row + C, out + static_cast<int64_t>(n) * C);
  }
}

template <typename T>
GROVE_CPU_CLONES void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int N,
                                         int C) {
#pragma omp parallel if (int64_t{N} * C >= detail::kMinParallelWork)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int chunk = (C + nt - 1) / nt;
    const int c0 = std::min(C, t * chunk), c1 = std::min(C, c0 + chunk);
    for (int n = 0; n < N; ++n) {
      T* drow = dtable + static_cast<int64_t>(tokens[n]) * C;
      const T* g = dout + static_cast<int64_t>(n) * C;
#pragma omp simd
      for (int c = c0; c < c1; ++c) drow[c] += g[c];
    }
  }
}

#define GROVE_INSTANTIATE(T)                                                  \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int, int); \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int, int);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

}  // namespace grove::cpu
