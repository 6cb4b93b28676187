// The bf16 tensor-core attention (kernels/cuda/attention_tc.cu) against the scalar reference
// (kernels/reference/ops_reference.h, in double) and against the scalar kernels
// (attention_*_reference) on the same device. Inputs are rounded to bf16 before anyone sees them.
// Without a device every GPU test skips with one line; the dispatch-rule test is host-only and runs
// everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
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

// Tolerances (docs/testing.md#tolerances: max|a - b| / max|b| per tensor).
// One rounding of an fp32 value to bf16 moves it by at most half an ulp, <= 2^-8 of its magnitude,
// hence <= 2^-8 of max|b|.
constexpr double kRound = 1.0 / 256;
// Forward out vs double: its final rounding (kRound), plus the rounding of P to bf16 before P V:
// each p_j moves by <= 2^-9 relative, so out = sum_j p_j v_j / l moves by <= 2^-9 max|v| in the
// worst case (all roundings one way); with these inputs max|out| ~ max|v| (causal first rows copy
// v) and the roundings are unbiased, so 2^-9 is a bound, not an estimate (typically ~1e-4).
constexpr double kOut = kRound + 1.0 / 512;
// lse: fp32 throughout. Scores sum exact bf16 products in fp32 (~HD 2^-24 |q||k| scale ~ 1e-6
// absolute), exp2/log2 add a few fp32 ulps; against max|lse| >= ~1 that is ~1e-6, so 1e-5 leaves
// a 10x margin and still catches any wrong key (an error >= 1e-3).
constexpr double kLse = 1e-5;
// Gradients vs double: the final rounding of the accumulated gradient (kRound), plus the rounding
// of P and dS to bf16 before dv = P^T dout, dk = dS^T q, dq = dS k. Each operand moves by <= 2^-9
// relative with random sign, so a sum over n keys / queries moves by ~2^-9 / sqrt(3) of its
// root-sum-square (~1.1e-3 of a typical entry, which is itself ~1/3 of max|b|); 2^-8 covers that
// with ~4 sigma over every entry of a tensor.
constexpr double kGrad = 2 * kRound;
// Against the scalar kernels: each is within its own bound of the exact result, and the scalar
// kernel's only error of that size is its one final rounding (kRound); add the two.
constexpr double kOutVsScalar = kOut + kRound;
constexpr double kGradVsScalar = kGrad + kRound;
constexpr double kLseVsScalar = 2 * kLse;

class CudaAttentionTc : public testing::GpuTest {};

std::string describe(const AttentionShape& s) {
  return " [SQ=" + std::to_string(s.SQ) + " SK=" + std::to_string(s.SK) +
         " B=" + std::to_string(s.B) + " NH=" + std::to_string(s.NH) +
         " NKV=" + std::to_string(s.NKV) + " HD=" + std::to_string(s.HD) +
         (s.causal ? " causal" : "") + " q_pos0=" + std::to_string(s.q_pos0) +
         " k_pos0=" + std::to_string(s.k_pos0) + "]";
}

size_t q_size(const AttentionShape& s) {
  return size_t(s.SQ) * s.B * s.NH * s.HD;
}
size_t k_size(const AttentionShape& s) {
  return size_t(s.SK) * s.B * s.NKV * s.HD;
}
size_t lse_size(const AttentionShape& s) {
  return size_t(s.B) * s.NH * s.SQ;
}
// Index of q / out element (i, b, h, 0).
size_t qi(const AttentionShape& s, int i, int b, int h) {
  return ((size_t(i) * s.B + b) * s.NH + h) * s.HD;
}

// A row that sees no key: lse exactly -inf and an exactly zero output row.
void expect_masked_rows_exact(const AttentionShape& s, const Vec& out, const Vec& lse,
                              const std::string& tag) {
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < s.SQ; ++i) {
        bool sees_any = s.SK > 0 && (!s.causal || s.k_pos0 <= s.q_pos0 + i);
        if (sees_any) continue;
        EXPECT_EQ(lse[(size_t(b) * s.NH + h) * s.SQ + i], -INFINITY) << "row " << i << tag;
        for (int d = 0; d < s.HD; ++d)
          ASSERT_EQ(out[qi(s, i, b, h) + d], 0.0) << "row " << i << " d " << d << tag;
      }
}

