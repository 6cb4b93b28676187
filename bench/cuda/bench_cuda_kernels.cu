// bench_cuda_kernels: one JSON line per kernel measurement, with its peer measured in the same run:
//   GEMM-like kernels (gemm, linear, attention): TFLOP/s vs cuBLAS GEMM of the same precision
//   (cublasGemmEx / cublasSgemm on a large square problem) -> "ratio" = value / peer.
//   Memory-bound kernels: GB/s of the bytes they must move vs a device-to-device cudaMemcpy.
//   Grouped expert GEMMs (MoE): TFLOP/s vs one dense linear of the same total FLOPs.
// No absolute number is a pass/fail criterion. Without a device: one "skipped" line, exit 0.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

__global__ void fill_kernel(float* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    x[i] = scale * (static_cast<float>(h & 0xffffff) / 8388608.f - 1.f);
  }
}
__global__ void fill_int_kernel(int32_t* x, int64_t n, uint32_t seed, int32_t mod) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2246822519u ^ seed;
    h ^= h >> 13;
    h *= 0x85ebca6bu;
    h ^= h >> 16;
    x[i] = static_cast<int32_t>(h % static_cast<uint32_t>(mod));
  }
}

// Device array of T with random values in [-scale, scale].
template <typename T>
struct Buf {
  T* p = nullptr;
  int64_t n = 0;
  explicit Buf(int64_t count, float scale = 1.f, uint32_t seed = 1) : n(count) {
    GROVE_CUDA_CHECK(cudaMalloc(&p, sizeof(T) * n));
    if constexpr (std::is_same_v<T, int32_t>) {
      fill_int_kernel<<<1024, 256>>>(p, n, seed, static_cast<int32_t>(scale));
    } else if constexpr (std::is_same_v<T, double>) {  // statistics outputs: zeros
      GROVE_CUDA_CHECK(cudaMemset(p, 0, sizeof(T) * n));
    } else if constexpr (std::is_same_v<T, float>) {
      fill_kernel<<<1024, 256>>>(p, n, seed, scale);
    } else {
      float* tmp = nullptr;
      GROVE_CUDA_CHECK(cudaMalloc(&tmp, sizeof(float) * n));
      fill_kernel<<<1024, 256>>>(tmp, n, seed, scale);
      convert(p, tmp, n);
      GROVE_CUDA_CHECK(cudaDeviceSynchronize());
      GROVE_CUDA_CHECK(cudaFree(tmp));
    }
    GROVE_CUDA_CHECK_LAUNCH();
  }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// Median-free simple timing: warm up, then the mean over enough repetitions for >= ~50 ms.
double time_ms(const std::function<void()>& fn) {
  cudaEvent_t a, b;
  GROVE_CUDA_CHECK(cudaEventCreate(&a));
  GROVE_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 2; ++i) fn();
  GROVE_CUDA_CHECK(cudaEventRecord(a));
  fn();
  GROVE_CUDA_CHECK(cudaEventRecord(b));
  GROVE_CUDA_CHECK(cudaEventSynchronize(b));
  float one = 0;
  GROVE_CUDA_CHECK(cudaEventElapsedTime(&one, a, b));
  int reps = std::max(3, std::min(200, static_cast<int>(50.f / std::max(one, 1e-3f))));
  GROVE_CUDA_CHECK(cudaEventRecord(a));
  for (int i = 0; i < reps; ++i) fn();
  GROVE_CUDA_CHECK(cudaEventRecord(b));
  GROVE_CUDA_CHECK(cudaEventSynchronize(b));
  float total = 0;
  GROVE_CUDA_CHECK(cudaEventElapsedTime(&total, a, b));
  GROVE_CUDA_CHECK(cudaEventDestroy(a));
  GROVE_CUDA_CHECK(cudaEventDestroy(b));
  return total / reps;
}

std::string g_device;

void emit(const std::string& name, const std::string& config, double value, const char* unit,
          const std::string& peer, double peer_value, double ms) {
  std::printf(
      "{\"name\":\"%s\",\"config\":{%s},\"value\":%.4g,\"unit\":\"%s\",\"peer\":\"%s\","
      "\"peer_value\":%.4g,\"ratio\":%.4g,\"time_ms\":%.4g,\"device\":\"%s\"}\n",
      name.c_str(), config.c_str(), value, unit, peer.c_str(), peer_value, value / peer_value, ms,
      g_device.c_str());
  std::fflush(stdout);
}

