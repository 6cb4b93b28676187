#include "parallel/cp_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"
#include "parallel/ring_attention.h"
#include "parallel/tree_attention.h"

namespace grove::parallel {

namespace k = grove::cpu;

namespace {

int log2_ceil(int p) {
  int r = 0;
  while ((1 << r) < p) ++r;
  return r;
}

// Whether a causal (q segment, k segment) pair is fully masked, or needs no mask at all.
bool fully_masked(const Segment& q, const Segment& kk) {
  return kk.pos0 > q.pos0 + q.rows - 1;
}
bool unmasked(const Segment& q, const Segment& kk) {
  return kk.pos0 + kk.rows - 1 <= q.pos0;
}
}  // namespace

void CommStats::all_gather(int p, int64_t elems) {
  if (p <= 1) return;
  bytes += double(p - 1) * elems * sizeof(float);
  rounds += log2_ceil(p);
}
void CommStats::reduce_scatter(int p, int64_t elems) {
  if (p <= 1) return;
  bytes += double(p - 1) * elems * sizeof(float);
  rounds += log2_ceil(p);
}
void CommStats::all_reduce(int p, int64_t elems) {
  if (p <= 1) return;
  bytes += 2.0 * (p - 1) / p * elems * sizeof(float);
  rounds += log2_ceil(p);
}
void CommStats::broadcast(int p, int64_t elems) {
  if (p <= 1) return;
  bytes += double(p - 1) / p * elems * sizeof(float);
  rounds += log2_ceil(p);
}
void CommStats::send(int64_t elems) {
  bytes += double(elems) * sizeof(float);
  rounds += 1;
}

void zigzag_segments(Segment out[2], int S, int p, int rank) {
  const int c = S / (2 * p);
  out[0] = Segment{0, c, rank * c};
  out[1] = Segment{c, c, (2 * p - 1 - rank) * c};
}

int64_t partial_scratch_elems(int SQ, int B, int NH, int HD) {
  return int64_t(SQ) * B * NH * HD + int64_t(B) * NH * SQ;
}

void partial_attention_forward(float* o, float* lse, const float* q, int SQ,
                               std::span<const Segment> qs, const float* k, const float* v, int SK,
                               std::span<const Segment> ks, int B, int NH, int NKV, int HD,
                               bool causal, float* scratch) {
  // Without a mask positions do not matter: one kernel call over all rows.
  const Segment all_q{0, SQ, 0}, all_k{0, SK, 0};
  if (!causal) {
    qs = std::span<const Segment>(&all_q, 1);
    ks = std::span<const Segment>(&all_k, 1);
  }
  const int64_t qrow = int64_t(B) * NH * HD, krow = int64_t(B) * NKV * HD;
  for (const Segment& sq : qs) {
    if (sq.rows == 0) continue;
    float* ot = scratch;
    float* lt = scratch + int64_t(sq.rows) * qrow;  // [B, NH, rows]
    for (const Segment& sk : ks) {
      if (sk.rows == 0 || (causal && fully_masked(sq, sk))) continue;
      const bool mask = causal && !unmasked(sq, sk);
      k::AttentionShape shape{sq.rows, sk.rows, B, NH, NKV, HD, mask, sq.pos0, sk.pos0};
      k::attention_forward<float>(ot, lt, nullptr, q + sq.row0 * qrow, k + sk.row0 * krow,
                                  v + sk.row0 * krow, shape);
      k::attention_merge<float>(o, lse, ot, lt, SQ, B, NH, HD, sq.row0, sq.rows);
    }
  }
}

void partial_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                const float* out, const float* lse, int SQ,
                                std::span<const Segment> qs, const float* k, const float* v, int SK,
                                std::span<const Segment> ks, int B, int NH, int NKV, int HD,
                                bool causal, float* scratch) {
  const Segment all_q{0, SQ, 0}, all_k{0, SK, 0};
  if (!causal) {
    qs = std::span<const Segment>(&all_q, 1);
    ks = std::span<const Segment>(&all_k, 1);
  }
  const int64_t qrow = int64_t(B) * NH * HD, krow = int64_t(B) * NKV * HD;
  for (const Segment& sq : qs) {
    if (sq.rows == 0) continue;
    // The kernel wants the lse of exactly these rows, [B, NH, rows].
    const float* l = lse;
    if (sq.rows != SQ) {
      for (int64_t bh = 0; bh < int64_t(B) * NH; ++bh)
        std::memcpy(scratch + bh * sq.rows, lse + bh * SQ + sq.row0, sizeof(float) * sq.rows);
      l = scratch;
    }
    for (const Segment& sk : ks) {
      if (sk.rows == 0 || (causal && fully_masked(sq, sk))) continue;
      const bool mask = causal && !unmasked(sq, sk);
      k::AttentionShape shape{sq.rows, sk.rows, B, NH, NKV, HD, mask, sq.pos0, sk.pos0};
      const int64_t qo = sq.row0 * qrow, ko = sk.row0 * krow;
      k::attention_backward<float>(dq + qo, dk + ko, dv + ko, dout + qo, q + qo, k + ko, v + ko,
                                   out + qo, l, nullptr, shape);
    }
  }
}