// Forward and backward of the tensor-core path (through the public dispatching entry points)
// against the scalar kernels, and against the double reference when `with_double`.
void check_case(const AttentionShape& s, bool with_double, uint64_t seed) {
  const std::string tag = describe(s);
  const size_t nq = q_size(s), nk = k_size(s), nl = lse_size(s);
  Vec q = stored<bf16>(random_vec(nq, seed)), k = stored<bf16>(random_vec(nk, seed + 1));
  Vec v = stored<bf16>(random_vec(nk, seed + 2));
  DeviceBuffer<bf16> d_q(q), d_k(k), d_v(v), d_out(nq), d_out_s(nq);
  DeviceBuffer<float> d_lse(nl), d_lse_s(nl);
  ASSERT_TRUE(attention_tc_supported(s, nullptr, {d_out.get(), d_q.get(), d_k.get(), d_v.get()}))
      << tag;

  cuda::attention_forward<bf16>(d_out.get(), d_lse.get(), nullptr, d_q.get(), d_k.get(), d_v.get(),
                                s);
  attention_forward_reference<bf16>(d_out_s.get(), d_lse_s.get(), nullptr, d_q.get(), d_k.get(),
                                    d_v.get(), s);
  const Vec out = d_out.download(), lse = d_lse.download();
  const Vec out_s = d_out_s.download(), lse_s = d_lse_s.download();
  EXPECT_TRUE(close("tc out vs scalar" + tag, out, out_s, kOutVsScalar));
  EXPECT_TRUE(close("tc lse vs scalar" + tag, lse, lse_s, kLseVsScalar));
  expect_masked_rows_exact(s, out, lse, tag);

  // The backward's out / lse: the reference's (rounded as stored) or else the scalar kernel's.
  Vec out_b = out_s, lse_b = lse_s;
  if (with_double) {
    Vec want(nq), want_lse(nl);
    ref::attention_forward<double>(want.data(), want_lse.data(), nullptr, q.data(), k.data(),
                                   v.data(), s);
    EXPECT_TRUE(close("tc out" + tag, out, want, kOut));
    EXPECT_TRUE(close("tc lse" + tag, lse, want_lse, kLse));
    out_b = stored<bf16>(want);
    lse_b = stored<float>(want_lse);
  }

  // Gradients start non-zero (the backward accumulates), small enough not to set max|want|.
  Vec dout = stored<bf16>(random_vec(nq, seed + 3));
  Vec dq = stored<bf16>(random_vec(nq, seed + 4, -0.01, 0.01));
  Vec dk = stored<bf16>(random_vec(nk, seed + 5, -0.01, 0.01));
  Vec dv = stored<bf16>(random_vec(nk, seed + 6, -0.01, 0.01));
  DeviceBuffer<bf16> d_outb(out_b), d_dout(dout);
  DeviceBuffer<float> d_lseb(lse_b);
  DeviceBuffer<bf16> d_dq(dq), d_dk(dk), d_dv(dv), d_dq_s(dq), d_dk_s(dk), d_dv_s(dv);
  cuda::attention_backward<bf16>(d_dq.get(), d_dk.get(), d_dv.get(), d_dout.get(), d_q.get(),
                                 d_k.get(), d_v.get(), d_outb.get(), d_lseb.get(), nullptr, s);
  attention_backward_reference<bf16>(d_dq_s.get(), d_dk_s.get(), d_dv_s.get(), d_dout.get(),
                                     d_q.get(), d_k.get(), d_v.get(), d_outb.get(), d_lseb.get(),
                                     nullptr, s);
  const Vec got_dq = d_dq.download(), got_dk = d_dk.download(), got_dv = d_dv.download();
  EXPECT_TRUE(close("tc dq vs scalar" + tag, got_dq, d_dq_s.download(), kGradVsScalar));
  EXPECT_TRUE(close("tc dk vs scalar" + tag, got_dk, d_dk_s.download(), kGradVsScalar));
  EXPECT_TRUE(close("tc dv vs scalar" + tag, got_dv, d_dv_s.download(), kGradVsScalar));
  if (with_double) {
    ref::attention_backward<double>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(),
                                    k.data(), v.data(), out_b.data(), lse_b.data(), nullptr, s);
    EXPECT_TRUE(close("tc dq" + tag, got_dq, dq, kGrad));
    EXPECT_TRUE(close("tc dk" + tag, got_dk, dk, kGrad));
    EXPECT_TRUE(close("tc dv" + tag, got_dv, dv, kGrad));
  }
}