std::string cfg(std::initializer_list<std::pair<const char*, int64_t>> kv) {
  std::string s;
  for (auto& [k, v] : kv) {
    if (!s.empty()) s.push_back(',');
    s.append("\"").append(k).append("\":").append(std::to_string(v));
  }
  return s;
}

struct Peers {
  double bf16_tflops = 0, f32_tflops = 0, copy_gbs = 0;
};

Peers measure_peers() {
  Peers p;
  cublasHandle_t h;
  GROVE_CUBLAS_CHECK(cublasCreate(&h));
  {
    const int n = 8192;
    Buf<bf16> A(int64_t{n} * n), B(int64_t{n} * n), C(int64_t{n} * n);
    float alpha = 1, beta = 0;
    double ms = time_ms([&] {
      GROVE_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, A.p,
                                      CUDA_R_16BF, n, B.p, CUDA_R_16BF, n, &beta, C.p, CUDA_R_16BF,
                                      n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    });
    p.bf16_tflops = 2.0 * n * n * n / ms / 1e9;
    std::printf(
        "{\"name\":\"peer_cublas_gemm_bf16\",\"config\":{%s},\"value\":%.4g,"
        "\"unit\":\"TFLOP/s\",\"device\":\"%s\"}\n",
        cfg({{"M", n}, {"N", n}, {"K", n}}).c_str(), p.bf16_tflops, g_device.c_str());
  }
  {
    const int n = 4096;
    Buf<float> A(int64_t{n} * n), B(int64_t{n} * n), C(int64_t{n} * n);
    float alpha = 1, beta = 0;
    double ms = time_ms([&] {
      GROVE_CUBLAS_CHECK(
          cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, A.p, n, B.p, n, &beta, C.p, n));
    });
    p.f32_tflops = 2.0 * n * n * n / ms / 1e9;
    std::printf(
        "{\"name\":\"peer_cublas_sgemm\",\"config\":{%s},\"value\":%.4g,"
        "\"unit\":\"TFLOP/s\",\"device\":\"%s\"}\n",
        cfg({{"M", n}, {"N", n}, {"K", n}}).c_str(), p.f32_tflops, g_device.c_str());
  }
  {
    const int64_t bytes = int64_t{1} << 30;
    Buf<float> a(bytes / 4), b(bytes / 4);
    double ms = time_ms(
        [&] { GROVE_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice)); });
    p.copy_gbs = 2.0 * bytes / ms / 1e6;  // read + write
    std::printf(
        "{\"name\":\"peer_memcpy_d2d\",\"config\":{%s},\"value\":%.4g,\"unit\":\"GB/s\","
        "\"device\":\"%s\"}\n",
        cfg({{"bytes", bytes}}).c_str(), p.copy_gbs, g_device.c_str());
  }
  GROVE_CUBLAS_CHECK(cublasDestroy(h));
  std::fflush(stdout);
  return p;
}

template <typename T>
const char* tname() {
  return std::is_same_v<T, float> ? "f32" : "bf16";
}

