// OpenBLAS sgemm throughput on this machine, measured in the calling process, so that a
// benchmark can report its own GFLOP/s next to the peak measured in the same run
// (docs/testing.md#benchmarks).
#pragma once

#include <vector>

namespace grove::cpu {

// C[M,N] = A[M,K] * B[K,N] (row-major, beta = 0) on buffers filled once, with the OpenBLAS
// threads the process currently has (OMP_NUM_THREADS for the OpenMP build). The constructor runs
// one untimed warm-up call; each time_once() times one more call. A benchmark calls time_once()
// between its own timed repetitions, so the peak sees the same machine load as they do.
class SgemmProbe {
 public:
  SgemmProbe(int M, int N, int K);
  // GFLOP/s (2*M*N*K) of one call.
  double time_once();

 private:
  void call();
  int M_, N_, K_;
  std::vector<float> A_, B_, C_;
};

// Repeats SgemmProbe::time_once until at least min_seconds have elapsed (at least 3 calls);
// GFLOP/s over all of them.
double sgemm_peak_gflops(int M, int N, int K, double min_seconds);

}  // namespace grove::cpu
