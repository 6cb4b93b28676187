// CUDA kernels against the scalar references (kernels/reference/ops_reference.h, evaluated at
// T = double), for T = float and T = bf16. Inputs are rounded to T before the reference sees them,
// so each tolerance only has to cover what the kernel itself adds: fp32 rounding / summation order,
// and for bf16 outputs the final rounding to bf16. Without a device every test skips with one line.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "core/tensor.h"
#include "kernels/cuda/ops.h"
#include "kernels/reference/ops_reference.h"
#include "tests/cuda/test_util.h"

namespace grove::cuda {
namespace {

using testing::close;
using testing::DeviceBuffer;
using testing::random_vec;
using testing::stored;
using testing::Vec;

// Index of q / out element (i, b, h, 0) of an AttentionShape.
size_t qi(const AttentionShape& s, int i, int b, int h) {
  return ((size_t(i) * s.B + b) * s.NH + h) * s.HD;
}

// Tolerances (docs/testing.md#tolerances: max|a - b| / max|b| per tensor).
template <typename T>
struct Tol;
template <>
struct Tol<float> {
  // fp32 dot products of <= ~100 terms in cuBLAS's order vs the double reference: the error is
  // ~sqrt(K) * 2^-24 * (cancellation factor) ~ 1e-6; 1e-5 leaves a 10x margin.
  static constexpr double kGemm = 1e-5;
  // fp32 outputs of a reduction (row sums of squares over C <= 16384, logsumexp over V = 1000,
  // atomic sums of a few hundred terms): a few 1e-7 relative.
  static constexpr double kReduce = 1e-5;
  // A short chain (<= ~10 operations, expf) per element: <= ~10 fp32 ulps = 6e-7.
  static constexpr double kElementwise = 2e-6;
  // Attention forward: fp32 scores, exp2f on log2-domain scores (argument rounding ~|s| 2^-24)
  // and running rescaling; same order as kReduce.
  static constexpr double kAttnFwd = 1e-5;
  // Attention backward: dS = P (dP - D) cancels (dP ~ D), which amplifies the fp32 error of P and
  // dP by |dP| / |dP - D| (a few), then sums over up to ~80 keys / queries.
  static constexpr double kAttnBwd = 3e-5;
  // fp32 master-weight tensors written by the kernel (dweight from fp32 GEMM).
  static constexpr double kMasterGemm = 1e-5;
};
template <>
struct Tol<bf16> {
  // A bf16 output rounded once: half an ulp of the largest value is 2^-9 (1.95e-3) of max|b|;
  // 2^-8 = 3.9e-3 covers it plus the fp32 arithmetic before the rounding.
  static constexpr double kGemm = 3.9e-3;
  static constexpr double kReduce = 3.9e-3;
  static constexpr double kElementwise = 3.9e-3;
  static constexpr double kAttnFwd = 3.9e-3;
  static constexpr double kAttnBwd = 3.9e-3;
  // fp32 output of a bf16 tensor-core GEMM (weight gradients): products of bf16 are exact in fp32,
  // the sum is fp32 (~1e-6); Hopper tensor cores do not round every partial sum exactly as IEEE
  // fp32 does, so 1e-4 allows that and still catches any wrong term (>= 1e-2 off).
  static constexpr double kMasterGemm = 1e-4;
};
// fp32 outputs computed from T inputs with fp32 arithmetic (rstd, lse, losses, dtable).
constexpr double kF32Reduce = 1e-5;

template <typename T>
class CudaKernels : public testing::GpuTest {};
TYPED_TEST_SUITE(CudaKernels, testing::ComputeTypes, testing::ComputeTypeNames);

// ---- GEMM ----------------------------------------------------------------------------------
TYPED_TEST(CudaKernels, Gemm) {
  using T = TypeParam;
  const int M = 37, N = 53, K = 71;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      int a_rows = ta ? K : M, a_cols = ta ? M : K, lda = a_cols + 3;
      int b_rows = tb ? N : K, b_cols = tb ? K : N, ldb = b_cols + 5;
      int ldc = N + 2;
      Vec A = stored<T>(random_vec(size_t(a_rows) * lda, 1 + ta));
      Vec B = stored<T>(random_vec(size_t(b_rows) * ldb, 3 + tb));
      Vec C0 = stored<T>(random_vec(size_t(M) * ldc, 5));
      Vec want = C0;
      ref::gemm<double>(ta, tb, M, N, K, 0.7, A.data(), lda, B.data(), ldb, 0.3, want.data(), ldc);
      DeviceBuffer<T> dA(A), dB(B), dC(C0);
      gemm<T>(ta, tb, M, N, K, 0.7f, dA.get(), lda, dB.get(), ldb, 0.3f, dC.get(), ldc);
      std::string name = "gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb);
      EXPECT_TRUE(close(name, dC.download(), stored<T>(want), Tol<T>::kGemm));
      if constexpr (std::is_same_v<T, bf16>) {  // fp32 C from bf16 inputs
        Vec C32 = random_vec(size_t(M) * ldc, 6), want32 = stored<float>(C32);
        ref::gemm<double>(ta, tb, M, N, K, 0.7, A.data(), lda, B.data(), ldb, 0.3, want32.data(),
                          ldc);
        DeviceBuffer<float> dC32(C32);
        gemm(ta, tb, M, N, K, 0.7f, dA.get(), lda, dB.get(), ldb, 0.3f, dC32.get(), ldc);
        EXPECT_TRUE(close(name + " fp32 C", dC32.download(), want32, Tol<T>::kMasterGemm));
      }
    }
}

// ---- Linear --------------------------------------------------------------------------------
TYPED_TEST(CudaKernels, Linear) {
  using T = TypeParam;
  const int N = 67, C = 96, OC = 80;
  Vec inp = stored<T>(random_vec(size_t(N) * C, 11)), w = stored<T>(random_vec(size_t(OC) * C, 12));
  Vec bias = stored<T>(random_vec(OC, 13)), dout = stored<T>(random_vec(size_t(N) * OC, 14));
  DeviceBuffer<T> d_inp(inp), d_w(w), d_bias(bias), d_dout(dout), d_out(size_t(N) * OC);
  for (bool with_bias : {true, false}) {
    Vec want(size_t(N) * OC);
    ref::linear_forward<double>(want.data(), inp.data(), w.data(),
                                with_bias ? bias.data() : nullptr, N, C, OC);
    linear_forward<T>(d_out.get(), d_inp.get(), d_w.get(), with_bias ? d_bias.get() : nullptr, N, C,
                      OC);
    EXPECT_TRUE(close(with_bias ? "linear out (bias)" : "linear out", d_out.download(),
                      stored<T>(want), Tol<T>::kGemm));
  }
  // Gradients start non-zero: the backward must accumulate.
  Vec dinp = stored<T>(random_vec(size_t(N) * C, 15)),
      dw = stored<float>(random_vec(size_t(OC) * C, 16));
  Vec db = stored<float>(random_vec(OC, 17));
  DeviceBuffer<T> d_dinp(dinp);
  DeviceBuffer<float> d_dw(dw), d_db(db);
  ref::linear_backward<double>(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                               N, C, OC);
  linear_backward<T>(d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(), d_w.get(), N,
                     C, OC);
  EXPECT_TRUE(close("linear dinp", d_dinp.download(), stored<T>(dinp), Tol<T>::kGemm));
  EXPECT_TRUE(close("linear dweight", d_dw.download(), dw, Tol<T>::kMasterGemm));
  EXPECT_TRUE(close("linear dbias", d_db.download(), db, kF32Reduce));
  const Vec db_device = d_db.download();  // fp32; db holds the double reference
  // Optional gradients left out: only dweight changes.
  ref::linear_backward<double>(nullptr, dw.data(), nullptr, dout.data(), inp.data(), w.data(), N, C,
                               OC);
  linear_backward<T>(nullptr, d_dw.get(), nullptr, d_dout.get(), d_inp.get(), d_w.get(), N, C, OC);
  EXPECT_TRUE(close("linear dweight (2nd)", d_dw.download(), dw, Tol<T>::kMasterGemm));
  EXPECT_TRUE(close("linear dbias untouched", d_db.download(), db_device, 0.0));
}

// The bias path over shapes that take cuBLASLt's bias epilogue (bf16) and its fallbacks: one
// row, an odd OC (no Lt algorithm for odd leading dimensions: bias broadcast, then GEMM), and a
// bias pointer aligned to 2 bytes only.
TYPED_TEST(CudaKernels, LinearBiasShapes) {
  using T = TypeParam;
  struct Shape {
    int N, C, OC, bias_offset;
  };
  for (Shape s : {Shape{1, 64, 48, 0}, Shape{33, 40, 33, 0}, Shape{128, 256, 200, 1}}) {
    std::string tag = " N=" + std::to_string(s.N) + " C=" + std::to_string(s.C) +
                      " OC=" + std::to_string(s.OC) + " bias+" + std::to_string(s.bias_offset);
    Vec inp = stored<T>(random_vec(size_t(s.N) * s.C, 18)),
        w = stored<T>(random_vec(size_t(s.OC) * s.C, 19));
    Vec bias_buf = stored<T>(random_vec(s.OC + 1, 20));
    Vec bias(bias_buf.begin() + s.bias_offset, bias_buf.begin() + s.bias_offset + s.OC);
    Vec want(size_t(s.N) * s.OC);
    ref::linear_forward<double>(want.data(), inp.data(), w.data(), bias.data(), s.N, s.C, s.OC);
    DeviceBuffer<T> d_inp(inp), d_w(w), d_bias(bias_buf), d_out(Vec(size_t(s.N) * s.OC, 7.0));
    linear_forward<T>(d_out.get(), d_inp.get(), d_w.get(), d_bias.get() + s.bias_offset, s.N, s.C,
                      s.OC);
    EXPECT_TRUE(close("linear out (bias)" + tag, d_out.download(), stored<T>(want), Tol<T>::kGemm));
  }
}

// ---- RMSNorm -------------------------------------------------------------------------------
TYPED_TEST(CudaKernels, RmsNorm) {
  using T = TypeParam;
  // C = 16384 needs 64 KiB of shared memory for the dweight partials (opt-in path).
  for (auto [N, C] : {std::pair{70, 200}, std::pair{9, 16384}}) {
    std::string tag = " N=" + std::to_string(N) + " C=" + std::to_string(C);
    Vec x = stored<T>(random_vec(size_t(N) * C, 21)),
        w = stored<float>(random_vec(C, 22, 0.5, 1.5));
    Vec out(size_t(N) * C), rstd(N);
    ref::rmsnorm_forward<double>(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    DeviceBuffer<T> d_x(x), d_out(size_t(N) * C);
    DeviceBuffer<float> d_w(w), d_rstd(N);
    rmsnorm_forward<T>(d_out.get(), d_rstd.get(), d_x.get(), d_w.get(), N, C, 1e-5f);
    EXPECT_TRUE(close("rmsnorm out" + tag, d_out.download(), stored<T>(out), Tol<T>::kReduce));
    EXPECT_TRUE(close("rmsnorm rstd" + tag, d_rstd.download(), rstd, kF32Reduce));

    Vec dy = stored<T>(random_vec(size_t(N) * C, 23)),
        dx = stored<T>(random_vec(size_t(N) * C, 24));
    Vec dw = stored<float>(random_vec(C, 25));
    Vec rstd32 = stored<float>(rstd);
    DeviceBuffer<T> d_dy(dy), d_dx(dx);
    DeviceBuffer<float> d_dw(dw), d_rstd32(rstd32);
    ref::rmsnorm_backward<double>(dx.data(), dw.data(), dy.data(), x.data(), w.data(),
                                  rstd32.data(), N, C);
    rmsnorm_backward<T>(d_dx.get(), d_dw.get(), d_dy.get(), d_x.get(), d_w.get(), d_rstd32.get(), N,
                        C);
    EXPECT_TRUE(close("rmsnorm dinp" + tag, d_dx.download(), stored<T>(dx), Tol<T>::kReduce));
    EXPECT_TRUE(close("rmsnorm dweight" + tag, d_dw.download(), dw, kF32Reduce));
  }
}

// ---- RoPE ----------------------------------------------------------------------------------
TYPED_TEST(CudaKernels, Rope) {
  using T = TypeParam;
  const int S = 13, B = 3, NHx = 4, HD = 64, pos0 = 5, max_pos = 32;
  const int half = HD / 2;
  std::vector<float> cos_t(size_t(max_pos) * half), sin_t(size_t(max_pos) * half);
  ref::rope_table(cos_t.data(), sin_t.data(), max_pos, HD, 10000.f);
  DeviceBuffer<float> d_cos(cos_t.size()), d_sin(sin_t.size());
  rope_table(d_cos.get(), d_sin.get(), max_pos, HD, 10000.f);
  // Both computed in double and rounded once: within one fp32 ulp of values <= 1.
  Vec cos32(cos_t.begin(), cos_t.end()), sin32(sin_t.begin(), sin_t.end());
  EXPECT_TRUE(close("rope cos table", d_cos.download(), cos32, 2e-7));
  EXPECT_TRUE(close("rope sin table", d_sin.download(), sin32, 2e-7));
  DeviceBuffer<float> d_cos32(cos32), d_sin32(sin32);
  for (double sign : {1.0, -1.0}) {
    Vec x = stored<T>(random_vec(size_t(S) * B * NHx * HD, 31));
    DeviceBuffer<T> d_x(x);
    if (sign > 0)
      ref::rope_forward<double>(x.data(), cos_t.data(), sin_t.data(), S, B, NHx, HD, pos0);
    else
      ref::rope_backward<double>(x.data(), cos_t.data(), sin_t.data(), S, B, NHx, HD, pos0);
    if (sign > 0)
      rope_forward<T>(d_x.get(), d_cos32.get(), d_sin32.get(), S, B, NHx, HD, pos0);
    else
      rope_backward<T>(d_x.get(), d_cos32.get(), d_sin32.get(), S, B, NHx, HD, pos0);
    EXPECT_TRUE(close(sign > 0 ? "rope forward" : "rope backward", d_x.download(), stored<T>(x),
                      Tol<T>::kElementwise));
  }
}

// ---- Attention -----------------------------------------------------------------------------
std::string describe(const AttentionShape& s) {
  return "SQ=" + std::to_string(s.SQ) + " SK=" + std::to_string(s.SK) +
         " B=" + std::to_string(s.B) + " NH=" + std::to_string(s.NH) +
         " NKV=" + std::to_string(s.NKV) + " HD=" + std::to_string(s.HD) +
         (s.causal ? " causal" : "") + " q_pos0=" + std::to_string(s.q_pos0) +
         " k_pos0=" + std::to_string(s.k_pos0);
}

std::vector<AttentionShape> attention_shapes() {
  return {
      {45, 70, 2, 4, 2, 64, false, 0, 0},   // GQA, tiles not multiples of 32
      {77, 77, 1, 3, 1, 32, true, 0, 0},    // causal, multi-query
      {33, 73, 2, 2, 2, 48, true, 40, 0},   // a query shard over keys before and at it
      {50, 40, 1, 2, 1, 16, true, 0, 20},   // rows 0..19 see no key: lse -inf, out 0
      {64, 64, 2, 2, 2, 128, true, 0, 0},   // Llama-size head
      {40, 40, 1, 2, 1, 256, false, 0, 0},  // largest head dim (206 KiB shared memory)
      {20, 0, 1, 2, 2, 32, false, 0, 0},    // empty key shard
  };
}

TYPED_TEST(CudaKernels, Attention) {
  using T = TypeParam;
  for (const AttentionShape& s : attention_shapes()) {
    std::string tag = " [" + describe(s) + "]";
    size_t nq = size_t(s.SQ) * s.B * s.NH * s.HD, nk = size_t(s.SK) * s.B * s.NKV * s.HD;
    size_t nl = size_t(s.B) * s.NH * s.SQ;
    Vec q = stored<T>(random_vec(nq, 41)), k = stored<T>(random_vec(nk, 42));
    Vec v = stored<T>(random_vec(nk, 43));
    Vec out(nq), lse(nl), probs(nl * s.SK);
    ref::attention_forward<double>(out.data(), lse.data(), probs.data(), q.data(), k.data(),
                                   v.data(), s);
    DeviceBuffer<T> d_q(q), d_k(k), d_v(v), d_out(nq), d_probs(nl * s.SK);
    DeviceBuffer<float> d_lse(nl);
    // The scalar kernels, whose error these tolerances describe. For bf16 with HD 64 / 128 the
    // dispatching entry points take the tensor-core kernels instead, which round P and dS to bf16
    // and are tested with their own tolerances in test_cuda_attention.cc.
    attention_forward_reference<T>(d_out.get(), d_lse.get(), s.SK > 0 ? d_probs.get() : nullptr,
                                   d_q.get(), d_k.get(), d_v.get(), s);
    EXPECT_TRUE(close("attention out" + tag, d_out.download(), stored<T>(out), Tol<T>::kAttnFwd));
    EXPECT_TRUE(close("attention lse" + tag, d_lse.download(), lse, kF32Reduce));
    if (s.SK > 0) {
      EXPECT_TRUE(
          close("attention probs" + tag, d_probs.download(), stored<T>(probs), Tol<T>::kAttnFwd));
    }

    // Backward from the reference out / lse (as stored), gradients pre-filled.
    Vec out_t = stored<T>(out), lse32 = stored<float>(lse), dout = stored<T>(random_vec(nq, 44));
    // Small pre-fill: checks accumulation without dominating max|want| (gradients are ~0.1).
    Vec dq = stored<T>(random_vec(nq, 45, -0.01, 0.01)),
        dk = stored<T>(random_vec(nk, 46, -0.01, 0.01));
    Vec dv = stored<T>(random_vec(nk, 47, -0.01, 0.01));
    DeviceBuffer<T> d_outt(out_t), d_dout(dout), d_dq(dq), d_dk(dk), d_dv(dv);
    DeviceBuffer<float> d_lse32(lse32);
    ref::attention_backward<double>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(),
                                    k.data(), v.data(), out_t.data(), lse32.data(), nullptr, s);
    attention_backward_reference<T>(d_dq.get(), d_dk.get(), d_dv.get(), d_dout.get(), d_q.get(),
                                    d_k.get(), d_v.get(), d_outt.get(), d_lse32.get(), nullptr, s);
    EXPECT_TRUE(close("attention dq" + tag, d_dq.download(), stored<T>(dq), Tol<T>::kAttnBwd));
    EXPECT_TRUE(close("attention dk" + tag, d_dk.download(), stored<T>(dk), Tol<T>::kAttnBwd));
    EXPECT_TRUE(close("attention dv" + tag, d_dv.download(), stored<T>(dv), Tol<T>::kAttnBwd));
  }
}

// Keys split over two shards (as tree attention does): partials merged by attention_merge equal
// the full attention, and the backward of each shard with the global lse / out gives the full
// gradients.
TYPED_TEST(CudaKernels, AttentionShardsCombine) {
  using T = TypeParam;
  if constexpr (std::is_same_v<T, bf16>) GTEST_SKIP() << "combine checked in fp32 only";
  AttentionShape full{48, 96, 2, 4, 2, 32, true, 48, 0};  // the last 48 queries of 96
  const int split = 61;
  AttentionShape s0 = full, s1 = full;
  s0.SK = split;
  s1.SK = full.SK - split;
  s1.k_pos0 = split;
  size_t nq = size_t(full.SQ) * full.B * full.NH * full.HD,
         row = size_t(full.B) * full.NKV * full.HD;
  size_t nl = size_t(full.B) * full.NH * full.SQ;
  Vec q = random_vec(nq, 51), k = random_vec(full.SK * row, 52), v = random_vec(full.SK * row, 53);
  Vec out(nq), lse(nl);
  ref::attention_forward<double>(out.data(), lse.data(), nullptr, q.data(), k.data(), v.data(),
                                 full);
  auto part = [&](const Vec& x, int j0, int n) {
    return Vec(x.begin() + j0 * row, x.begin() + (j0 + n) * row);
  };
  DeviceBuffer<float> d_q(q), d_k0(part(k, 0, split)), d_v0(part(v, 0, split));
  DeviceBuffer<float> d_k1(part(k, split, s1.SK)), d_v1(part(v, split, s1.SK));
  DeviceBuffer<float> d_o0(nq), d_o1(nq), d_l0(nl), d_l1(nl);
  cuda::attention_forward<float>(d_o0.get(), d_l0.get(), nullptr, d_q.get(), d_k0.get(), d_v0.get(),
                                 s0);
  cuda::attention_forward<float>(d_o1.get(), d_l1.get(), nullptr, d_q.get(), d_k1.get(), d_v1.get(),
                                 s1);
  // The merge kernel, in place into shard 0's partial.
  attention_merge<float>(d_o0.get(), d_l0.get(), d_o1.get(), d_l1.get(), full.SQ, full.B, full.NH,
                         full.HD, 0, full.SQ);
  const Vec comb = d_o0.download(), comb_lse = d_l0.download();
  EXPECT_TRUE(close("combined out", comb, out, Tol<float>::kAttnFwd));
  EXPECT_TRUE(close("combined lse", comb_lse, lse, kF32Reduce));

  Vec dout = random_vec(nq, 54), dq(nq, 0.0), dk(full.SK * row, 0.0), dv(full.SK * row, 0.0);
  Vec out32 = stored<float>(out), lse32 = stored<float>(lse);
  ref::attention_backward<double>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                                  v.data(), out32.data(), lse32.data(), nullptr, full);
  DeviceBuffer<float> d_dout(dout), d_out(out32), d_lse(lse32), d_dq(Vec(nq, 0.0));
  DeviceBuffer<float> d_dk0(Vec(split * row, 0.0)), d_dv0(Vec(split * row, 0.0));
  DeviceBuffer<float> d_dk1(Vec(s1.SK * row, 0.0)), d_dv1(Vec(s1.SK * row, 0.0));
  cuda::attention_backward<float>(d_dq.get(), d_dk0.get(), d_dv0.get(), d_dout.get(), d_q.get(),
                                  d_k0.get(), d_v0.get(), d_out.get(), d_lse.get(), nullptr, s0);
  cuda::attention_backward<float>(d_dq.get(), d_dk1.get(), d_dv1.get(), d_dout.get(), d_q.get(),
                                  d_k1.get(), d_v1.get(), d_out.get(), d_lse.get(), nullptr, s1);
  Vec got_dk = d_dk0.download(), got_dv = d_dv0.download();
  Vec dk1 = d_dk1.download(), dv1 = d_dv1.download();
  got_dk.insert(got_dk.end(), dk1.begin(), dk1.end());
  got_dv.insert(got_dv.end(), dv1.begin(), dv1.end());
  EXPECT_TRUE(close("sharded dq", d_dq.download(), dq, Tol<float>::kAttnBwd));
  EXPECT_TRUE(close("sharded dk", got_dk, dk, Tol<float>::kAttnBwd));
  EXPECT_TRUE(close("sharded dv", got_dv, dv, Tol<float>::kAttnBwd));
}