int64_t cp_workspace_elems(CpAttention a, const CpAttentionShape& s, int p) {
  return a == CpAttention::kTree ? tree_workspace_elems(s, p) : ring_workspace_elems(s, p);
}

void cp_attention_forward(CpAttention a, comm::Communicator& cp, const CpAttentionShape& s,
                          float* out, float* lse, const float* q, const float* k, const float* v,
                          float* workspace, CommStats* stats) {
  if (a == CpAttention::kTree)
    tree_attention_forward(cp, s, out, lse, q, k, v, workspace, stats);
  else
    ring_attention_forward(cp, s, out, lse, q, k, v, workspace, stats);
}

void cp_attention_backward(CpAttention a, comm::Communicator& cp, const CpAttentionShape& s,
                           float* dq, float* dk, float* dv, const float* dout, const float* q,
                           const float* k, const float* v, const float* out, const float* lse,
                           float* workspace, CommStats* stats) {
  if (a == CpAttention::kTree)
    tree_attention_backward(cp, s, dq, dk, dv, dout, q, k, v, out, lse, workspace, stats);
  else
    ring_attention_backward(cp, s, dq, dk, dv, dout, q, k, v, out, lse, workspace, stats);
}

ContextAttention::ContextAttention(CpAttention algo, comm::Communicator* cp,
                                   const CpAttentionShape& shape)
    : algo_(algo), cp_(cp), shape_(shape) {
  const int p = cp_size();
  GROVE_CHECK(shape.S > 0 && (!cp_ || shape.S % (2 * p) == 0))
      << "context-parallel attention: sequence " << shape.S
      << " is not a multiple of 2*cp = " << 2 * p;
  GROVE_CHECK(shape.NKV > 0 && shape.NH % shape.NKV == 0)
      << "context-parallel attention: " << shape.NKV << " kv heads do not divide " << shape.NH
      << " heads";
  if (cp_) ws_ = Tensor::empty({cp_workspace_elems(algo, shape, p)});
}

void ContextAttention::forward(float* out, float* lse, const float* q, const float* k,
                               const float* v) {
  const CpAttentionShape& s = shape_;
  if (!cp_) {
    cpu::attention_forward<float>(out, lse, nullptr, q, k, v,
                                  {s.S, s.S, s.B, s.NH, s.NKV, s.HD, s.causal});
    return;
  }
  cp_attention_forward(algo_, *cp_, shape_, out, lse, q, k, v, ws_.data<float>(), &stats_);
}

void ContextAttention::backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                const float* k, const float* v, const float* out,
                                const float* lse) {
  const CpAttentionShape& s = shape_;
  if (!cp_) {
    cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v, out, lse, nullptr,
                                   {s.S, s.S, s.B, s.NH, s.NKV, s.HD, s.causal});
    return;
  }
  cp_attention_backward(algo_, *cp_, shape_, dq, dk, dv, dout, q, k, v, out, lse, ws_.data<float>(),
                        &stats_);
}

}  // namespace grove::parallel
