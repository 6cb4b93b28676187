// OpenBLAS sgemm throughput for the GEMM shapes of a training step (d_model 512, seq 256,
// batch 8 => 2048 tokens), one JSON line per shape:
//   {"name":"sgemm","config":{"M":..,"N":..,"K":..,"threads":..},"value":GFLOP/s,"unit":"GFLOP/s"}
// Usage: bench_sgemm [min_seconds_per_shape=0.5]. Threads: OMP_NUM_THREADS (OpenMP OpenBLAS).
#include <cstdio>
#include <cstdlib>

#include "kernels/blas/blas_kernel.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/sgemm_peak.h"

int main(int argc, char** argv) {
  grove::blas::SelectBlasKernel(argv);  // before MPI and any GEMM (may re-execute)
  const double min_seconds = argc > 1 ? std::atof(argv[1]) : 0.5;
  struct Shape {
    int M, N, K;
    const char* what;
  };
  const Shape shapes[] = {
      {2048, 1536, 512, "qkv projection"}, {2048, 512, 512, "attention output"},
      {2048, 2048, 512, "mlp up+gate"},    {2048, 512, 1024, "mlp down"},
      {512, 512, 2048, "weight gradient"}, {256, 256, 64, "attention scores (per head)"},
      {1024, 1024, 1024, "square 1024"},
  };
  const int threads = grove::cpu::num_threads();
  for (const Shape& s : shapes) {
    const double gflops = grove::cpu::sgemm_peak_gflops(s.M, s.N, s.K, min_seconds);
    std::printf(
        "{\"name\":\"sgemm\",\"config\":{\"M\":%d,\"N\":%d,\"K\":%d,\"threads\":%d,\"shape\":\"%"
        "s\"},"
        "\"value\":%.2f,\"unit\":\"GFLOP/s\"}\n",
        s.M, s.N, s.K, threads, s.what, gflops);
    std::fflush(stdout);
  }
  return 0;
}
