// GEMM (OpenBLAS) and Linear forward/backward.
//
// Legend: N rows (tokens), C input channels, OC output channels. Weight [OC, C] as nn.Linear.
#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

namespace {

inline CBLAS_TRANSPOSE to_cblas(bool trans) {
  return trans ? CblasTrans : CblasNoTrans;
}

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  cblas_sgemm(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), M, N, K, alpha, A, lda, B, ldb,
              beta, C, ldc);
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int M, int N, int K, double alpha, const double* A,
                  int lda, const double* B, int ldb, double beta, double* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  cblas_dgemm(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), M, N, K, alpha, A, lda, B, ldb,
              beta, C, ldc);
}

template <typename T>
void bias_fill(T* out, const T* bias, int N, int OC) {
#pragma omp parallel for schedule(static) if (int64_t{N} * OC >= detail::kMinParallelWork)
  for (int n = 0; n < N; ++n) std::copy(bias, bias + OC, out + static_cast<int64_t>(n) * OC);
}

template <typename T>
void bias_backward(T* dbias, const T* dout, int N, int OC) {
  // Column sums: each thread owns a block of columns and walks all rows (no reduction race,
  // deterministic order, contiguous inner loop).
#pragma omp parallel if (int64_t{N} * OC >= detail::kMinParallelWork)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int chunk = (OC + nt - 1) / nt;
    const int o0 = std::min(OC, t * chunk), o1 = std::min(OC, o0 + chunk);
    for (int n = 0; n < N; ++n) {
      const T* row = dout + static_cast<int64_t>(n) * OC;
#pragma omp simd
      for (int o = o0; o < o1; ++o) dbias[o] += row[o];
    }
  }
}

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC) {
  T beta = 0;
  if (bias != nullptr) {
    // Start from the bias and let the GEMM accumulate (beta = 1): one pass over out.
    bias_fill(out, bias, N, OC);
    beta = 1;
  }
  gemm<T>(false, true, N, OC, C, T(1), inp, C, weight, C, beta, out, OC);
}

template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int N, int C, int OC) {
  if (dinp != nullptr) gemm<T>(false, false, N, C, OC, T(1), dout, OC, weight, C, T(1), dinp, C);
  gemm<T>(true, false, OC, C, N, T(1), dout, OC, inp, C, T(1), dweight, C);
  if (dbias != nullptr) bias_backward(dbias, dout, N, OC);
}

#define GROVE_INSTANTIATE(T)                                                        \
  template void bias_fill<T>(T*, const T*, int, int);                               \
  template void bias_backward<T>(T*, const T*, int, int);                           \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int, int, int); \
  template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

}  // namespace grove::cpu
