// Backward kernels vs central finite differences, in double.
//
// Each test builds a scalar loss L = sum(out * R) with a random R, runs the backward with
// dout = R, and compares every input's gradient with (L(x+eps) - L(x-eps)) / (2 eps).
//
// Tolerance kFdTol = 1e-6 relative (docs/testing.md): in double with eps = 1e-5 the central
// difference has truncation error ~eps^2 * |L'''| / 6 ~ 1e-11 and rounding error
// ~1e-16 * |L| / eps ~ 1e-10 for |L| ~ 10; gradients here are O(0.1..1), so the expected error is
// <= 1e-9 relative, three orders below the tolerance, while a wrong term gives >= 1e-3.
//
// Gradient buffers are pre-filled with kPrefill and the prefill is subtracted before comparing,
// which also checks that the backward kernels accumulate (+=) rather than overwrite.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/ops.h"
#include "tests/common/tensor_compare.h"
#include "tests/kernels/kernel_test_util.h"

namespace grove::cpu {
namespace {

using grove::testing::compare;
using grove::testing::dot;
using grove::testing::minus;
using grove::testing::numeric_grad;
using grove::testing::random_vector;
using Vec = std::vector<double>;

constexpr double kFdTol = 1e-6;
constexpr double kPrefill = 0.25;

TEST(GradCheck, Linear) {
  const int N = 3, C = 4, OC = 5;
  Vec x = random_vector<double>(N * C, 1), w = random_vector<double>(OC * C, 2),
      bias = random_vector<double>(OC, 3), R = random_vector<double>(N * OC, 4);
  auto loss = [&] {
    Vec out(N * OC);
    linear_forward(out.data(), x.data(), w.data(), bias.data(), N, C, OC);
    return dot(out, R);
  };
  Vec dx(N * C, kPrefill), dw(OC * C, kPrefill), db(OC, kPrefill);
  linear_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), N, C, OC);
  EXPECT_TRUE(compare("dinp", minus(dx, kPrefill), numeric_grad(x, loss), kFdTol));
  EXPECT_TRUE(compare("dweight", minus(dw, kPrefill), numeric_grad(w, loss), kFdTol));
  EXPECT_TRUE(compare("dbias", minus(db, kPrefill), numeric_grad(bias, loss), kFdTol));

  // Without bias, dinp and dbias may be null.
  Vec out_nb(N * OC), out_b(N * OC), dw2(OC * C, 0.0);
  linear_forward(out_nb.data(), x.data(), w.data(), static_cast<const double*>(nullptr), N, C, OC);
  linear_forward(out_b.data(), x.data(), w.data(), bias.data(), N, C, OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) out_nb[n * OC + o] += bias[o];
  EXPECT_TRUE(compare("out(no bias)+bias", out_nb, out_b, 1e-14));
  linear_backward(static_cast<double*>(nullptr), dw2.data(), static_cast<double*>(nullptr),
                  R.data(), x.data(), w.data(), N, C, OC);
  EXPECT_TRUE(compare("dweight(null dinp)", minus(dw, kPrefill), dw2, 1e-14));
}

TEST(GradCheck, RMSNorm) {
  const int N = 3, C = 8;
  const float eps = 1e-5f;
  Vec x = random_vector<double>(N * C, 5), w = random_vector<double>(C, 6, 0.5, 1.5),
      R = random_vector<double>(N * C, 7);
  auto loss = [&] {
    Vec out(N * C), rstd(N);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    return dot(out, R);
  };
  Vec out(N * C), rstd(N), dx(N * C, kPrefill), dw(C, kPrefill);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
  EXPECT_TRUE(compare("dinp", minus(dx, kPrefill), numeric_grad(x, loss), kFdTol));
  EXPECT_TRUE(compare("dweight", minus(dw, kPrefill), numeric_grad(w, loss), kFdTol));
}

