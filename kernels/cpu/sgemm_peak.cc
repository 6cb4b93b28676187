#include "kernels/cpu/sgemm_peak.h"

#include <chrono>
#include <cstdint>
#include <random>

#include "kernels/cpu/ops.h"

namespace grove::cpu {

SgemmProbe::SgemmProbe(int M, int N, int K)
    : M_(M),
      N_(N),
      K_(K),
      A_(static_cast<size_t>(M) * K),
      B_(static_cast<size_t>(K) * N),
      C_(static_cast<size_t>(M) * N) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& x : A_) x = dist(rng);
  for (float& x : B_) x = dist(rng);
  call();
}

void SgemmProbe::call() {
  gemm<float>(false, false, M_, N_, K_, 1.0f, A_.data(), K_, B_.data(), N_, 0.0f, C_.data(), N_);
}

double SgemmProbe::time_once() {
  const auto t0 = std::chrono::steady_clock::now();
  call();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * M_ * N_ * static_cast<double>(K_) / s * 1e-9;
}

double sgemm_peak_gflops(int M, int N, int K, double min_seconds) {
  SgemmProbe probe(M, N, K);
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  int64_t calls = 0;
  double elapsed = 0;
  while (calls < 3 || elapsed < min_seconds) {
    probe.time_once();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  return 2.0 * M * N * static_cast<double>(K) * static_cast<double>(calls) / elapsed * 1e-9;
}

}  // namespace grove::cpu