template <typename T>
void bench_gemm_like(const Peers& peers) {
  const double peak = std::is_same_v<T, float> ? peers.f32_tflops : peers.bf16_tflops;
  const std::string peer = std::is_same_v<T, float> ? "cublas_sgemm" : "cublas_gemm_bf16";
  const std::string t = tname<T>();
  {  // GEMM through our wrapper (cuBLASLt for bf16)
    const int n = std::is_same_v<T, float> ? 4096 : 8192;
    Buf<T> A(int64_t{n} * n), B(int64_t{n} * n), C(int64_t{n} * n);
    double ms = time_ms([&] { gemm<T>(false, true, n, n, n, 1.f, A.p, n, B.p, n, 0.f, C.p, n); });
    emit("gemm_" + t, cfg({{"M", n}, {"N", n}, {"K", n}}), 2.0 * n * n * n / ms / 1e9, "TFLOP/s",
         peer, peak, ms);
  }
  {  // linear layer of a 4096-wide model over 8192 tokens
    const int N = 8192, C = 4096, OC = 4096;
    Buf<T> inp(int64_t{N} * C), w(int64_t{OC} * C), bias(OC), out(int64_t{N} * OC);
    Buf<T> dinp(int64_t{N} * C), dout(int64_t{N} * OC);
    Buf<float> dw(int64_t{OC} * C), db(OC);
    double flops = 2.0 * N * C * OC;
    double ms = time_ms([&] { linear_forward<T>(out.p, inp.p, w.p, bias.p, N, C, OC); });
    emit("linear_forward_" + t, cfg({{"N", N}, {"C", C}, {"OC", OC}}), flops / ms / 1e9, "TFLOP/s",
         peer, peak, ms);
    ms = time_ms([&] { linear_backward<T>(dinp.p, dw.p, db.p, dout.p, inp.p, w.p, N, C, OC); });
    emit("linear_backward_" + t, cfg({{"N", N}, {"C", C}, {"OC", OC}}), 2 * flops / ms / 1e9,
         "TFLOP/s", peer, peak, ms);
  }
  for (bool causal : {true, false}) {  // attention, Llama-like head
    const int S = 2048, B = 4, NH = 16, NKV = 16, HD = 128;
    AttentionShape s{S, S, B, NH, NKV, HD, causal, 0, 0};
    int64_t nq = int64_t{S} * B * NH * HD;
    Buf<T> q(nq), k(nq), v(nq), out(nq), dout(nq), dq(nq), dk(nq), dv(nq);
    Buf<float> lse(int64_t{B} * NH * S);
    double flops = 4.0 * B * NH * double(S) * S * HD * (causal ? 0.5 : 1.0);
    std::string c =
        cfg({{"S", S}, {"B", B}, {"NH", NH}, {"NKV", NKV}, {"HD", HD}, {"causal", causal}});
    double ms =
        time_ms([&] { cuda::attention_forward<T>(out.p, lse.p, nullptr, q.p, k.p, v.p, s); });
    emit("attention_forward_" + t, c, flops / ms / 1e9, "TFLOP/s", peer, peak, ms);
    ms = time_ms([&] {
      cuda::attention_backward<T>(dq.p, dk.p, dv.p, dout.p, q.p, k.p, v.p, out.p, lse.p, nullptr,
                                  s);
    });
    // Backward counted as 2.5x the forward's FLOPs (FlashAttention-2 convention; no recompute).
    emit("attention_backward_" + t, c, 2.5 * flops / ms / 1e9, "TFLOP/s", peer, peak, ms);
  }
}

