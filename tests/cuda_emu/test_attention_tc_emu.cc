// The bf16 tensor-core attention (kernels/cuda/attention_tc.cu) run on the CPU through the CUDA
// emulator (emu.h), against the scalar reference in double (kernels/reference/ops_reference.h):
// the checks of tests/cuda/test_cuda_attention.cc's AgainstDoubleReference, with its shapes,
// seeds and tolerances, on every build and without a GPU. The kernel file is compiled from the
// current source, rewritten at build time (rewrite_kernel.cmake), and called through its public
// entry points, so the grids, shared-memory sizes and the opt-in are the file's own. What the
// emulator cannot check (timing, the memory model inside a barrier interval, the tensor cores' own
// rounding) is listed in emu.h; the GPU test covers it.
//
// How this harness was shown to catch kernel bugs: by hand, on mutated copies of attention_tc.cu
// (each mutant is another ~40 s compile, so they are not kept as tests). Worst error / tolerance:
//  - the forward's online-softmax rescale dropped (`Rw[r * 16 + quad * 4 + t] = alpha` -> 1.f):
//    out off by 0.67 of max|out| (tolerance 5.9e-3) in the 6 shapes with two or more key tiles;
//  - a wrong transposed load in the dk/dv kernel (P^T read at Ps + kb * 16 * kLdP + qq * 16, the
//    transposed block): dv off by 1.0 in 8 of 9 shapes;
//  - the __syncthreads between writing P / dS and reading them in the dk/dv kernel removed: dk, dv
//    NaN in 7 shapes; the one at the top of the forward's key loop removed: out off by 0.97; the
//    one at the top of the dq kernel's loop removed: dq off by 0.85;
//  - the __syncwarp after the forward's score store removed: out, lse NaN; the one at the end of
//    accumulate_fragment (staging buffer reuse) removed: dq, dk, dv off by > 1.
// Each barrier mutant also fails ResultsDoNotDependOnTheSchedule. Removing the __syncwarp after
// the forward writes its 1 / l factors is not caught, rightly: the __syncwarp after the next
// store_matrix_sync orders those writes too.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <new>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/reference/ops_reference.h"
#include "tests/cuda/test_util.h"
#include "tests/cuda_emu/emu.h"

namespace grove::cuda {
namespace {

using testing::close;
using testing::random_vec;
using testing::stored;
using testing::Vec;

// Tolerances: those of tests/cuda/test_cuda_attention.cc (keep them in step), with its reasoning
// (docs/testing.md#tolerances: max|a - b| / max|b| per tensor). They hold for any fp32
// summation order, so the emulated tensor cores (a sequential fp32 sum) are held to the GPU's
// bounds.
// One rounding of an fp32 value to bf16 moves it by at most half an ulp, <= 2^-8 of its magnitude.
constexpr double kRound = 1.0 / 256;
// Forward out: its final rounding, plus the rounding of P to bf16 before P V (each p_j moves by
// <= 2^-9 relative, so out moves by <= 2^-9 max|v|; max|out| ~ max|v| with these inputs).
constexpr double kOut = kRound + 1.0 / 512;
// lse: fp32 throughout (~1e-6 against max|lse| >= ~1); still catches any wrong key (>= 1e-3).
constexpr double kLse = 1e-5;
// Gradients: the final rounding of the accumulated gradient, plus the bf16 rounding of P and dS
// before their products (random sign: ~1.1e-3 of a typical entry, ~4 sigma under 2^-8).
constexpr double kGrad = 2 * kRound;

// Device memory from the emulated cudaMalloc: 256-byte aligned, exactly n elements
// (AddressSanitizer reports any access past the end), registered as device memory.
template <typename T>
class Buffer {
 public:
  explicit Buffer(const Vec& values) : n_(values.size()), p_(allocate(n_)) {
    for (size_t i = 0; i < n_; ++i) p_.get()[i] = from_double(values[i]);
  }
  T* get() { return p_.get(); }
  Vec values() const {
    Vec v(n_);
    for (size_t i = 0; i < n_; ++i) v[i] = to_double(p_.get()[i]);
    return v;
  }