// Every case is on the tensor-core path (HD 64 / 128); tiles are 64 x 64.
TEST_F(CudaAttentionTc, AgainstDoubleReference) {
  const AttentionShape shapes[] = {
      {77, 77, 1, 8, 2, 64, true, 0, 0},      // GQA, causal, tails (77 = 64 + 13)
      {77, 77, 2, 8, 2, 128, false, 0, 0},    // GQA, not causal, B > 1
      {45, 130, 2, 4, 4, 64, false, 0, 0},    // SQ != SK, a 2-key last tile
      {128, 128, 1, 2, 1, 64, true, 0, 0},    // exact tiles, multi-query
      {5, 33, 1, 2, 1, 128, false, 0, 0},     // fewer rows than one warp's 16
      {70, 40, 2, 4, 2, 128, true, 0, 20},    // rows 0..19 see no key: lse -inf, out 0
      {50, 150, 1, 4, 1, 64, true, 100, 0},   // the last 50 queries of 150 (a query shard)
      {100, 90, 1, 2, 2, 128, true, 30, 60},  // both offsets: rows 0..29 see nothing, tile skips
      {20, 0, 1, 2, 2, 64, false, 0, 0},      // empty key shard
  };
  uint64_t seed = 100;
  for (const AttentionShape& s : shapes) {
    check_case(s, /*with_double=*/true, seed);
    seed += 10;
  }
}

// Llama-size head at a realistic length: the scalar kernels only (the double reference is slow).
// Also checks that the tensor-core path is deterministic (bitwise equal on a rerun).
TEST_F(CudaAttentionTc, LargeAgainstScalar) {
  for (bool causal : {true, false}) {
    const AttentionShape s{1024, 1024, 2, 4, 2, 128, causal, 0, 0};
    check_case(s, /*with_double=*/false, causal ? 200 : 210);

    const size_t nq = q_size(s), nk = k_size(s), nl = lse_size(s);
    DeviceBuffer<bf16> d_q(random_vec(nq, 1)), d_k(random_vec(nk, 2)), d_v(random_vec(nk, 3));
    DeviceBuffer<bf16> d_dout(random_vec(nq, 4)), d_out(nq);
    DeviceBuffer<float> d_lse(nl);
    Vec first_out, first_lse, first_grads;
    for (int run = 0; run < 2; ++run) {
      DeviceBuffer<bf16> d_dq(Vec(nq, 0.0)), d_dk(Vec(nk, 0.0)), d_dv(Vec(nk, 0.0));
      attention_tc_forward(d_out.get(), d_lse.get(), d_q.get(), d_k.get(), d_v.get(), s);
      attention_tc_backward(d_dq.get(), d_dk.get(), d_dv.get(), d_dout.get(), d_q.get(), d_k.get(),
                            d_v.get(), d_out.get(), d_lse.get(), s);
      Vec out = d_out.download(), lse = d_lse.download(), grads = d_dq.download();
      Vec g_k = d_dk.download(), g_v = d_dv.download();
      grads.insert(grads.end(), g_k.begin(), g_k.end());
      grads.insert(grads.end(), g_v.begin(), g_v.end());
      if (run == 0) {
        first_out = out, first_lse = lse, first_grads = grads;
      } else {
        EXPECT_TRUE(close("rerun out", out, first_out, 0.0));
        EXPECT_TRUE(close("rerun lse", lse, first_lse, 0.0));
        EXPECT_TRUE(close("rerun dq|dk|dv", grads, first_grads, 0.0));
      }
    }
  }
}