template <typename T>
void bench_memory_bound(const Peers& peers) {
  const std::string t = tname<T>(), peer = "memcpy_d2d";
  const double sz = sizeof(T);
  auto report = [&](const std::string& name, const std::string& c, double bytes, double ms) {
    emit(name + "_" + t, c, bytes / ms / 1e6, "GB/s", peer, peers.copy_gbs, ms);
  };
  const int N = 16384, C = 4096;
  const int64_t nc = int64_t{N} * C;
  {
    Buf<T> x(nc), out(nc), dy(nc), dx(nc);
    Buf<float> w(C), rstd(N), dw(C);
    double ms = time_ms([&] { rmsnorm_forward<T>(out.p, rstd.p, x.p, w.p, N, C, 1e-5f); });
    report("rmsnorm_forward", cfg({{"N", N}, {"C", C}}), 2 * nc * sz, ms);
    ms = time_ms([&] { rmsnorm_backward<T>(dx.p, dw.p, dy.p, x.p, w.p, rstd.p, N, C); });
    report("rmsnorm_backward", cfg({{"N", N}, {"C", C}}), 4 * nc * sz, ms);
  }
  {
    const int S = 4096, B = 4, NH = 32, HD = 128;
    int64_t n = int64_t{S} * B * NH * HD;
    Buf<T> x(n);
    Buf<float> ct(int64_t{S} * HD / 2), st(int64_t{S} * HD / 2);
    rope_table(ct.p, st.p, S, HD, 10000.f);
    double ms = time_ms([&] { rope_forward<T>(x.p, ct.p, st.p, S, B, NH, HD, 0); });
    report("rope_forward", cfg({{"S", S}, {"B", B}, {"NH", NH}, {"HD", HD}}), 2 * n * sz, ms);
  }
  {
    const int64_t n = int64_t{16384} * 11008;
    Buf<T> g(n, 3.f), u(n), out(n), dg(n), du(n);
    double ms = time_ms([&] { swiglu_forward<T>(out.p, g.p, u.p, n); });
    report("swiglu_forward", cfg({{"n", n}}), 3 * n * sz, ms);
    ms = time_ms([&] { swiglu_backward<T>(dg.p, du.p, out.p, g.p, u.p, n); });
    report("swiglu_backward", cfg({{"n", n}}), 7 * n * sz, ms);
    ms = time_ms([&] { add_inplace<T>(dg.p, du.p, n); });
    report("add_inplace", cfg({{"n", n}}), 3 * n * sz, ms);
    ms = time_ms([&] { sum_squares<T>(u.p, n); });
    report("sum_squares", cfg({{"n", n}}), n * sz, ms);
  }
  {
    const int V = 32000, NT = 16384;
    Buf<T> table(int64_t{V} * C), out(int64_t{NT} * C);
    Buf<float> dtable(int64_t{V} * C);
    Buf<int32_t> tok(NT, static_cast<float>(V));
    double ms = time_ms([&] { embedding_forward<T>(out.p, tok.p, table.p, NT, C); });
    report("embedding_forward", cfg({{"N", NT}, {"C", C}}), 2.0 * NT * C * sz, ms);
    ms = time_ms([&] { embedding_backward<T>(dtable.p, out.p, tok.p, NT, C); });
    report("embedding_backward", cfg({{"N", NT}, {"C", C}}), NT * C * (sz + 8.0), ms);
  }
  {
    const int NT = 8192, V = 32000;
    Buf<T> logits(int64_t{NT} * V, 4.f), dlogits(int64_t{NT} * V);
    Buf<int32_t> tgt(NT, static_cast<float>(V));
    Buf<float> losses(NT), lse(NT), dloss(NT);
    double bytes = double(NT) * V * sz;
    double ms = time_ms([&] { cross_entropy_forward<T>(losses.p, lse.p, logits.p, tgt.p, NT, V); });
    report("cross_entropy_forward", cfg({{"N", NT}, {"V", V}}), bytes, ms);
    ms = time_ms(
        [&] { cross_entropy_backward<T>(dlogits.p, logits.p, lse.p, tgt.p, dloss.p, NT, V); });
    report("cross_entropy_backward", cfg({{"N", NT}, {"V", V}}), 2 * bytes, ms);
  }
  if constexpr (std::is_same_v<T, float>) {
    const int64_t n = int64_t{1} << 28;
    Buf<float> p(n), g(n), m(n), v(n, 1.f);
    double ms =
        time_ms([&] { adamw_update(p.p, g.p, m.p, v.p, n, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 10); });
    report("adamw_update", cfg({{"n", n}}), 7.0 * n * 4, ms);
  }
}