TEST(GradCheck, RoPE) {
  const int S = 3, B = 2, NH = 2, HD = 8, pos0 = 5, max_pos = 16;
  std::vector<float> cosT(max_pos * HD / 2), sinT(max_pos * HD / 2);
  rope_table(cosT.data(), sinT.data(), max_pos, HD, 10000.0f);
  Vec x = random_vector<double>(S * B * NH * HD, 8), R = random_vector<double>(x.size(), 9);
  auto loss = [&] {
    Vec y(x);
    rope_forward(y.data(), cosT.data(), sinT.data(), S, B, NH, HD, pos0);
    return dot(y, R);
  };
  Vec dx(R);  // backward is in place on the gradient
  rope_backward(dx.data(), cosT.data(), sinT.data(), S, B, NH, HD, pos0);
  EXPECT_TRUE(compare("dx", dx, numeric_grad(x, loss), kFdTol));
}

TEST(GradCheck, SwiGLU) {
  const int64_t n = 40;
  Vec gate = random_vector<double>(n, 10, -6.0, 6.0), up = random_vector<double>(n, 11),
      R = random_vector<double>(n, 12);
  auto loss = [&] {
    Vec out(n);
    swiglu_forward(out.data(), gate.data(), up.data(), n);
    return dot(out, R);
  };
  Vec dgate(n, kPrefill), dup(n, kPrefill);
  swiglu_backward(dgate.data(), dup.data(), R.data(), gate.data(), up.data(), n);
  EXPECT_TRUE(compare("dgate", minus(dgate, kPrefill), numeric_grad(gate, loss), kFdTol));
  EXPECT_TRUE(compare("dup", minus(dup, kPrefill), numeric_grad(up, loss), kFdTol));
}

TEST(GradCheck, Embedding) {
  const int V = 5, N = 7, C = 3;
  const std::vector<int32_t> tokens = {0, 3, 3, 1, 4, 3, 0};  // repeats must sum
  Vec table = random_vector<double>(V * C, 13), R = random_vector<double>(N * C, 14);
  auto loss = [&] {
    Vec out(N * C);
    embedding_forward(out.data(), tokens.data(), table.data(), N, C);
    return dot(out, R);
  };
  Vec dtable(V * C, kPrefill);
  embedding_backward(dtable.data(), R.data(), tokens.data(), N, C);
  EXPECT_TRUE(compare("dtable", minus(dtable, kPrefill), numeric_grad(table, loss), kFdTol));
}

TEST(GradCheck, CrossEntropy) {
  const int N = 4, V = 7;
  const std::vector<int32_t> targets = {2, -1, 6, 0};  // row 1 ignored
  Vec logits = random_vector<double>(N * V, 15, -3.0, 3.0), R = random_vector<double>(N, 16);
  auto loss = [&] {
    Vec losses(N), lse(N);
    cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
    return dot(losses, R);
  };
  Vec losses(N), lse(N), dlogits(N * V, 123.0);  // written, not accumulated
  cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
  EXPECT_EQ(losses[1], 0.0);
  cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), R.data(), N, V);
  const Vec fd = numeric_grad(logits, loss);
  EXPECT_TRUE(compare("dlogits", dlogits, fd, kFdTol));
  // In place: dlogits == logits.
  Vec inplace(logits);
  cross_entropy_backward(inplace.data(), inplace.data(), lse.data(), targets.data(), R.data(), N,
                         V);
  EXPECT_TRUE(compare("dlogits(in place)", inplace, dlogits, 0.0));
}

// ---- Attention ------------------------------------------------------------------------------

struct AttnCase {
  const char* name;
  AttentionShape shape;
  bool keep_probs;
};