// Keys split over two shards (as tree attention does): the shards' outputs combined by their lse
// equal the full attention, and the backward of each shard given the global out / lse sums to the
// full gradients.
TEST_F(CudaAttentionTc, ShardsCombine) {
  const AttentionShape full{48, 96, 2, 8, 2, 64, true, 48, 0};  // the last 48 queries of 96
  const int split = 61;                                         // not a tile boundary
  AttentionShape s0 = full, s1 = full;
  s0.SK = split;
  s1.SK = full.SK - split;
  s1.k_pos0 = split;
  const size_t nq = q_size(full), nl = lse_size(full), row = size_t(full.B) * full.NKV * full.HD;
  Vec q = stored<bf16>(random_vec(nq, 51)), k = stored<bf16>(random_vec(full.SK * row, 52));
  Vec v = stored<bf16>(random_vec(full.SK * row, 53));
  Vec out(nq), lse(nl);
  ref::attention_forward<double>(out.data(), lse.data(), nullptr, q.data(), k.data(), v.data(),
                                 full);
  auto part = [&](const Vec& x, int j0, int n) {
    return Vec(x.begin() + j0 * row, x.begin() + (j0 + n) * row);
  };
  DeviceBuffer<bf16> d_q(q), d_k0(part(k, 0, split)), d_v0(part(v, 0, split));
  DeviceBuffer<bf16> d_k1(part(k, split, s1.SK)), d_v1(part(v, split, s1.SK));
  DeviceBuffer<bf16> d_o0(nq), d_o1(nq);
  DeviceBuffer<float> d_l0(nl), d_l1(nl);
  attention_tc_forward(d_o0.get(), d_l0.get(), d_q.get(), d_k0.get(), d_v0.get(), s0);
  attention_tc_forward(d_o1.get(), d_l1.get(), d_q.get(), d_k1.get(), d_v1.get(), s1);
  // The merge kernel, in place into shard 0's partial. Rows before position 61 see nothing of
  // shard 1 (l1 = -inf, weight 0).
  attention_merge<bf16>(d_o0.get(), d_l0.get(), d_o1.get(), d_l1.get(), full.SQ, full.B, full.NH,
                        full.HD, 0, full.SQ);
  const Vec comb = d_o0.download(), comb_lse = d_l0.download();
  // A convex combination of the shard outputs: each element's error is at most the larger of the
  // two shards' errors, each bounded as kOut bounds a single call's, plus the merged output's own
  // rounding to bf16 (kRound).
  EXPECT_TRUE(close("combined out", comb, out, kOut + kRound));
  EXPECT_TRUE(close("combined lse", comb_lse, lse, kLse));

  Vec dout = stored<bf16>(random_vec(nq, 54)), dq(nq, 0.0), dk(full.SK * row, 0.0);
  Vec dv(full.SK * row, 0.0);
  Vec out_b = stored<bf16>(out), lse_b = stored<float>(lse);
  ref::attention_backward<double>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                                  v.data(), out_b.data(), lse_b.data(), nullptr, full);
  DeviceBuffer<bf16> d_dout(dout), d_out(out_b), d_dq(Vec(nq, 0.0));
  DeviceBuffer<float> d_lse(lse_b);
  DeviceBuffer<bf16> d_dk0(Vec(split * row, 0.0)), d_dv0(Vec(split * row, 0.0));
  DeviceBuffer<bf16> d_dk1(Vec(s1.SK * row, 0.0)), d_dv1(Vec(s1.SK * row, 0.0));
  attention_tc_backward(d_dq.get(), d_dk0.get(), d_dv0.get(), d_dout.get(), d_q.get(), d_k0.get(),
                        d_v0.get(), d_out.get(), d_lse.get(), s0);
  attention_tc_backward(d_dq.get(), d_dk1.get(), d_dv1.get(), d_dout.get(), d_q.get(), d_k1.get(),
                        d_v1.get(), d_out.get(), d_lse.get(), s1);
  Vec got_dk = d_dk0.download(), got_dv = d_dv0.download();
  Vec dk1 = d_dk1.download(), dv1 = d_dv1.download();
  got_dk.insert(got_dk.end(), dk1.begin(), dk1.end());
  got_dv.insert(got_dv.end(), dv1.begin(), dv1.end());
  // dq is rounded to bf16 once per shard call: one more kRound.
  EXPECT_TRUE(close("sharded dq", d_dq.download(), dq, kGrad + kRound));
  EXPECT_TRUE(close("sharded dk", got_dk, dk, kGrad));
  EXPECT_TRUE(close("sharded dv", got_dv, dv, kGrad));
}

