// bf16 conversion, the oneDNN bf16 GEMM, the bf16 Linear and the weight copies
// (kernels/cpu/bf16.h).
#include "kernels/cpu/bf16.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <shared_mutex>
#include <tuple>

#include "core/status.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

namespace {

bool has_avx512_bf16() {
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
}

__attribute__((target("avx512f,avx512bf16,avx512vl"))) void to_bf16_avx512(bf16_bits* dst,
                                                                           const float* src,
                                                                           int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    // vcvtne2ps2bf16: 32 floats -> 32 bf16, the second operand in the low half.
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    _mm512_storeu_si512(dst + i, (__m512i)v);
  }
  for (; i < n; ++i) dst[i] = to_bf16(src[i]);
}

void to_bf16_scalar(bf16_bits* dst, const float* src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
}

// Calls fn(begin, end) over [0, n) in per-thread chunks of whole cache lines when n is large.
template <class Fn>
void parallel_chunks(int64_t n, Fn fn) {
  if (n < detail::kMinParallelWork * 4) {
    fn(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = ((n + nt - 1) / nt + 31) / 32 * 32;
    const int64_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    if (b < e) fn(b, e);
  }
}

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// Matmul primitives by shape: building one (the implementation dispatch) costs far more than a
// small GEMM; the model repeats a handful of shapes every step.
using GemmKey = std::tuple<bool, bool, int, int, int, int, int, int, float>;
std::mutex g_prim_mu;
std::map<GemmKey, std::shared_ptr<dnnl::matmul>>& primitives() {
  static std::map<GemmKey, std::shared_ptr<dnnl::matmul>> m;
  return m;
}

std::shared_ptr<dnnl::matmul> matmul_for(const GemmKey& key) {
  std::lock_guard<std::mutex> lock(g_prim_mu);
  auto it = primitives().find(key);
  if (it != primitives().end()) return it->second;
  const auto [ta, tb, M, N, K, lda, ldb, ldc, beta] = key;
  using dims = dnnl::memory::dims;
  using dt = dnnl::memory::data_type;
  // Row-major op(A)[M,K]: strides {lda, 1}, or {1, lda} when A is stored [K, M].
  const dnnl::memory::desc a(dims{M, K}, dt::bf16, ta ? dims{1, lda} : dims{lda, 1});
  const dnnl::memory::desc b(dims{K, N}, dt::bf16, tb ? dims{1, ldb} : dims{ldb, 1});
  const dnnl::memory::desc c(dims{M, N}, dt::f32, dims{ldc, 1});
  dnnl::primitive_attr attr;
  if (beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine());
  auto prim = std::make_shared<dnnl::matmul>(pd);
  primitives().emplace(key, prim);
  return prim;
}

// The calling thread's bf16 scratch of at least n elements (grows, never shrinks).
bf16_bits* scratch(int slot, int64_t n) {
  thread_local std::vector<bf16_bits> buf[2];
  if (int64_t(buf[slot].size()) < n) buf[slot].resize(n);
  return buf[slot].data();
}

// Registered weight copies: [master, master + n) -> copy.
struct Registered {
  const float* master;
  int64_t n;
  const bf16_bits* copy;
};
std::shared_mutex g_copies_mu;
std::vector<Registered>& copies() {
  static std::vector<Registered> v;
  return v;
}

}  // namespace

bf16_bits to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_bits((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_bits(u >> 16);
}

float from_bf16(bf16_bits x) {
  const uint32_t u = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

bool bf16_gemm_supported() {
  static const bool yes = [] {
    const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
    return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
  }();
  return yes;
}

std::string bf16_gemm_describe() {
  const dnnl_version_t* v = dnnl::version();
  std::string isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx512_core_amx:
      isa = "avx512_core_amx";
      break;
    case dnnl::cpu_isa::avx512_core_bf16:
      isa = "avx512_core_bf16";
      break;
    case dnnl::cpu_isa::avx512_core_vnni:
      isa = "avx512_core_vnni (no bf16)";
      break;
    case dnnl::cpu_isa::avx512_core:
      isa = "avx512_core (no bf16)";
      break;
    case dnnl::cpu_isa::avx2:
      isa = "avx2 (no bf16)";
      break;
    default:
      isa = "isa " + std::to_string(int(dnnl::get_effective_cpu_isa())) + " (no bf16)";
  }
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
         std::to_string(v->patch) + " " + isa;
}

void convert_to_bf16(bf16_bits* dst, const float* src, int64_t n) {
  const bool vec = has_avx512_bf16();
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    if (vec)
      to_bf16_avx512(dst + b, src + b, e - b);
    else
      to_bf16_scalar(dst + b, src + b, e - b);
  });
}