// ---- SwiGLU --------------------------------------------------------------------------------
TYPED_TEST(CudaKernels, SwiGLU) {
  using T = TypeParam;
  const int64_t n = 10007;
  Vec g = stored<T>(random_vec(n, 61, -4, 4)), u = stored<T>(random_vec(n, 62));
  Vec out(n);
  ref::swiglu_forward<double>(out.data(), g.data(), u.data(), n);
  DeviceBuffer<T> d_g(g), d_u(u), d_out(n);
  swiglu_forward<T>(d_out.get(), d_g.get(), d_u.get(), n);
  EXPECT_TRUE(close("swiglu out", d_out.download(), stored<T>(out), Tol<T>::kElementwise));
  Vec dout = stored<T>(random_vec(n, 63)), dg = stored<T>(random_vec(n, 64));
  Vec du = stored<T>(random_vec(n, 65));
  DeviceBuffer<T> d_dout(dout), d_dg(dg), d_du(du);
  ref::swiglu_backward<double>(dg.data(), du.data(), dout.data(), g.data(), u.data(), n);
  swiglu_backward<T>(d_dg.get(), d_du.get(), d_dout.get(), d_g.get(), d_u.get(), n);
  EXPECT_TRUE(close("swiglu dgate", d_dg.download(), stored<T>(dg), Tol<T>::kElementwise));
  EXPECT_TRUE(close("swiglu dup", d_du.download(), stored<T>(du), Tol<T>::kElementwise));
}