// The dispatch rule (host only: runs without a device).
// ---- attention_merge, attention_merge_scale, attention_merge_finish -----------------------------
// Against the double reference (kernels/reference), for fp32 and bf16 outputs, on partials whose
// rows cover every case: both sides present, one side empty (lse = -inf), both empty, and a
// partial that covers only rows [row0, row0 + SQp). Tolerances: fp32, a few fp32 operations and
// expf / logf per element (2e-6); bf16, one rounding of the output (kRound); lse is fp32 (2e-6).
template <typename T>
class CudaAttentionMerge : public testing::GpuTest {};
TYPED_TEST_SUITE(CudaAttentionMerge, testing::ComputeTypes, testing::ComputeTypeNames);

TYPED_TEST(CudaAttentionMerge, AgainstReference) {
  using T = TypeParam;
  const double tol = std::is_same_v<T, float> ? 2e-6 : kRound, lse_tol = 2e-6;
  const int SQ = 37, B = 2, NH = 3, HD = 40, row0 = 9, SQp = 20;
  const size_t nq = size_t(SQ) * B * NH * HD, nl = size_t(B) * NH * SQ;
  const size_t npq = size_t(SQp) * B * NH * HD, npl = size_t(B) * NH * SQp;
  Vec out = stored<T>(random_vec(nq, 601)), lse = stored<float>(random_vec(nl, 602, -3, 3));
  Vec pout = stored<T>(random_vec(npq, 603)), plse = stored<float>(random_vec(npl, 604, -3, 3));
  for (size_t r = 0; r < nl; r += 5) lse[r] = -INFINITY;
  for (size_t r = 0; r < npl; r += 3) plse[r] = -INFINITY;
  for (size_t r = 0; r < nl; r += 5)  // an empty row has a zero output
    for (int d = 0; d < HD; ++d) {
      const size_t bh = r / SQ, i = r % SQ;
      out[((i * B + bh / NH) * NH + bh % NH) * HD + d] = 0.0;
    }
  const std::string tag = std::is_same_v<T, float> ? " f32" : " bf16";

  // Pairwise, over a row range.
  Vec want = out, want_lse = lse;
  ref::attention_merge<double>(want.data(), want_lse.data(), pout.data(), plse.data(), SQ, B, NH,
                               HD, row0, SQp);
  DeviceBuffer<T> d_out(out), d_pout(pout);
  DeviceBuffer<float> d_lse(lse), d_plse(plse);
  attention_merge<T>(d_out.get(), d_lse.get(), d_pout.get(), d_plse.get(), SQ, B, NH, HD, row0,
                     SQp);
  EXPECT_TRUE(close("merge out" + tag, d_out.download(), stored<T>(want), tol));
  EXPECT_TRUE(close("merge lse" + tag, d_lse.download(), want_lse, lse_tol));

  // Collective form: scale (in place: num aliases out), then finish from the scaled sums.
  Vec lmax(nl);
  Vec extra = random_vec(nl, 605, -3, 3);
  for (size_t r = 0; r < nl; ++r) lmax[r] = stored<float>(std::max(lse[r], extra[r]));
  Vec num_want(nq), den_want(nl);
  ref::attention_merge_scale<double>(num_want.data(), den_want.data(), out.data(), lse.data(),
                                     lmax.data(), SQ, B, NH, HD);
  DeviceBuffer<T> d_num(out);
  DeviceBuffer<float> d_den(nl), d_lmax(lmax), d_lse2(lse);
  attention_merge_scale<T>(d_num.get(), d_den.get(), d_num.get(), d_lse2.get(), d_lmax.get(), SQ, B,
                           NH, HD);
  EXPECT_TRUE(close("scale num" + tag, d_num.download(), stored<T>(num_want), tol));
  EXPECT_TRUE(close("scale den" + tag, d_den.download(), den_want, lse_tol));
  // Finish from given sums (every 4th row: den = 0, out 0 and lse -inf).
  Vec num = stored<T>(random_vec(nq, 606)), den = stored<float>(random_vec(nl, 607, 0.5, 3));
  for (size_t r = 0; r < nl; r += 4) den[r] = 0.0;
  Vec fin_want(nq), fin_lse_want(nl);
  ref::attention_merge_finish<double>(fin_want.data(), fin_lse_want.data(), num.data(), den.data(),
                                      lmax.data(), SQ, B, NH, HD);
  DeviceBuffer<T> d_fin(nq), d_numb(num);
  DeviceBuffer<float> d_denb(den), d_fin_lse(nl);
  attention_merge_finish<T>(d_fin.get(), d_fin_lse.get(), d_numb.get(), d_denb.get(), d_lmax.get(),
                            SQ, B, NH, HD);
  EXPECT_TRUE(close("finish out" + tag, d_fin.download(), stored<T>(fin_want), tol));
  EXPECT_TRUE(close("finish lse" + tag, d_fin_lse.download(), fin_lse_want, lse_tol));

  // A row range outside [0, SQ) is an error naming the call.
  EXPECT_THROW(attention_merge<T>(d_out.get(), d_lse.get(), d_pout.get(), d_plse.get(), SQ, B, NH,
                                  HD, SQ - SQp + 1, SQp),
               grove::Error);
}