void attention_gradcheck(const AttnCase& c) {
  SCOPED_TRACE(c.name);
  const AttentionShape& s = c.shape;
  const size_t nq = static_cast<size_t>(s.SQ) * s.B * s.NH * s.HD;
  const size_t nk = static_cast<size_t>(s.SK) * s.B * s.NKV * s.HD;
  const size_t nlse = static_cast<size_t>(s.B) * s.NH * s.SQ;
  const size_t nprobs = nlse * s.SK;
  Vec q = random_vector<double>(nq, 20, -2.0, 2.0), k = random_vector<double>(nk, 21, -2.0, 2.0),
      v = random_vector<double>(nk, 22), R = random_vector<double>(nq, 23);
  auto loss = [&] {
    Vec out(nq), lse(nlse);
    attention_forward(out.data(), lse.data(), static_cast<double*>(nullptr), q.data(), k.data(),
                      v.data(), s);
    return dot(out, R);
  };
  Vec out(nq), lse(nlse), probs(c.keep_probs ? nprobs : 0);
  attention_forward(out.data(), lse.data(), c.keep_probs ? probs.data() : nullptr, q.data(),
                    k.data(), v.data(), s);
  for (double x : out) ASSERT_TRUE(std::isfinite(x));
  Vec dq(nq, kPrefill), dk(nk, kPrefill), dv(nk, kPrefill);
  attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(),
                     out.data(), lse.data(), c.keep_probs ? probs.data() : nullptr, s);
  EXPECT_TRUE(compare("dq", minus(dq, kPrefill), numeric_grad(q, loss), kFdTol));
  EXPECT_TRUE(compare("dk", minus(dk, kPrefill), numeric_grad(k, loss), kFdTol));
  EXPECT_TRUE(compare("dv", minus(dv, kPrefill), numeric_grad(v, loss), kFdTol));
}

TEST(GradCheck, AttentionNonCausalGQA) {
  attention_gradcheck({"non-causal GQA", {6, 6, 2, 4, 2, 4, false}, false});
  attention_gradcheck({"non-causal MHA probs", {5, 7, 2, 2, 2, 4, false}, true});
}

TEST(GradCheck, AttentionCausal) {
  attention_gradcheck({"causal GQA", {6, 6, 2, 4, 2, 4, true}, false});
  attention_gradcheck({"causal GQA probs", {6, 6, 2, 4, 2, 4, true}, true});
  attention_gradcheck({"causal MQA", {5, 5, 1, 4, 1, 6, true}, false});
}

TEST(GradCheck, AttentionShardOffsets) {
  // Queries at global positions 2..6, keys at 4..9: rows 0-1 see no key (fully masked rows),
  // the others a growing prefix of the shard.
  attention_gradcheck({"shard", {5, 6, 2, 4, 2, 4, true, 2, 4}, false});
  attention_gradcheck({"shard probs", {5, 6, 2, 4, 2, 4, true, 2, 4}, true});
  // Queries after all keys: every key visible.
  attention_gradcheck({"shard past keys", {4, 6, 1, 2, 1, 4, true, 10, 0}, false});
}

TEST(GradCheck, AttentionFullyMaskedShard) {
  // Every key is in the future of every query: lse = -inf, out = 0, all grads 0, no NaN.
  for (bool keep : {false, true}) {
    const AttentionShape s{3, 4, 2, 2, 1, 4, true, 0, 10};
    const size_t nq = 3 * 2 * 2 * 4, nk = 4 * 2 * 1 * 4, nlse = 2 * 2 * 3;
    Vec q = random_vector<double>(nq, 30), k = random_vector<double>(nk, 31),
        v = random_vector<double>(nk, 32), dout = random_vector<double>(nq, 33);
    Vec out(nq, 7.0), lse(nlse, 7.0), probs(keep ? nlse * 4 : 0, 7.0);
    attention_forward(out.data(), lse.data(), keep ? probs.data() : nullptr, q.data(), k.data(),
                      v.data(), s);
    for (double x : out) EXPECT_EQ(x, 0.0);
    for (double x : lse) EXPECT_TRUE(std::isinf(x) && x < 0) << x;
    for (double x : probs) EXPECT_EQ(x, 0.0);
    Vec dq(nq, 0.0), dk(nk, 0.0), dv(nk, 0.0);
    attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                       out.data(), lse.data(), keep ? probs.data() : nullptr, s);
    for (const Vec* g : {&dq, &dk, &dv})
      for (double x : *g) EXPECT_EQ(x, 0.0);
  }
}