 private:
  static T from_double(double x) {
    if constexpr (std::is_same_v<T, bf16>)
      return __float2bfloat16_rn(static_cast<float>(x));
    else
      return static_cast<T>(x);
  }
  static double to_double(T x) {
    if constexpr (std::is_same_v<T, bf16>)
      return __bfloat162float(x);
    else
      return static_cast<double>(x);
  }
  static T* allocate(size_t n) {
    void* p = nullptr;
    if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) std::abort();
    return static_cast<T*>(p);
  }
  struct Free {
    void operator()(T* p) const { cudaFree(p); }
  };
  size_t n_;
  std::unique_ptr<T, Free> p_;
};

std::string describe(const AttentionShape& s) {
  return " [SQ=" + std::to_string(s.SQ) + " SK=" + std::to_string(s.SK) +
         " B=" + std::to_string(s.B) + " NH=" + std::to_string(s.NH) +
         " NKV=" + std::to_string(s.NKV) + " HD=" + std::to_string(s.HD) +
         (s.causal ? " causal" : "") + " q_pos0=" + std::to_string(s.q_pos0) +
         " k_pos0=" + std::to_string(s.k_pos0) + "]";
}

struct Results {
  Vec out, lse, dq, dk, dv;
};

// Forward and backward through the public tensor-core entry points, on the emulator. The backward
// gets the reference's out / lse (rounded as stored), as in the GPU test, so that its check does
// not depend on the forward's.
Results run_emulated(const AttentionShape& s, uint64_t seed, const Vec& q, const Vec& k,
                     const Vec& v, const Vec& out_b, const Vec& lse_b, const Vec& dout,
                     const Vec& dq0, const Vec& dk0, const Vec& dv0) {
  const size_t nq = q.size(), nl = size_t(s.B) * s.NH * s.SQ;
  emu::set_schedule_seed(seed);
  Buffer<bf16> d_q(q), d_k(k), d_v(v), d_out(Vec(nq, NAN)), d_outb(out_b), d_dout(dout);
  Buffer<float> d_lse(Vec(nl, NAN)), d_lseb(lse_b);
  Buffer<bf16> d_dq(dq0), d_dk(dk0), d_dv(dv0);
  EXPECT_TRUE(attention_tc_supported(
      s, nullptr, {d_out.get(), d_q.get(), d_k.get(), d_v.get(), d_dq.get(), d_dk.get()}));
  attention_tc_forward(d_out.get(), d_lse.get(), d_q.get(), d_k.get(), d_v.get(), s);
  attention_tc_backward(d_dq.get(), d_dk.get(), d_dv.get(), d_dout.get(), d_q.get(), d_k.get(),
                        d_v.get(), d_outb.get(), d_lseb.get(), s);
  return {d_out.values(), d_lse.values(), d_dq.values(), d_dk.values(), d_dv.values()};
}

struct Case {
  const char* name;
  AttentionShape shape;
  uint64_t seed;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name << describe(c.shape) << " seed " << c.seed;
}

class AttentionTcEmu : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionTcEmu, AgainstDoubleReference) {
  const AttentionShape s = GetParam().shape;
  const uint64_t seed = GetParam().seed;
  const std::string tag = describe(s);
  const size_t nq = size_t(s.SQ) * s.B * s.NH * s.HD, nk = size_t(s.SK) * s.B * s.NKV * s.HD;
  const size_t nl = size_t(s.B) * s.NH * s.SQ;
  const Vec q = stored<bf16>(random_vec(nq, seed)), k = stored<bf16>(random_vec(nk, seed + 1));
  const Vec v = stored<bf16>(random_vec(nk, seed + 2));
  Vec want(nq), want_lse(nl);
  ref::attention_forward<double>(want.data(), want_lse.data(), nullptr, q.data(), k.data(),
                                 v.data(), s);
  const Vec out_b = stored<bf16>(want), lse_b = stored<float>(want_lse);
  // Gradients start non-zero (the backward accumulates), small enough not to set max|want|.
  const Vec dout = stored<bf16>(random_vec(nq, seed + 3));
  Vec dq = stored<bf16>(random_vec(nq, seed + 4, -0.01, 0.01));
  Vec dk = stored<bf16>(random_vec(nk, seed + 5, -0.01, 0.01));
  Vec dv = stored<bf16>(random_vec(nk, seed + 6, -0.01, 0.01));