// ---- Embedding -----------------------------------------------------------------------------
TYPED_TEST(CudaKernels, Embedding) {
  using T = TypeParam;
  const int V = 50, N = 300, C = 72;  // N > V: rows repeat, the backward needs its atomics
  std::vector<int32_t> tokens(N);
  Vec rnd = random_vec(N, 71, 0, V);
  for (int n = 0; n < N; ++n) tokens[n] = static_cast<int32_t>(rnd[n]) % V;
  Vec table = stored<T>(random_vec(size_t(V) * C, 72)), want(size_t(N) * C);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) want[size_t(n) * C + c] = table[size_t(tokens[n]) * C + c];
  DeviceBuffer<T> d_table(table), d_out(size_t(N) * C);
  DeviceBuffer<int32_t> d_tok(Vec(tokens.begin(), tokens.end()));
  embedding_forward<T>(d_out.get(), d_tok.get(), d_table.get(), N, C);
  EXPECT_TRUE(close("embedding out", d_out.download(), want, 0.0));  // a copy: exact

  Vec dout = stored<T>(random_vec(size_t(N) * C, 73)),
      dtable = stored<float>(random_vec(size_t(V) * C, 74));
  DeviceBuffer<T> d_dout(dout);
  DeviceBuffer<float> d_dtable(dtable);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) dtable[size_t(tokens[n]) * C + c] += dout[size_t(n) * C + c];
  embedding_backward<T>(d_dtable.get(), d_dout.get(), d_tok.get(), N, C);
  EXPECT_TRUE(close("embedding dtable", d_dtable.download(), dtable, kF32Reduce));
}

