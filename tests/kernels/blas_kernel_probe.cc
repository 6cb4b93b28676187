// A program that selects its BLAS kernel as Grove's programs do (kernels/blas/blas_kernel.h),
// then runs sgemm and prints one JSON line: the kernel report, what the library says now, and the
// sgemm GFLOP/s. "start pid=N" is printed by every image of the process, so a re-exec shows as
// two such lines with the same pid. Used by blas_kernel_test.
#include <cblas.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <vector>

#include "kernels/blas/blas_kernel.h"

int main(int, char** argv) {
  std::printf("start pid=%ld\n", static_cast<long>(getpid()));
  std::fflush(stdout);  // execv would drop what is buffered
  const grove::blas::BlasKernel& k = grove::blas::SelectBlasKernel(argv);
  const int n = 512;
  std::vector<float> a(size_t(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
              0.0f, c.data(), n);
  const auto t0 = std::chrono::steady_clock::now();
  int calls = 0;
  double s = 0;
  while (calls < 3 || s < 0.2) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
    ++calls;
    s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const nlohmann::json j = {{"core", k.core},
                            {"library_core", openblas_get_corename()},
                            {"source", k.source},
                            {"chosen_by_library", k.chosen_by_library},
                            {"warning", k.warning},
                            {"describe", k.Describe()},
                            {"cpu", k.cpu},
                            {"marker_left", std::getenv("GROVE_BLAS_REEXEC") != nullptr},
                            {"sgemm_gflops", 2.0 * n * n * double(n) * calls / s * 1e-9},
                            {"result_ok", c[0] == 0.125f * n}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
