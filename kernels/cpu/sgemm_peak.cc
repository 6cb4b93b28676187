#include "kernels/cpu/sgemm_peak.h"

#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cpu/ops.h"

namespace grove::cpu {

double sgemm_peak_gflops(int M, int N, int K, double min_seconds) {
  std::vector<float> A(static_cast<size_t>(M) * K), B(static_cast<size_t>(K) * N),
      C(static_cast<size_t>(M) * N);
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& x : A) x = dist(rng);
  for (float& x : B) x = dist(rng);
  gemm<float>(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  int64_t calls = 0;
  double elapsed = 0;
  while (calls < 3 || elapsed < min_seconds) {
    gemm<float>(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  return 2.0 * M * N * static_cast<double>(K) * static_cast<double>(calls) / elapsed * 1e-9;
}

}  // namespace grove::cpu