// ---- Cross-entropy -------------------------------------------------------------------------
TYPED_TEST(CudaKernels, CrossEntropy) {
  using T = TypeParam;
  const int N = 37, V = 1000;
  Vec logits = stored<T>(random_vec(size_t(N) * V, 81, -4, 4));
  std::vector<int32_t> targets(N);
  Vec rnd = random_vec(N, 82, 0, V);
  for (int n = 0; n < N; ++n) targets[n] = static_cast<int32_t>(rnd[n]) % V;
  targets[3] = -1;  // ignored
  Vec losses(N), lse(N), dloss = stored<float>(random_vec(N, 83, 0.1, 1.0));
  ref::cross_entropy_forward<double>(losses.data(), lse.data(), logits.data(), targets.data(), N,
                                     V);
  DeviceBuffer<T> d_logits(logits), d_dlogits(size_t(N) * V);
  DeviceBuffer<int32_t> d_t(Vec(targets.begin(), targets.end()));
  DeviceBuffer<float> d_losses(N), d_lse(N), d_dloss(dloss);
  cross_entropy_forward<T>(d_losses.get(), d_lse.get(), d_logits.get(), d_t.get(), N, V);
  EXPECT_TRUE(close("ce losses", d_losses.download(), losses, kF32Reduce));
  EXPECT_TRUE(close("ce lse", d_lse.download(), lse, kF32Reduce));

  Vec lse32 = stored<float>(lse), dlogits(size_t(N) * V);
  DeviceBuffer<float> d_lse32(lse32);
  ref::cross_entropy_backward<double>(dlogits.data(), logits.data(), lse32.data(), targets.data(),
                                      dloss.data(), N, V);
  cross_entropy_backward<T>(d_dlogits.get(), d_logits.get(), d_lse32.get(), d_t.get(),
                            d_dloss.get(), N, V);
  EXPECT_TRUE(close("ce dlogits", d_dlogits.download(), stored<T>(dlogits), Tol<T>::kElementwise));
  // In place over the logits.
  cross_entropy_backward<T>(d_logits.get(), d_logits.get(), d_lse32.get(), d_t.get(), d_dloss.get(),
                            N, V);
  EXPECT_TRUE(
      close("ce dlogits in place", d_logits.download(), stored<T>(dlogits), Tol<T>::kElementwise));
}

