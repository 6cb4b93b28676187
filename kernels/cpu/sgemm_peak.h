// OpenBLAS sgemm throughput on this machine, measured in the calling process, so that a
// benchmark can report its own GFLOP/s next to the peak measured in the same run
// (docs/testing.md#benchmarks).
#pragma once

namespace grove::cpu {

// GFLOP/s (2*M*N*K per call) of C[M,N] = A[M,K] * B[K,N] (row-major, beta = 0), with the
// OpenBLAS threads the process currently has (OMP_NUM_THREADS for the OpenMP build). Runs one
// warm-up call, then repeats until at least min_seconds have elapsed (at least 3 calls).
double sgemm_peak_gflops(int M, int N, int K, double min_seconds);

}  // namespace grove::cpu