void convert_from_bf16(float* dst, const bf16_bits* src, int64_t n) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) dst[i] = from_bf16(src[i]);
  });
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const bf16_bits* A, int lda,
               const bf16_bits* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  GROVE_CHECK(bf16_gemm_supported())
      << "bf16 GEMM on a CPU without AVX512_BF16 / AMX-BF16 (" << bf16_gemm_describe() << ")";
  if (K <= 0) {  // op(A) op(B) = 0
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < N; ++j) C[int64_t(m) * ldc + j] *= beta;
    return;
  }
  const std::shared_ptr<dnnl::matmul> prim =
      matmul_for(GemmKey{trans_a, trans_b, M, N, K, lda, ldb, ldc, beta});
  const auto pd = prim->get_primitive_desc();
  dnnl::matmul::primitive_desc mpd(const_cast<dnnl_primitive_desc_t>(pd));
  dnnl::memory a(mpd.src_desc(), engine(), const_cast<bf16_bits*>(A));
  dnnl::memory b(mpd.weights_desc(), engine(), const_cast<bf16_bits*>(B));
  dnnl::memory c(mpd.dst_desc(), engine(), C);
  dnnl::stream s(engine());
  prim->execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  s.wait();
}

void linear_forward_bf16(float* out, const float* inp, const bf16_bits* weight, const float* bias,
                         int N, int C, int OC) {
  bf16_bits* x = scratch(0, int64_t{N} * C);
  convert_to_bf16(x, inp, int64_t{N} * C);
  float beta = 0;
  if (bias != nullptr) {
    bias_fill(out, bias, N, OC);
    beta = 1;
  }
  gemm_bf16(false, true, N, OC, C, x, C, weight, C, beta, out, OC);
}

void linear_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const bf16_bits* weight, int N, int C, int OC) {
  bf16_bits* dy = scratch(0, int64_t{N} * OC);
  convert_to_bf16(dy, dout, int64_t{N} * OC);
  if (dinp != nullptr) gemm_bf16(false, false, N, C, OC, dy, OC, weight, C, 1.0f, dinp, C);
  bf16_bits* x = scratch(1, int64_t{N} * C);
  convert_to_bf16(x, inp, int64_t{N} * C);
  gemm_bf16(true, false, OC, C, N, dy, OC, x, C, 1.0f, dweight, C);
  if (dbias != nullptr) bias_backward(dbias, dout, N, OC);
}

Bf16WeightCopy::Bf16WeightCopy(const float* master, int64_t n) : master_(master), copy_(n) {
  refresh();
  std::unique_lock<std::shared_mutex> lock(g_copies_mu);
  copies().push_back({master_, n, copy_.data()});
}

Bf16WeightCopy::~Bf16WeightCopy() {
  std::unique_lock<std::shared_mutex> lock(g_copies_mu);
  auto& v = copies();
  v.erase(std::remove_if(v.begin(), v.end(),
                         [&](const Registered& r) { return r.copy == copy_.data(); }),
          v.end());
}

void Bf16WeightCopy::refresh() {
  convert_to_bf16(copy_.data(), master_, int64_t(copy_.size()));
}

const bf16_bits* bf16_copy_of(const float* w, int64_t n) {
  std::shared_lock<std::shared_mutex> lock(g_copies_mu);
  for (const Registered& r : copies())
    if (w >= r.master && w + n <= r.master + r.n) return r.copy + (w - r.master);
  return nullptr;
}

}  // namespace grove::cpu