// ---- Vocabulary shard (vocabulary-parallel embedding and loss) -----------------------------
// Shard r of t = 2 (ids [r·V/t, (r+1)·V/t)) against the double references.
TYPED_TEST(CudaKernels, VocabShard) {
  using T = TypeParam;
  const int N = 37, V = 500, C = 40, t = 2, Vl = V / t;
  std::vector<int32_t> targets(N), tokens(N);
  Vec rnd = random_vec(2 * N, 101, 0, V);
  for (int n = 0; n < N; ++n) targets[n] = static_cast<int32_t>(rnd[n]) % V;
  for (int n = 0; n < N; ++n) tokens[n] = static_cast<int32_t>(rnd[N + n]) % V;
  targets[3] = -1;  // ignored
  DeviceBuffer<int32_t> d_t(Vec(targets.begin(), targets.end()));
  DeviceBuffer<int32_t> d_tok(Vec(tokens.begin(), tokens.end()));
  for (int r = 0; r < t; ++r) {
    SCOPED_TRACE(::testing::Message() << "shard " << r);
    const int start = r * Vl;
    Vec logits = stored<T>(random_vec(size_t(N) * Vl, 102 + r, -4, 4));
    Vec table = stored<T>(random_vec(size_t(Vl) * C, 104 + r));
    DeviceBuffer<T> d_logits(logits), d_table(table), d_emb(size_t(N) * C);
    Vec emb(size_t(N) * C);
    ref::embedding_forward_shard<double>(emb.data(), tokens.data(), table.data(), N, C, start, Vl);
    embedding_forward_shard<T>(d_emb.get(), d_tok.get(), d_table.get(), N, C, start, Vl);
    EXPECT_TRUE(close("embedding shard", d_emb.download(), emb, 0.0));  // a copy: exact
    Vec dout = stored<T>(random_vec(size_t(N) * C, 106 + r)),
        dtable = stored<float>(random_vec(size_t(Vl) * C, 108 + r));
    DeviceBuffer<T> d_dout(dout);
    DeviceBuffer<float> d_dtable(dtable);
    ref::embedding_backward_shard<double>(dtable.data(), dout.data(), tokens.data(), N, C, start,
                                          Vl);
    embedding_backward_shard<T>(d_dtable.get(), d_dout.get(), d_tok.get(), N, C, start, Vl);
    EXPECT_TRUE(close("embedding shard dtable", d_dtable.download(), dtable, kF32Reduce));

    Vec row_max(N), packed(2 * N), losses(N), lse(N);
    ref::cross_entropy_shard_max<double>(row_max.data(), logits.data(), N, Vl);
    DeviceBuffer<float> d_max(N), d_packed(2 * N), d_losses(N), d_lse(N);
    cross_entropy_shard_max<T>(d_max.get(), d_logits.get(), N, Vl);
    EXPECT_TRUE(close("shard row max", d_max.download(), row_max, 0.0));
    // The max of every shard would come from an all-reduce: a larger common max here.
    for (double& m : row_max) m = stored<float>(m + 0.5);
    d_max.upload(row_max);
    ref::cross_entropy_shard_sums<double>(packed.data(), logits.data(), row_max.data(),
                                          targets.data(), N, Vl, start);
    cross_entropy_shard_sums<T>(d_packed.get(), d_logits.get(), d_max.get(), d_t.get(), N, Vl,
                                start);
    EXPECT_TRUE(close("shard packed sums", d_packed.download(), packed, kF32Reduce));
    packed = stored<float>(packed);
    d_packed.upload(packed);
    ref::cross_entropy_shard_finish<double>(losses.data(), lse.data(), row_max.data(),
                                            packed.data(), targets.data(), N);
    cross_entropy_shard_finish(d_losses.get(), d_lse.get(), d_max.get(), d_packed.get(), d_t.get(),
                               N);
    EXPECT_TRUE(close("shard losses", d_losses.download(), losses, kF32Reduce));
    EXPECT_TRUE(close("shard lse", d_lse.download(), lse, kF32Reduce));

    Vec lse32 = stored<float>(lse), dloss = stored<float>(random_vec(N, 110, 0.1, 1.0)),
        dlogits(size_t(N) * Vl);
    DeviceBuffer<float> d_lse32(lse32), d_dloss(dloss);
    ref::cross_entropy_shard_backward<double>(dlogits.data(), logits.data(), lse32.data(),
                                              targets.data(), dloss.data(), N, Vl, start);
    cross_entropy_shard_backward<T>(d_logits.get(), d_logits.get(), d_lse32.get(), d_t.get(),
                                    d_dloss.get(), N, Vl, start);  // in place
    EXPECT_TRUE(
        close("shard dlogits", d_logits.download(), stored<T>(dlogits), Tol<T>::kElementwise));
  }
}

