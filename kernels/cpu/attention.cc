// Attention forward/backward (softmax(Q K^T * scale) V), GEMMs per (batch, head).
//
// Legend: SQ queries, SK keys, B batch, NH query heads, NKV kv heads, HD head dim, G = NH/NKV,
// QB query block. q/out: [SQ, B, NH, HD], k/v: [SK, B, NKV, HD], lse: [B, NH, SQ],
// probs: [B, NH, SQ, SK]. A (b, h) slice is read in place as a strided matrix: row stride
// B*NH*HD for q/out/dout, B*NKV*HD for k/v, so no transposed copies are made.
//
// Queries are processed in blocks of QB rows; with a causal mask a block only multiplies the
// keys some of its rows can see (about half the work at SQ == SK).
//
// Scratch (documented exception to "kernels never allocate"): once per call, each OpenMP thread
// allocates QB*SK elements for the score block (forward, only when probs == nullptr) and
// 2*QB*SK for P and dP (backward). Never O(SQ*SK*B*NH).
//
// Backward (FlashAttention-2): P = exp(S*scale - lse) (or probs), dV += P^T dO, dP = dO V^T,
// D_i = rowsum(dO_i * O_i), dS = P * (dP - D), dQ += scale dS K, dK += scale dS^T Q.
// With a global lse (several KV shards) and the combined out/dout, this yields the shard's dK, dV
// and its contribution to dQ. probs, when given, must equal exp(S*scale - lse) for the lse
// passed (i.e. the forward was not combined); pass nullptr with a combined lse.
// The backward parallelises over (batch, kv head) so the G query heads that share a kv head
// accumulate dK, dV in one thread (no race, deterministic).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {

namespace {

constexpr int kQueryBlock = 64;

// Keys [0, result) visible to query i, result clamped to [0, nk].
inline int visible_keys(const AttentionShape& s, int i, int nk) {
  if (!s.causal) return nk;
  const int64_t lim = static_cast<int64_t>(s.q_pos0) + i - s.k_pos0 + 1;
  return static_cast<int>(std::clamp<int64_t>(lim, 0, nk));
}

void check_shape(const AttentionShape& s) {
  GROVE_CHECK(s.SQ >= 0 && s.SK >= 0 && s.B >= 0 && s.HD > 0)
      << "attention shape SQ=" << s.SQ << " SK=" << s.SK << " B=" << s.B << " HD=" << s.HD;
  GROVE_CHECK(s.NKV > 0 && s.NH % s.NKV == 0)
      << "attention: NH=" << s.NH << " is not a multiple of NKV=" << s.NKV;
}

}  // namespace

template <typename T>
GROVE_CPU_CLONES void attention_forward(T* out, T* lse, T* probs, const T* q, const T* k,
                                        const T* v, const AttentionShape& shape) {
  check_shape(shape);
  const AttentionShape& s = shape;
  const int G = s.NH / s.NKV;
  const int64_t ldq = static_cast<int64_t>(s.B) * s.NH * s.HD;
  const int64_t ldk = static_cast<int64_t>(s.B) * s.NKV * s.HD;
  const T scale = T(1) / std::sqrt(T(s.HD));
  const int units = s.B * s.NH;

#pragma omp parallel if (int64_t{units} * s.SQ * s.SK * s.HD >= detail::kMinParallelWork)
  {
    std::vector<T> scratch(probs == nullptr ? static_cast<size_t>(kQueryBlock) * s.SK : 0);
#pragma omp for schedule(dynamic, 1)
    for (int u = 0; u < units; ++u) {
      const int b = u / s.NH, h = u % s.NH, kvh = h / G;
      const T* qbh = q + (static_cast<int64_t>(b) * s.NH + h) * s.HD;
      T* obh = out + (static_cast<int64_t>(b) * s.NH + h) * s.HD;
      const T* kbh = k + (static_cast<int64_t>(b) * s.NKV + kvh) * s.HD;
      const T* vbh = v + (static_cast<int64_t>(b) * s.NKV + kvh) * s.HD;
      T* lse_bh = lse + static_cast<int64_t>(u) * s.SQ;
      T* probs_bh = probs ? probs + static_cast<int64_t>(u) * s.SQ * s.SK : nullptr;

      for (int i0 = 0; i0 < s.SQ; i0 += kQueryBlock) {
        const int qb = std::min(kQueryBlock, s.SQ - i0);
        const int nk = visible_keys(s, i0 + qb - 1, s.SK);
        T* P = probs_bh ? probs_bh + static_cast<int64_t>(i0) * s.SK : scratch.data();
        const int ldp = s.SK;
        if (nk > 0) {
          gemm<T>(false, true, qb, nk, s.HD, scale, qbh + i0 * ldq, static_cast<int>(ldq), kbh,
                  static_cast<int>(ldk), T(0), P, ldp);
        }
        for (int r = 0; r < qb; ++r) {
          T* p = P + static_cast<int64_t>(r) * ldp;
          const int lim = visible_keys(s, i0 + r, nk);
          if (lim == 0) {
            lse_bh[i0 + r] = -INFINITY;
            std::fill(p, p + nk, T(0));
          } else {
            const T m = detail::row_max(p, lim);
            T sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int j = 0; j < lim; ++j) {
              const T e = detail::exp_approx<T>(p[j] - m);
              p[j] = e;
              sum += e;
            }
            const T inv = T(1) / sum;
#pragma omp simd
            for (int j = 0; j < lim; ++j) p[j] *= inv;
            std::fill(p + lim, p + nk, T(0));
            lse_bh[i0 + r] = m + std::log(sum);
          }
          if (probs_bh) std::fill(p + nk, p + s.SK, T(0));
        }
        T* ob = obh + i0 * ldq;
        if (nk > 0) {
          gemm<T>(false, false, qb, s.HD, nk, T(1), P, ldp, vbh, static_cast<int>(ldk), T(0), ob,
                  static_cast<int>(ldq));
        } else {
          for (int r = 0; r < qb; ++r) std::fill(ob + r * ldq, ob + r * ldq + s.HD, T(0));
        }
      }
    }
  }
}

