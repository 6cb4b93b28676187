// Internal helpers of the CPU kernels: an exp that GCC vectorises at plain -O3 (std::exp is a
// libm call that blocks vectorisation without -ffast-math) and the BLAS-free row utilities.
//
// exp_approx<float>: Cephes expf (range reduction by ln 2, degree-6 polynomial), max relative
// error below 1 ulp on [-87.3, 88] (measured 0.7 ulp); inputs below -87.3 (and -inf) return
// about 1.2e-38 instead of a denormal or 0, above 88 return exp(88); NaN propagates. The clamps
// vectorise only with -fno-trapping-math (set on this library; it changes no result, it only
// lets GCC if-convert them). exp_approx<double> is std::exp (the double kernels
// only serve the finite-difference tests, where accuracy matters and speed does not).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace grove::cpu::detail {

// GROVE_CPU_CLONES: the element-wise and attention kernels are compiled three times (AVX-512 as in
// x86-64-v4, AVX2 + FMA as in x86-64-v3, and the baseline SSE2) and the loader picks the widest the
// CPU runs (GCC function multiversioning, resolved once through an ifunc). The build stays
// portable (no -march=native), and on an AVX-512 CPU these loops run 16 floats an instruction
// instead of 4 (perf put SwiGLU's forward alone at 9% of an fp32 training step in SSE code, 2%
// with the clones). Results may differ in the last bit between the
// clones (FMA contraction); every clone is checked against the same references.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define GROVE_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GROVE_CPU_CLONES
#endif

// Below this many elements of work a loop runs on the calling thread: forking and joining an
// OpenMP team costs microseconds, more than the loop itself (and much more on a loaded machine).
constexpr int64_t kMinParallelWork = int64_t{1} << 14;

template <typename T>
inline T exp_approx(T x) {
  return std::exp(x);
}

template <>
inline float exp_approx<float>(float x) {
  x = x < -87.33654f ? -87.33654f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round x*log2(e) to the nearest integer n by adding 1.5*2^23: the sum's low mantissa bits
  // then hold n, so 2^n is built from bits alone (no float-to-int conversion, no roundps).
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  float r = x - n * 0.693359375f;  // ln 2 split in a high and a low part: exact first product
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (std::bit_cast<int32_t>(shifted) - 0x4B400000 + 127) * (1 << 23);
  return p * std::bit_cast<float>(e);
}

// Largest of row[0, n); -inf for n == 0.
template <typename T>
inline T row_max(const T* row, int n) {
  T m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int j = 0; j < n; ++j) m = row[j] > m ? row[j] : m;
  return m;
}

}  // namespace grove::cpu::detail