// ---- Elementwise helpers -------------------------------------------------------------------
TYPED_TEST(CudaKernels, AddScaleSumSquares) {
  using T = TypeParam;
  const int64_t n = 100003;
  Vec y = stored<T>(random_vec(n, 91)), x = stored<T>(random_vec(n, 92));
  DeviceBuffer<T> d_y(y), d_x(x);
  add_inplace<T>(d_y.get(), d_x.get(), n);
  scale_inplace<T>(d_y.get(), 0.37f, n);
  Vec want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = stored<T>(stored<T>(y[i] + x[i]) * double{0.37f});
  EXPECT_TRUE(close("add+scale", d_y.download(), want, Tol<T>::kElementwise));

  double ss = 0;
  for (double v : x) ss += v * v;
  // Squares of fp32/bf16 values are exact in double; only the double summation order differs.
  double got = sum_squares<T>(d_x.get(), n);
  EXPECT_NEAR(got, ss, 1e-10 * ss);
  DeviceBuffer<double> d_acc(Vec{1.5});
  sum_squares_accumulate<T>(d_acc.get(), d_x.get(), n);
  sum_squares_accumulate<T>(d_acc.get(), d_x.get(), n);
  EXPECT_NEAR(d_acc.download()[0], 1.5 + 2 * ss, 1e-10 * ss);
  EXPECT_EQ(sum_squares<T>(d_x.get(), 0), 0.0);
}