// Mixture of experts, one process: the router (fp32 whatever T is, so run once) and the permute /
// unpermute stages as GB/s vs the device copy; the grouped expert GEMMs (one linear call per
// expert) as TFLOP/s vs one dense linear of the same total FLOPs, measured in the same run.
template <typename T>
void bench_moe(const Peers& peers) {
  const std::string t = tname<T>();
  const double sz = sizeof(T);
  const int N = 16384, E = 8, k = 2, C = 4096, OC = 2048;
  const int A = N * k;
  Buf<float> logits(int64_t{N} * E, 3.f, 7), probs(int64_t{N} * E), lse(N), weight(A);
  Buf<float> dweight(A), dlogits(int64_t{N} * E);
  Buf<int32_t> expert(A), counts(E), offsets(E + 1), row_of(A);
  Buf<double> prob_sum(E), lse_sq(1);
  auto route = [&] {
    moe_router_forward(probs.p, lse.p, expert.p, weight.p, counts.p, prob_sum.p, lse_sq.p, logits.p,
                       N, E, k);
  };
  const std::string rc = cfg({{"N", N}, {"E", E}, {"k", k}});
  if constexpr (std::is_same_v<T, float>) {
    double ms = time_ms(route);
    emit("moe_router_forward", rc, 2.0 * N * E * 4 / ms / 1e6, "GB/s", "memcpy_d2d", peers.copy_gbs,
         ms);
    ms = time_ms([&] {
      moe_router_backward(dlogits.p, dweight.p, probs.p, lse.p, expert.p, weight.p, counts.p, N,
                          1e-2f, 1e-3f, 1.f, N, E, k);
    });
    emit("moe_router_backward", rc, 2.0 * N * E * 4 / ms / 1e6, "GB/s", "memcpy_d2d",
         peers.copy_gbs, ms);
  }
  route();

  const std::string pc = cfg({{"N", N}, {"E", E}, {"k", k}, {"C", C}});
  auto report = [&](const std::string& name, double bytes, double ms) {
    emit(name + "_" + t, pc, bytes / ms / 1e6, "GB/s", "memcpy_d2d", peers.copy_gbs, ms);
  };
  const double row_bytes = double(C) * sz;
  Buf<T> x(int64_t{N} * C), xp(int64_t{A} * C), y(int64_t{N} * C), dy(int64_t{N} * C);
  Buf<T> dxp(int64_t{A} * C);
  // Layout + gather: each assignment's row read once and written once.
  double ms = time_ms(
      [&] { moe_permute<T>(xp.p, offsets.p, row_of.p, x.p, expert.p, counts.p, N, k, E, C); });
  report("moe_permute", 2.0 * A * row_bytes, ms);
  ms = time_ms([&] { moe_permute_backward<T>(y.p, dxp.p, row_of.p, N, k, C); });
  report("moe_permute_backward", (double(A) + 2.0 * N) * row_bytes, ms);
  ms = time_ms([&] { moe_unpermute<T>(y.p, xp.p, weight.p, row_of.p, N, k, C); });
  report("moe_unpermute", (double(A) + N) * row_bytes, ms);
  ms = time_ms([&] {
    moe_unpermute_backward<T>(dxp.p, dweight.p, dy.p, xp.p, weight.p, row_of.p, N, k, C);
  });
  report("moe_unpermute_backward", (2.0 * A + N) * row_bytes, ms);

  // Grouped expert GEMMs on the permuted rows, with the routing's (host-copied) offsets.
  std::vector<int32_t> off(E + 1);
  GROVE_CUDA_CHECK(
      cudaMemcpy(off.data(), offsets.p, sizeof(int32_t) * (E + 1), cudaMemcpyDeviceToHost));
  Buf<T> w(int64_t{E} * OC * C), out(int64_t{A} * OC), dout(int64_t{A} * OC);
  Buf<float> dw(int64_t{E} * OC * C);
  const double flops = 2.0 * A * C * OC;
  const std::string gc = cfg({{"rows", A}, {"E", E}, {"C", C}, {"OC", OC}});
  double dense_ms = time_ms([&] { linear_forward<T>(out.p, xp.p, w.p, nullptr, A, C, OC); });
  ms = time_ms([&] { grouped_linear_forward<T>(out.p, xp.p, w.p, off.data(), E, C, OC); });
  emit("grouped_linear_forward_" + t, gc, flops / ms / 1e9, "TFLOP/s", "dense_linear_forward_" + t,
       flops / dense_ms / 1e9, ms);
  dense_ms =
      time_ms([&] { linear_backward<T>(dxp.p, dw.p, nullptr, dout.p, xp.p, w.p, A, C, OC); });
  ms = time_ms(
      [&] { grouped_linear_backward<T>(dxp.p, dw.p, dout.p, xp.p, w.p, off.data(), E, C, OC); });
  emit("grouped_linear_backward_" + t, gc, 2 * flops / ms / 1e9, "TFLOP/s",
       "dense_linear_backward_" + t, 2 * flops / dense_ms / 1e9, ms);
}