template <typename T>
GROVE_CPU_CLONES void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                                         const T* v, const T* out, const T* lse, const T* probs,
                                         const AttentionShape& shape) {
  check_shape(shape);
  const AttentionShape& s = shape;
  const int G = s.NH / s.NKV;
  const int64_t ldq = static_cast<int64_t>(s.B) * s.NH * s.HD;
  const int64_t ldk = static_cast<int64_t>(s.B) * s.NKV * s.HD;
  const int ildq = static_cast<int>(ldq), ildk = static_cast<int>(ldk);
  const T scale = T(1) / std::sqrt(T(s.HD));
  const int units = s.B * s.NKV;

#pragma omp parallel if (int64_t{units} * s.SQ * s.SK * s.HD >= detail::kMinParallelWork)
  {
    std::vector<T> p_scratch(probs == nullptr ? static_cast<size_t>(kQueryBlock) * s.SK : 0);
    std::vector<T> dp_scratch(static_cast<size_t>(kQueryBlock) * s.SK);
#pragma omp for schedule(dynamic, 1)
    for (int u = 0; u < units; ++u) {
      const int b = u / s.NKV, kvh = u % s.NKV;
      const int64_t kv_off = (static_cast<int64_t>(b) * s.NKV + kvh) * s.HD;
      const T* kbh = k + kv_off;
      const T* vbh = v + kv_off;
      T* dkbh = dk + kv_off;
      T* dvbh = dv + kv_off;
      for (int h = kvh * G; h < (kvh + 1) * G; ++h) {
        const int64_t q_off = (static_cast<int64_t>(b) * s.NH + h) * s.HD;
        const int64_t bh = static_cast<int64_t>(b) * s.NH + h;
        const T* lse_bh = lse + bh * s.SQ;
        for (int i0 = 0; i0 < s.SQ; i0 += kQueryBlock) {
          const int qb = std::min(kQueryBlock, s.SQ - i0);
          const int nk = visible_keys(s, i0 + qb - 1, s.SK);
          if (nk == 0) continue;
          const T* qb_ptr = q + q_off + i0 * ldq;
          const T* ob_ptr = out + q_off + i0 * ldq;
          const T* dob_ptr = dout + q_off + i0 * ldq;
          const int ldp = s.SK;
          const T* P;
          if (probs != nullptr) {
            P = probs + (bh * s.SQ + i0) * s.SK;
          } else {
            T* Pw = p_scratch.data();
            gemm<T>(false, true, qb, nk, s.HD, scale, qb_ptr, ildq, kbh, ildk, T(0), Pw, ldp);
            for (int r = 0; r < qb; ++r) {
              T* p = Pw + static_cast<int64_t>(r) * ldp;
              const T l = lse_bh[i0 + r];
              const int lim = std::isinf(l) ? 0 : visible_keys(s, i0 + r, nk);
#pragma omp simd
              for (int j = 0; j < lim; ++j) p[j] = detail::exp_approx<T>(p[j] - l);
              std::fill(p + lim, p + nk, T(0));
            }
            P = Pw;
          }
          // dV += P^T dO
          gemm<T>(true, false, nk, s.HD, qb, T(1), P, ldp, dob_ptr, ildq, T(1), dvbh, ildk);
          // dP = dO V^T, then dS = P * (dP - D) in place.
          T* dS = dp_scratch.data();
          gemm<T>(false, true, qb, nk, s.HD, T(1), dob_ptr, ildq, vbh, ildk, T(0), dS, ldp);
          for (int r = 0; r < qb; ++r) {
            const T* o = ob_ptr + r * ldq;
            const T* dor = dob_ptr + r * ldq;
            T D = 0;
#pragma omp simd reduction(+ : D)
            for (int d = 0; d < s.HD; ++d) D += o[d] * dor[d];
            const T* p = P + static_cast<int64_t>(r) * ldp;
            T* ds = dS + static_cast<int64_t>(r) * ldp;
#pragma omp simd
            for (int j = 0; j < nk; ++j) ds[j] = p[j] * (ds[j] - D);
          }
          // dQ += scale dS K;  dK += scale dS^T Q
          gemm<T>(false, false, qb, s.HD, nk, scale, dS, ldp, kbh, ildk, T(1),
                  dq + q_off + i0 * ldq, ildq);
          gemm<T>(true, false, nk, s.HD, qb, scale, dS, ldp, qb_ptr, ildq, T(1), dkbh, ildk);
        }
      }
    }
  }
}