TYPED_TEST(CudaKernels, ConvertBf16) {
  if constexpr (!std::is_same_v<TypeParam, float>) GTEST_SKIP() << "run once (f32 instance)";
  const int64_t n = 4097;
  Vec x = random_vec(n, 101, -300, 300);
  x[0] = 0.0;
  x[1] = 1.0 + 1.0 / 256;  // exactly halfway between two bf16 values: rounds to even
  DeviceBuffer<float> d_x(x), d_back(n);
  DeviceBuffer<bf16> d_b(n);
  convert(d_b.get(), d_x.get(), n);
  convert(d_back.get(), d_b.get(), n);
  Vec want = stored<bf16>(x);
  EXPECT_TRUE(close("float->bf16", d_b.download(), want, 0.0));
  EXPECT_TRUE(close("bf16->float", d_back.download(), want, 0.0));
  EXPECT_EQ(want[1], 1.0);
}

// ---- AdamW ---------------------------------------------------------------------------------
TYPED_TEST(CudaKernels, AdamW) {
  if constexpr (!std::is_same_v<TypeParam, float>) GTEST_SKIP() << "fp32 master state only";
  const int64_t n = 4099;
  Vec p0 = stored<float>(random_vec(n, 111));
  // The reference keeps the state in fp32 as the kernel does (double arithmetic within a step).
  std::vector<float> p(p0.begin(), p0.end()), m(n, 0.f), v(n, 0.f);
  DeviceBuffer<float> d_p(p0), d_m(Vec(n, 0.0)), d_v(Vec(n, 0.0)), d_g(n);
  auto as_vec = [](const std::vector<float>& f) { return Vec(f.begin(), f.end()); };
  for (int step = 1; step <= 3; ++step) {
    Vec g = stored<float>(random_vec(n, 112 + step, -0.1, 0.1));
    std::vector<float> g32(g.begin(), g.end());
    d_g.upload(g);
    adamw_update(d_p.get(), d_g.get(), d_m.get(), d_v.get(), n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                 step);
    ref::adamw_update(p.data(), g32.data(), m.data(), v.data(), n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                      step);
    // A few fp32 operations per element on the update (lr * ~1), parameters ~1: ~1e-7.
    std::string tag = " step " + std::to_string(step);
    EXPECT_TRUE(close("adamw param" + tag, d_p.download(), as_vec(p), 1e-6));
    EXPECT_TRUE(close("adamw m" + tag, d_m.download(), as_vec(m), 1e-6));
    EXPECT_TRUE(close("adamw v" + tag, d_v.download(), as_vec(v), 1e-6));
  }
}

// A failing CUDA call surfaces as grove::Error naming the call.
TYPED_TEST(CudaKernels, ErrorsNameTheCall) {
  if constexpr (!std::is_same_v<TypeParam, float>) GTEST_SKIP() << "run once (f32 instance)";
  AttentionShape bad{4, 4, 1, 3, 2, 32, false, 0, 0};  // NH % NKV != 0
  EXPECT_THROW(
      cuda::attention_forward<float>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, bad),
      grove::Error);
  try {
    GROVE_CUDA_CHECK(cudaSetDevice(1 << 20));
    FAIL() << "cudaSetDevice of a non-existent device did not fail";
  } catch (const grove::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cudaSetDevice"), std::string::npos) << e.what();
  }
  cudaGetLastError();  // clear the recorded error so later launch checks do not see it
}

}  // namespace
}  // namespace grove::cuda