// Attention, bf16, causal: the tensor-core kernels (attention_tc.cu) as TFLOP/s against the cuBLAS
// bf16 GEMM peak, and against the scalar kernels (attention_*_reference) on the same shape, in the
// same run ("_vs_scalar" lines: peer = the scalar kernel's TFLOP/s, ratio = speedup). FLOPs: see
// the "flops" config field (FlashAttention-2's convention; the backward's separate dq kernel
// recomputes S and dP, work that is not counted).
void bench_attention_tc(const Peers& peers) {
  const int B = 4, NH = 16, NKV = 16, HD = 128;  // B * NH = 64 heads
  const bool causal = true;
  for (int S : {1024, 2048, 4096}) {
    AttentionShape s{S, S, B, NH, NKV, HD, causal, 0, 0};
    const int64_t nq = int64_t{S} * B * NH * HD, nk = int64_t{S} * B * NKV * HD;
    Buf<bf16> q(nq), k(nk), v(nk), out(nq), dout(nq), dq(nq), dk(nk), dv(nk);
    Buf<float> lse(int64_t{B} * NH * S);
    const double flops = 4.0 * B * NH * double(S) * S * HD * (causal ? 0.5 : 1.0);
    const std::string c =
        cfg({{"S", S}, {"B", B}, {"NH", NH}, {"NKV", NKV}, {"HD", HD}, {"causal", causal}}) +
        ",\"flops\":\"fwd 4*S^2*HD per head (/2 causal); bwd 2.5x fwd\"";
    double fwd = time_ms(
        [&] { attention_tc_forward(out.p, lse.p, q.p, k.p, v.p, s); });  // out, lse: consistent
    double fwd_ref = time_ms(
        [&] { attention_forward_reference<bf16>(out.p, lse.p, nullptr, q.p, k.p, v.p, s); });
    double bwd = time_ms(
        [&] { attention_tc_backward(dq.p, dk.p, dv.p, dout.p, q.p, k.p, v.p, out.p, lse.p, s); });
    double bwd_ref = time_ms([&] {
      attention_backward_reference<bf16>(dq.p, dk.p, dv.p, dout.p, q.p, k.p, v.p, out.p, lse.p,
                                         nullptr, s);
    });
    const double tf = flops / fwd / 1e9, tf_ref = flops / fwd_ref / 1e9;
    const double tb = 2.5 * flops / bwd / 1e9, tb_ref = 2.5 * flops / bwd_ref / 1e9;
    emit("attention_tc_forward_bf16", c, tf, "TFLOP/s", "cublas_gemm_bf16", peers.bf16_tflops, fwd);
    emit("attention_tc_forward_bf16_vs_scalar", c, tf, "TFLOP/s", "attention_scalar_forward_bf16",
         tf_ref, fwd);
    emit("attention_tc_backward_bf16", c, tb, "TFLOP/s", "cublas_gemm_bf16", peers.bf16_tflops,
         bwd);
    emit("attention_tc_backward_bf16_vs_scalar", c, tb, "TFLOP/s", "attention_scalar_backward_bf16",
         tb_ref, bwd);
  }
}

}  // namespace
}  // namespace grove::cuda

int main() {
  using namespace grove::cuda;
  if (!grove::cuda_device_available()) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    std::printf("{\"name\":\"bench_cuda_kernels\",\"skipped\":\"no CUDA device\"}\n");
    const char* req = std::getenv("GROVE_REQUIRE_GPU");
    if (req != nullptr && std::string(req) == "1") {  // a GPU machine that cannot use its GPU
      std::fprintf(stderr, "bench_cuda_kernels: GROVE_REQUIRE_GPU=1 but no usable device (%s)\n",
                   err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
      return 1;
    }
    return 0;
  }
  try {
    cudaDeviceProp prop{};
    GROVE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    g_device = prop.name;
    Peers peers = measure_peers();
    bench_gemm_like<bf16>(peers);
    bench_attention_tc(peers);
    bench_gemm_like<float>(peers);
    bench_memory_bound<bf16>(peers);
    bench_memory_bound<float>(peers);
    bench_moe<bf16>(peers);
    bench_moe<float>(peers);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_kernels: %s\n", e.what());
    return 1;
  }
  return 0;
}
