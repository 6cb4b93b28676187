// CPU attention forward and backward time (ms) for the training-benchmark shape (seq 256,
// batch 8, 8 heads of 64, causal, probs recomputed), one JSON line per direction.
// Usage: bench_attention [iterations=10]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/blas/blas_kernel.h"
#include "kernels/cpu/ops.h"

int main(int argc, char** argv) {
  grove::blas::SelectBlasKernel(argv);  // before MPI and any GEMM (may re-execute)
  using grove::cpu::AttentionShape;
  const int iters = argc > 1 ? std::atoi(argv[1]) : 10;
  const AttentionShape s{256, 256, 8, 8, 8, 64, true};
  const size_t nq = static_cast<size_t>(s.SQ) * s.B * s.NH * s.HD;
  const size_t nlse = static_cast<size_t>(s.B) * s.NH * s.SQ;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> q(nq), k(nq), v(nq), dout(nq), out(nq), lse(nlse), dq(nq), dk(nq), dv(nq);
  for (auto* t : {&q, &k, &v, &dout})
    for (float& x : *t) x = dist(rng);
  const int threads = grove::cpu::num_threads();
  using Clock = std::chrono::steady_clock;
  auto run = [&](const char* mode, auto&& fn) {
    fn();  // warm-up
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) fn();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / iters;
    std::printf(
        "{\"name\":\"attention_%s\",\"config\":{\"SQ\":%d,\"SK\":%d,\"B\":%d,\"NH\":%d,"
        "\"HD\":%d,\"causal\":%s,\"threads\":%d},\"value\":%.3f,\"unit\":\"ms\"}\n",
        mode, s.SQ, s.SK, s.B, s.NH, s.HD, s.causal ? "true" : "false", threads, ms);
  };
  run("forward", [&] {
    grove::cpu::attention_forward<float>(out.data(), lse.data(), nullptr, q.data(), k.data(),
                                         v.data(), s);
  });
  run("backward", [&] {
    grove::cpu::attention_backward<float>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(),
                                          k.data(), v.data(), out.data(), lse.data(), nullptr, s);
  });
  return 0;
}