  const Results got = run_emulated(s, seed, q, k, v, out_b, lse_b, dout, dq, dk, dv);
  EXPECT_TRUE(close("emu out" + tag, got.out, want, kOut));
  EXPECT_TRUE(close("emu lse" + tag, got.lse, want_lse, kLse));
  // A row that sees no key: lse exactly -inf and an exactly zero output row.
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < s.SQ; ++i) {
        if (s.SK > 0 && (!s.causal || s.k_pos0 <= s.q_pos0 + i)) continue;
        EXPECT_EQ(got.lse[(size_t(b) * s.NH + h) * s.SQ + i], -INFINITY) << "row " << i << tag;
        for (int d = 0; d < s.HD; ++d)
          ASSERT_EQ(got.out[((size_t(i) * s.B + b) * s.NH + h) * s.HD + d], 0.0)
              << "row " << i << " d " << d << tag;
      }

  ref::attention_backward<double>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                                  v.data(), out_b.data(), lse_b.data(), nullptr, s);
  EXPECT_TRUE(close("emu dq" + tag, got.dq, dq, kGrad));
  EXPECT_TRUE(close("emu dk" + tag, got.dk, dk, kGrad));
  EXPECT_TRUE(close("emu dv" + tag, got.dv, dv, kGrad));
}

// The GPU test's AgainstDoubleReference shapes and seeds, all on the tensor-core path (HD 64 /
// 128; tiles are 64 x 64).
const Case kCases[] = {
    // GQA, causal, tails (77 = 64 + 13)
    {"Gqa_Causal_Tails_Hd64", {77, 77, 1, 8, 2, 64, true, 0, 0}, 100},
    // GQA, not causal, B > 1
    {"Gqa_Batch2_Tails_Hd128", {77, 77, 2, 8, 2, 128, false, 0, 0}, 110},
    // SQ != SK, a 2-key last tile
    {"FewQueries_ManyKeys_Hd64", {45, 130, 2, 4, 4, 64, false, 0, 0}, 120},
    // exact tiles, multi-query
    {"ExactTiles_Causal_Hd64", {128, 128, 1, 2, 1, 64, true, 0, 0}, 130},
    // fewer rows than one warp's 16
    {"FiveRows_Hd128", {5, 33, 1, 2, 1, 128, false, 0, 0}, 140},
    // rows 0..19 see no key: lse -inf, out 0
    {"MaskedRows_Hd128", {70, 40, 2, 4, 2, 128, true, 0, 20}, 150},
    // the last 50 queries of 150 (a query shard)
    {"QueryShard_Hd64", {50, 150, 1, 4, 1, 64, true, 100, 0}, 160},
    // both offsets: rows 0..29 see nothing, tile skips
    {"BothOffsets_Hd128", {100, 90, 1, 2, 2, 128, true, 30, 60}, 170},
    // empty key shard
    {"EmptyKeys_Hd64", {20, 0, 1, 2, 2, 64, false, 0, 0}, 180},
};
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTcEmu, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.name);
                         });

// The kernels do not depend on the order in which threads run between barriers: another schedule
// gives bitwise the same results (a missing barrier would usually change them).
TEST(AttentionTcEmuSchedule, ResultsDoNotDependOnTheSchedule) {
  const AttentionShape s{77, 70, 1, 4, 2, 64, true, 0, 0};
  const size_t nq = size_t(s.SQ) * s.B * s.NH * s.HD, nk = size_t(s.SK) * s.B * s.NKV * s.HD;
  const Vec q = stored<bf16>(random_vec(nq, 1)), k = stored<bf16>(random_vec(nk, 2));
  const Vec v = stored<bf16>(random_vec(nk, 3)), dout = stored<bf16>(random_vec(nq, 4));
  Vec out(nq), lse(size_t(s.B) * s.NH * s.SQ);
  ref::attention_forward<double>(out.data(), lse.data(), nullptr, q.data(), k.data(), v.data(), s);
  const Vec zq(nq, 0.0), zk(nk, 0.0);
  const Results a = run_emulated(s, 1, q, k, v, stored<bf16>(out), lse, dout, zq, zk, zk);
  const Results b = run_emulated(s, 2, q, k, v, stored<bf16>(out), lse, dout, zq, zk, zk);
  EXPECT_TRUE(close("out", b.out, a.out, 0.0));
  EXPECT_TRUE(close("lse", b.lse, a.lse, 0.0));
  EXPECT_TRUE(close("dq", b.dq, a.dq, 0.0));
  EXPECT_TRUE(close("dk", b.dk, a.dk, 0.0));
  EXPECT_TRUE(close("dv", b.dv, a.dv, 0.0));
}

}  // namespace
}  // namespace grove::cuda