// ---- Merge of partial results (see ops.h) -----------------------------------------------------
// One row (b, h, i) at a time; the weights are computed once per row in acc_t<T> (std::exp of a
// float is expf: the same bits as the host merges these kernels replace), then the HD loop only
// multiplies and adds. Rows are independent, so OpenMP does not change any bit.

template <typename T>
void attention_merge(T* out, acc_t<T>* lse, const T* part_out, const acc_t<T>* part_lse, int SQ,
                     int B, int NH, int HD, int row0, int SQp) {
  using A = acc_t<T>;
  GROVE_CHECK(row0 >= 0 && SQp >= 0 && row0 + SQp <= SQ)
      << "attention_merge: rows [" << row0 << ", " << row0 + SQp << ") outside [0, " << SQ << ")";
  const int64_t rows = int64_t{B} * NH * SQp;
#pragma omp parallel for schedule(static) if (rows * HD >= detail::kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t bh = r / SQp;
    const int i = static_cast<int>(r % SQp);
    A& la = lse[bh * SQ + row0 + i];
    const A lb = part_lse[bh * SQp + i];
    const A m = std::max(la, lb);
    if (m == -std::numeric_limits<A>::infinity()) continue;  // both empty: unchanged
    const A wa = std::exp(la - m), wb = std::exp(lb - m);    // exp(-inf) = 0, never NaN here
    const A sum = wa + wb, inv = A(1) / sum;
    const int64_t b = bh / NH, h = bh % NH;
    T* oa = out + ((int64_t{row0 + i} * B + b) * NH + h) * HD;
    const T* ob = part_out + ((int64_t{i} * B + b) * NH + h) * HD;
    for (int d = 0; d < HD; ++d) oa[d] = (oa[d] * wa + ob[d] * wb) * inv;
    la = m + std::log(sum);
  }
}

template <typename T>
void attention_merge_scale(T* num, acc_t<T>* den, const T* out, const acc_t<T>* lse,
                           const acc_t<T>* lse_max, int SQ, int B, int NH, int HD) {
  using A = acc_t<T>;
  const int64_t rows = int64_t{B} * NH * SQ;
#pragma omp parallel for schedule(static) if (rows * HD >= detail::kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {  // r = (b·NH + h)·SQ + i, the lse layout
    const A w =
        lse[r] == -std::numeric_limits<A>::infinity() ? A(0) : std::exp(lse[r] - lse_max[r]);
    den[r] = w;
    const int64_t bh = r / SQ, i = r % SQ;
    const int64_t o = ((i * B + bh / NH) * NH + bh % NH) * HD;
    for (int d = 0; d < HD; ++d) num[o + d] = out[o + d] * w;
  }
}

template <typename T>
void attention_merge_finish(T* out, acc_t<T>* lse, const T* num, const acc_t<T>* den,
                            const acc_t<T>* lse_max, int SQ, int B, int NH, int HD) {
  using A = acc_t<T>;
  const int64_t rows = int64_t{B} * NH * SQ;
#pragma omp parallel for schedule(static) if (rows * HD >= detail::kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const A d = den[r], m = lse_max[r];
    const A inv = d > 0 ? A(1) / d : A(0);
    const int64_t bh = r / SQ, i = r % SQ;
    const int64_t o = ((i * B + bh / NH) * NH + bh % NH) * HD;
    for (int c = 0; c < HD; ++c) out[o + c] = num[o + c] * inv;
    lse[r] = d > 0 ? m + std::log(d) : -std::numeric_limits<A>::infinity();
  }
}

#define GROVE_INSTANTIATE(T)                                                                     \
  template void attention_forward<T>(T*, T*, T*, const T*, const T*, const T*,                   \
                                     const AttentionShape&);                                     \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                      const T*, const T*, const T*, const AttentionShape&);      \
  template void attention_merge<T>(T*, acc_t<T>*, const T*, const acc_t<T>*, int, int, int, int, \
                                   int, int);                                                    \
  template void attention_merge_scale<T>(T*, acc_t<T>*, const T*, const acc_t<T>*,               \
                                         const acc_t<T>*, int, int, int, int);                   \
  template void attention_merge_finish<T>(T*, acc_t<T>*, const T*, const acc_t<T>*,              \
                                          const acc_t<T>*, int, int, int, int);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

}  // namespace grove::cpu
