// The GEMM library choice for train.precision=bf16 on the CPU: OpenBLAS sgemm (fp32, what
// CpuBackend runs) against the oneDNN bf16 matmul (kernels/cpu/bf16.h, bf16 operands, fp32
// accumulation) at the training step's shapes (d_model 512, ffn 1536, vocab 8192, 2048 tokens),
// forward (A·Bᵀ) and the two backward forms (A·B for the input gradient, Aᵀ·B for the weight
// gradient). One JSON line per shape and library:
//   {"name":"gemm","config":{"lib":..,"kernel":..,"M":..,"N":..,"K":..,"op":..,"threads":..},
//    "value":GFLOP/s (best of the repetitions),"unit":"GFLOP/s"}
// OpenBLAS 0.3.21 as Debian builds it has no cblas_sbgemm (BUILD_BFLOAT16 off), so its bf16 GEMM
// is not a candidate. Usage: bench_bf16_gemm [min_seconds_per_case=0.3]. DNNL_VERBOSE=1 prints
// the oneDNN implementation (e.g. brg:avx512_core_amx).
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/blas/blas_kernel.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/ops.h"

namespace {

template <class Fn>
double best_seconds(Fn fn, double min_seconds) {
  fn();  // warm-up (oneDNN builds its primitive here)
  double best = 1e30, total = 0;
  int reps = 0;
  while (total < min_seconds || reps < 3) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
    total += s;
    ++reps;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  grove::blas::SelectBlasKernel(argv);  // before any GEMM (may re-execute)
  const double min_seconds = argc > 1 ? std::atof(argv[1]) : 0.3;
  namespace cpu = grove::cpu;
  struct Case {
    int M, N, K;
    bool ta, tb;
    const char* op;
  };
  // Linear(C -> OC) over N = 2048 rows: forward [N,C]·[OC,C]ᵀ, input gradient [N,OC]·[OC,C],
  // weight gradient [N,OC]ᵀ·[N,C].
  std::vector<Case> cases;
  const int N = 2048;
  for (auto [C, OC] : {std::pair{512, 1536}, {512, 2048}, {1536, 512}, {512, 8192}}) {
    cases.push_back({N, OC, C, false, true, "fwd A.B^T"});
    cases.push_back({N, C, OC, false, false, "dgrad A.B"});
    cases.push_back({OC, C, N, true, false, "wgrad A^T.B"});
  }
  const std::string blas = grove::blas::CurrentBlasKernel().Describe();
  const std::string dnnl = cpu::bf16_gemm_describe();
  const int threads = omp_get_max_threads();
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const Case& c : cases) {
    std::vector<float> A(int64_t{c.M} * c.K), B(int64_t{c.K} * c.N), C(int64_t{c.M} * c.N);
    for (float& x : A) x = u(rng);
    for (float& x : B) x = u(rng);
    std::vector<cpu::bf16_bits> a(A.size()), b(B.size());
    cpu::convert_to_bf16(a.data(), A.data(), int64_t(A.size()));
    cpu::convert_to_bf16(b.data(), B.data(), int64_t(B.size()));
    const int lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
    const double flop = 2.0 * c.M * c.N * c.K;
    const double s32 = best_seconds(
        [&] {
          cpu::gemm<float>(c.ta, c.tb, c.M, c.N, c.K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f,
                           C.data(), c.N);
        },
        min_seconds);
    std::printf(
        "{\"name\":\"gemm\",\"config\":{\"lib\":\"openblas sgemm\",\"kernel\":\"%s\",\"M\":%d,"
        "\"N\":%d,\"K\":%d,\"op\":\"%s\",\"threads\":%d},\"value\":%.1f,\"unit\":\"GFLOP/s\"}\n",
        blas.c_str(), c.M, c.N, c.K, c.op, threads, flop / s32 * 1e-9);
    if (cpu::bf16_gemm_supported()) {
      const double s16 = best_seconds(
          [&] {
            cpu::gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, a.data(), lda, b.data(), ldb, 0.0f, C.data(),
                           c.N);
          },
          min_seconds);
      std::printf(
          "{\"name\":\"gemm\",\"config\":{\"lib\":\"onednn bf16\",\"kernel\":\"%s\",\"M\":%d,"
          "\"N\":%d,\"K\":%d,\"op\":\"%s\",\"threads\":%d},\"value\":%.1f,\"unit\":\"GFLOP/s\"}\n",
          dnnl.c_str(), c.M, c.N, c.K, c.op, threads, flop / s16 * 1e-9);
    }
    std::fflush(stdout);
  }
  return 0;
}
