// A program that selects its BLAS kernel as Grove's programs do (kernels/blas/blas_kernel.h),
// then runs sgemm and prints one JSON line: the kernel report, what the library says now, and the
// sgemm GFLOP/s. "start pid=N" is printed by every image of the process, so a re-exec shows as
// two such lines with the same pid. It also reports the CPU time the process spends while its
// OpenMP workers sit idle for 200 ms after a parallel region: about zero when they wait
// passively, up to 200 ms per worker when they spin. Used by blas_kernel_test.
#include <cblas.h>
#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "kernels/blas/blas_kernel.h"

namespace {

double cpu_ms() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 +
         (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-3;
}

// CPU time of the process while the main thread sleeps 200 ms after a parallel region.
double idle_cpu_ms() {
  std::vector<int> ran(static_cast<size_t>(omp_get_max_threads()));
#pragma omp parallel
  ran[static_cast<size_t>(omp_get_thread_num())] = 1;
  const double t0 = cpu_ms();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  return cpu_ms() - t0;
}

}  // namespace

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
  const nlohmann::json j = {
      {"core", k.core},
      {"library_core", openblas_get_corename()},
      {"source", k.source},
      {"chosen_by_library", k.chosen_by_library},
      {"warning", k.warning},
      {"describe", k.Describe()},
      {"cpu", k.cpu},
      {"marker_left",
       std::getenv("GROVE_BLAS_REEXEC") != nullptr || std::getenv("GROVE_OMP_WAIT_SET") != nullptr},
      {"omp_wait", k.omp_wait},
      {"omp_wait_policy_env",
       std::getenv("OMP_WAIT_POLICY") != nullptr ? std::getenv("OMP_WAIT_POLICY") : ""},
      {"omp_threads", omp_get_max_threads()},
      {"idle_cpu_ms", idle_cpu_ms()},
      {"sgemm_gflops", 2.0 * n * n * double(n) * calls / s * 1e-9},
      {"result_ok", c[0] == 0.125f * n}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