TEST(CudaAttentionTcRule, WhichPathIsTaken) {
  const void* aligned = reinterpret_cast<const void*>(uintptr_t{4096});
  const void* odd = reinterpret_cast<const void*>(uintptr_t{4096 + 2});
  AttentionShape s{77, 77, 1, 8, 2, 128, true, 0, 0};
  EXPECT_TRUE(attention_tc_supported(s, nullptr, {aligned, aligned}));
  EXPECT_FALSE(attention_tc_supported(s, aligned, {aligned}));  // probs requested
  EXPECT_FALSE(attention_tc_supported(s, nullptr, {aligned, odd}));
  s.HD = 64;
  EXPECT_TRUE(attention_tc_supported(s, nullptr, {aligned}));
  for (int hd : {32, 48, 96, 256}) {
    s.HD = hd;
    EXPECT_FALSE(attention_tc_supported(s, nullptr, {aligned})) << "HD=" << hd;
  }
  s.HD = 128;
  s.NH = 7;  // not a multiple of NKV = 2
  EXPECT_FALSE(attention_tc_supported(s, nullptr, {aligned}));
  // The tensor-core entry points refuse what they do not support before touching the device.
  s.NH = 8;
  s.HD = 96;
  EXPECT_THROW(attention_tc_forward(nullptr, nullptr, nullptr, nullptr, nullptr, s), grove::Error);
  EXPECT_THROW(attention_tc_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                     nullptr, nullptr, s),
               grove::Error);
}

}  // namespace
}  // namespace grove::cuda