// Two KV shards combined by lse (as tree / ring attention do) must equal single-shard attention,
// and the backward of each shard with the global lse and the combined out/dout must give the
// full dq (summed over shards) and the full dk, dv (concatenated). Exact math in double: 1e-12.
TEST(GradCheck, AttentionShardsWithGlobalLse) {
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "non-causal");
    const int SQ = 6, SK = 6, B = 2, NH = 4, NKV = 2, HD = 4, split = 4;
    const AttentionShape full{SQ, SK, B, NH, NKV, HD, causal};
    const size_t nq = SQ * B * NH * HD, row = B * NKV * HD, nk = SK * row, nlse = B * NH * SQ;
    Vec q = random_vector<double>(nq, 40), k = random_vector<double>(nk, 41),
        v = random_vector<double>(nk, 42), dout = random_vector<double>(nq, 43);
    Vec out(nq), lse(nlse), dq(nq, 0.0), dk(nk, 0.0), dv(nk, 0.0);
    attention_forward(out.data(), lse.data(), static_cast<double*>(nullptr), q.data(), k.data(),
                      v.data(), full);
    attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                       out.data(), lse.data(), static_cast<const double*>(nullptr), full);

    // Shards: keys [0, split) and [split, SK), the second with k_pos0 = split.
    const AttentionShape s0{SQ, split, B, NH, NKV, HD, causal, 0, 0};
    const AttentionShape s1{SQ, SK - split, B, NH, NKV, HD, causal, 0, split};
    Vec o0(nq), l0(nlse), o1(nq), l1(nlse);
    attention_forward(o0.data(), l0.data(), static_cast<double*>(nullptr), q.data(), k.data(),
                      v.data(), s0);
    attention_forward(o1.data(), l1.data(), static_cast<double*>(nullptr), q.data(),
                      k.data() + split * row, v.data() + split * row, s1);
    Vec comb(nq), glse(nlse);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < NH; ++h)
        for (int i = 0; i < SQ; ++i) {
          const size_t li = (static_cast<size_t>(b) * NH + h) * SQ + i;
          const double M = std::max(l0[li], l1[li]);
          const double w0 = std::isinf(l0[li]) ? 0 : std::exp(l0[li] - M);
          const double w1 = std::isinf(l1[li]) ? 0 : std::exp(l1[li] - M);
          glse[li] = M + std::log(w0 + w1);
          for (int d = 0; d < HD; ++d) {
            const size_t oi = ((static_cast<size_t>(i) * B + b) * NH + h) * HD + d;
            comb[oi] = (o0[oi] * w0 + o1[oi] * w1) / (w0 + w1);
          }
        }
    EXPECT_TRUE(compare("combined out", comb, out, 1e-12));
    EXPECT_TRUE(compare("global lse", glse, lse, 1e-12));
    Vec sdq(nq, 0.0), sdk(nk, 0.0), sdv(nk, 0.0);
    attention_backward(sdq.data(), sdk.data(), sdv.data(), dout.data(), q.data(), k.data(),
                       v.data(), comb.data(), glse.data(), static_cast<const double*>(nullptr), s0);
    attention_backward(sdq.data(), sdk.data() + split * row, sdv.data() + split * row, dout.data(),
                       q.data(), k.data() + split * row, v.data() + split * row, comb.data(),
                       glse.data(), static_cast<const double*>(nullptr), s1);
    EXPECT_TRUE(compare("dq (sum of shards)", sdq, dq, 1e-12));
    EXPECT_TRUE(compare("dk (concat of shards)", sdk, dk, 1e-12));
    EXPECT_TRUE(compare("dv (concat of shards)", sdv, dv, 1e-12));
  }
}

}  // namespace
}  // namespace grove::cpu
