// The definitions of context-parallel attention on a kernel backend (parallel/cp_attention.h,
// tree_attention.h, ring_attention.h), included by the translation units that instantiate a
// backend: parallel/cp_attention.cc (CpuBackend) and model/cuda/cuda_transformer.cc
// (CudaBackend<float>, CudaBackend<bf16>). Every buffer is in B's memory; the only host work is
// the loops over segments and ranks.
#pragma once

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/kernel_types.h"
#include "parallel/backend_collectives.h"
#include "parallel/cp_attention.h"
#include "parallel/ring_attention.h"
#include "parallel/tree_attention.h"

namespace grove::parallel {

namespace cp_detail {

// Whether a causal (q segment, k segment) pair is fully masked, or needs no mask at all.
inline bool fully_masked(const Segment& q, const Segment& kk) {
  return kk.pos0 > q.pos0 + q.rows - 1;
}
inline bool unmasked(const Segment& q, const Segment& kk) {
  return kk.pos0 + kk.rows - 1 <= q.pos0;
}

struct Sizes {
  int p, Sl;
  int64_t Eq, El, Ekv;  // one shard of q-shaped data, of lse, of k-shaped data
  Sizes(const CpAttentionShape& s, int p_) : p(p_), Sl(s.S / p_) {
    Eq = int64_t(Sl) * s.B * s.NH * s.HD;
    El = int64_t(s.B) * s.NH * Sl;
    Ekv = int64_t(Sl) * s.B * s.NKV * s.HD;
  }
};

template <class B>
constexpr int kElemBytes = int(sizeof(typename B::T));

// fp32 activations: the tree's numerators and weights share one buffer per rank block
// ([Eq | El] floats) and one reduce-scatter; otherwise they are two arrays and two collectives.
template <class B>
constexpr bool kPackedTree = std::is_same_v<typename B::T, float>;

// The tree forward's workspace (the same carving sizes it and uses it).
template <class B>
struct TreeForward {
  using T = typename B::T;
  T* qall;     // [p][Eq]   every rank's queries
  T* num;      // numerators of block j at num + j * num_stride
  float* den;  // weights of block j at den + j * den_stride
  int64_t num_stride, den_stride;
  float* lse_i;  // [p][El]   this rank's partial lse against its keys
  float* m;      // [p][El]   global max
  T* recv_num;   // [Eq]      this rank's combined block
  float* recv_den;
  void* scratch;  // partial_forward_scratch_bytes
  int64_t bytes;
  TreeForward(void* ws, const CpAttentionShape& s, int p) {
    const Sizes z(s, p);
    WorkspaceCarver c(ws);
    qall = c.take<T>(p * z.Eq);
    if constexpr (kPackedTree<B>) {
      float* packed = c.take<float>(p * (z.Eq + z.El));
      num = packed;
      den = packed + z.Eq;
      num_stride = den_stride = z.Eq + z.El;
      float* recv = c.take<float>(z.Eq + z.El);
      recv_num = recv;
      recv_den = recv + z.Eq;
    } else {
      num = c.take<T>(p * z.Eq);
      den = c.take<float>(p * z.El);
      num_stride = z.Eq;
      den_stride = z.El;
      recv_num = c.take<T>(z.Eq);
      recv_den = c.take<float>(z.El);
    }
    lse_i = c.take<float>(p * z.El);
    m = c.take<float>(p * z.El);
    scratch = c.take<std::byte>(partial_forward_scratch_bytes<B>(z.Sl, s.B, s.NH, s.HD));
    bytes = c.used();
  }
};

template <class B>
struct TreeBackward {
  using T = typename B::T;
  T *qall, *dout_all, *out_all;  // [p][Eq]
  float* lse_all;                // [p][El]
  T* dq_all;                     // [p][Eq] this rank's dQ contributions to every rank's queries
  T* recv;                       // [Eq]
  float* scratch;                // [El]
  int64_t bytes;
  TreeBackward(void* ws, const CpAttentionShape& s, int p) {
    const Sizes z(s, p);
    WorkspaceCarver c(ws);
    qall = c.take<T>(p * z.Eq);
    dout_all = c.take<T>(p * z.Eq);
    out_all = c.take<T>(p * z.Eq);
    lse_all = c.take<float>(p * z.El);
    dq_all = c.take<T>(p * z.Eq);
    recv = c.take<T>(z.Eq);
    scratch = c.take<float>(z.El);
    bytes = c.used();
  }
};

template <class B>
struct RingForward {
  using T = typename B::T;
  T* buf[2];  // [k | v] of the block in hand, of the next block
  void* scratch;
  int64_t bytes;
  RingForward(void* ws, const CpAttentionShape& s, int p) {
    const Sizes z(s, p);
    WorkspaceCarver c(ws);
    buf[0] = c.take<T>(2 * z.Ekv);
    buf[1] = c.take<T>(2 * z.Ekv);
    scratch = c.take<std::byte>(partial_forward_scratch_bytes<B>(z.Sl, s.B, s.NH, s.HD));
    bytes = c.used();
  }
};

template <class B>
struct RingBackward {
  using T = typename B::T;
  T* buf[2];  // [k | v | dk | dv] of the block in hand, of the next block
  float* scratch;
  int64_t bytes;
  RingBackward(void* ws, const CpAttentionShape& s, int p) {
    const Sizes z(s, p);
    WorkspaceCarver c(ws);
    buf[0] = c.take<T>(4 * z.Ekv);
    buf[1] = c.take<T>(4 * z.Ekv);
    scratch = c.take<float>(z.El);
    bytes = c.used();
  }
};

}  // namespace cp_detail

// ---- Building blocks ------------------------------------------------------------------------

template <class B>
int64_t partial_forward_scratch_bytes(int SQ, int Bt, int NH, int HD) {
  WorkspaceCarver c(nullptr);
  c.take<typename B::T>(int64_t(SQ) * Bt * NH * HD);
  c.take<float>(int64_t(Bt) * NH * SQ);
  return c.used();
}

template <class B>
void partial_attention_forward(typename B::T* o, float* lse, const typename B::T* q, int SQ,
                               std::span<const Segment> qs, const typename B::T* k,
                               const typename B::T* v, int SK, std::span<const Segment> ks, int Bt,
                               int NH, int NKV, int HD, bool causal, void* scratch) {
  using T = typename B::T;
  // Without a mask positions do not matter: one kernel call over all rows.
  const Segment all_q{0, SQ, 0}, all_k{0, SK, 0};
  if (!causal) {
    qs = std::span<const Segment>(&all_q, 1);
    ks = std::span<const Segment>(&all_k, 1);
  }
  const int64_t qrow = int64_t(Bt) * NH * HD, krow = int64_t(Bt) * NKV * HD;
  WorkspaceCarver c(scratch);
  T* ot = c.take<T>(int64_t(SQ) * qrow);
  float* lt = c.take<float>(int64_t(Bt) * NH * SQ);  // [B, NH, rows]
  for (const Segment& sq : qs) {
    if (sq.rows == 0) continue;
    for (const Segment& sk : ks) {
      if (sk.rows == 0 || (causal && cp_detail::fully_masked(sq, sk))) continue;
      const bool mask = causal && !cp_detail::unmasked(sq, sk);
      const kernels::AttentionShape shape{sq.rows, sk.rows, Bt,      NH,     NKV,
                                          HD,      mask,    sq.pos0, sk.pos0};
      B::attention_forward(ot, lt, nullptr, q + sq.row0 * qrow, k + sk.row0 * krow,
                           v + sk.row0 * krow, shape);
      B::attention_merge(o, lse, ot, lt, SQ, Bt, NH, HD, sq.row0, sq.rows);
    }
  }
}

template <class B>
void partial_attention_backward(typename B::T* dq, typename B::T* dk, typename B::T* dv,
                                const typename B::T* dout, const typename B::T* q,
                                const typename B::T* out, const float* lse, int SQ,
                                std::span<const Segment> qs, const typename B::T* k,
                                const typename B::T* v, int SK, std::span<const Segment> ks, int Bt,
                                int NH, int NKV, int HD, bool causal, float* scratch) {
  const Segment all_q{0, SQ, 0}, all_k{0, SK, 0};
  if (!causal) {
    qs = std::span<const Segment>(&all_q, 1);
    ks = std::span<const Segment>(&all_k, 1);
  }
  const int64_t qrow = int64_t(Bt) * NH * HD, krow = int64_t(Bt) * NKV * HD;
  for (const Segment& sq : qs) {
    if (sq.rows == 0) continue;
    // The kernel wants the lse of exactly these rows, [B, NH, rows]: a strided copy.
    const float* l = lse;
    if (sq.rows != SQ) {
      B::copy_2d(scratch, sizeof(float) * sq.rows, lse + sq.row0, sizeof(float) * SQ,
                 sizeof(float) * sq.rows, size_t(Bt) * NH);
      l = scratch;
    }
    for (const Segment& sk : ks) {
      if (sk.rows == 0 || (causal && cp_detail::fully_masked(sq, sk))) continue;
      const bool mask = causal && !cp_detail::unmasked(sq, sk);
      const kernels::AttentionShape shape{sq.rows, sk.rows, Bt,      NH,     NKV,
                                          HD,      mask,    sq.pos0, sk.pos0};
      const int64_t qo = sq.row0 * qrow, ko = sk.row0 * krow;
      B::attention_backward(dq + qo, dk + ko, dv + ko, dout + qo, q + qo, k + ko, v + ko, out + qo,
                            l, nullptr, shape);
    }
  }
}

// ---- Tree attention -------------------------------------------------------------------------

template <class B>
int64_t tree_workspace_bytes(const CpAttentionShape& s, int p) {
  return std::max(cp_detail::TreeForward<B>(nullptr, s, p).bytes,
                  cp_detail::TreeBackward<B>(nullptr, s, p).bytes);
}

template <class B>
void tree_attention_forward(comm::Communicator& cp, const CpAttentionShape& s, typename B::T* out,
                            float* lse, const typename B::T* q, const typename B::T* k,
                            const typename B::T* v, const CpScratch& ws, CommStats* stats) {
  using T = typename B::T;
  const cp_detail::Sizes z(s, cp.size());
  const int p = z.p, r = cp.rank(), Sl = z.Sl, Bt = s.B, NH = s.NH, HD = s.HD;
  const int64_t Eq = z.Eq, El = z.El;
  const int eb = cp_detail::kElemBytes<B>;
  const cp_detail::TreeForward<B> w(ws.workspace, s, p);

  all_gather<B>(&cp, q, w.qall, Eq, B::kDType);
  if (stats) stats->all_gather(p, Eq, eb);

  // Partials of every query block against the local K/V (two zigzag chunks).
  Segment ks[2], qs[2];
  zigzag_segments(ks, s.S, p, r);
  for (int j = 0; j < p; ++j) {
    T* num = w.num + j * w.num_stride;
    B::zero(num, sizeof(T) * Eq);
    B::copy(w.lse_i + j * El, ws.neg_inf, sizeof(float) * El);
    zigzag_segments(qs, s.S, p, j);
    partial_attention_forward<B>(num, w.lse_i + j * El, w.qall + j * Eq, Sl, qs, k, v, Sl, ks, Bt,
                                 NH, s.NKV, HD, s.causal, w.scratch);
  }

  // Exact combine: MAX all-reduce, then the SUM of [o·w | w] reduce-scattered to the owners.
  B::copy(w.m, w.lse_i, sizeof(float) * p * El);
  all_reduce<B>(&cp, w.m, p * El, DType::kF32, comm::ReduceOp::kMax);
  if (stats) stats->all_reduce(p, p * El);
  for (int j = 0; j < p; ++j) {
    T* num = w.num + j * w.num_stride;
    B::attention_merge_scale(num, w.den + j * w.den_stride, num, w.lse_i + j * El, w.m + j * El, Sl,
                             Bt, NH, HD);
  }
  if constexpr (cp_detail::kPackedTree<B>) {
    reduce_scatter<B>(&cp, w.num, w.recv_num, Eq + El, DType::kF32, comm::ReduceOp::kSum);
    if (stats) stats->reduce_scatter(p, Eq + El);
  } else {
    reduce_scatter<B>(&cp, w.num, w.recv_num, Eq, B::kDType, comm::ReduceOp::kSum);
    reduce_scatter<B>(&cp, w.den, w.recv_den, El, DType::kF32, comm::ReduceOp::kSum);
    if (stats) {
      stats->reduce_scatter(p, Eq, eb);
      stats->reduce_scatter(p, El);
    }
  }
  B::attention_merge_finish(out, lse, w.recv_num, w.recv_den, w.m + r * El, Sl, Bt, NH, HD);
}

template <class B>
void tree_attention_backward(comm::Communicator& cp, const CpAttentionShape& s, typename B::T* dq,
                             typename B::T* dk, typename B::T* dv, const typename B::T* dout,
                             const typename B::T* q, const typename B::T* k, const typename B::T* v,
                             const typename B::T* out, const float* lse, const CpScratch& ws,
                             CommStats* stats) {
  using T = typename B::T;
  const cp_detail::Sizes z(s, cp.size());
  const int p = z.p, r = cp.rank(), Sl = z.Sl;
  const int64_t Eq = z.Eq, El = z.El;
  const int eb = cp_detail::kElemBytes<B>;
  const cp_detail::TreeBackward<B> w(ws.workspace, s, p);

  {
    comm::Work wq = all_gather_async<B>(&cp, q, w.qall, Eq, B::kDType);
    comm::Work wd = all_gather_async<B>(&cp, dout, w.dout_all, Eq, B::kDType);
    comm::Work wo = all_gather_async<B>(&cp, out, w.out_all, Eq, B::kDType);
    comm::Work wl = all_gather_async<B>(&cp, lse, w.lse_all, El, DType::kF32);
    wq.wait();
    wd.wait();
    wo.wait();
    wl.wait();
  }
  if (stats) {
    for (int i = 0; i < 3; ++i) stats->all_gather(p, Eq, eb);
    stats->all_gather(p, El);
  }

  Segment ks[2], qs[2];
  zigzag_segments(ks, s.S, p, r);
  B::zero(w.dq_all, sizeof(T) * p * Eq);
  for (int j = 0; j < p; ++j) {
    zigzag_segments(qs, s.S, p, j);
    partial_attention_backward<B>(w.dq_all + j * Eq, dk, dv, w.dout_all + j * Eq, w.qall + j * Eq,
                                  w.out_all + j * Eq, w.lse_all + j * El, Sl, qs, k, v, Sl, ks, s.B,
                                  s.NH, s.NKV, s.HD, s.causal, w.scratch);
  }
  reduce_scatter<B>(&cp, w.dq_all, w.recv, Eq, B::kDType, comm::ReduceOp::kSum);
  if (stats) stats->reduce_scatter(p, Eq, eb);
  B::add_inplace(dq, w.recv, Eq);
}

// ---- Ring attention -------------------------------------------------------------------------

template <class B>
int64_t ring_workspace_bytes(const CpAttentionShape& s, int p) {
  return std::max(cp_detail::RingForward<B>(nullptr, s, p).bytes,
                  cp_detail::RingBackward<B>(nullptr, s, p).bytes);
}

template <class B>
void ring_attention_forward(comm::Communicator& cp, const CpAttentionShape& s, typename B::T* out,
                            float* lse, const typename B::T* q, const typename B::T* k,
                            const typename B::T* v, const CpScratch& ws, CommStats* stats) {
  using T = typename B::T;
  const cp_detail::Sizes z(s, cp.size());
  const int p = z.p, r = cp.rank(), Sl = z.Sl;
  const int64_t Ekv = z.Ekv;
  const int eb = cp_detail::kElemBytes<B>;
  const cp_detail::RingForward<B> w(ws.workspace, s, p);

  B::zero(out, sizeof(T) * z.Eq);
  B::copy(lse, ws.neg_inf, sizeof(float) * z.El);
  B::copy(w.buf[0], k, sizeof(T) * Ekv);
  B::copy(w.buf[0] + Ekv, v, sizeof(T) * Ekv);
  Segment qs[2], ks[2];
  zigzag_segments(qs, s.S, p, r);
  for (int t = 0; t < p; ++t) {
    T* cur = w.buf[t % 2];
    comm::Work hop;
    if (t < p - 1) {  // the next block arrives while this one is computed
      hop = ring_exchange_async<B>(&cp, cur, w.buf[(t + 1) % 2], 2 * Ekv, B::kDType);
      if (stats) stats->send(2 * Ekv, eb);
    }
    zigzag_segments(ks, s.S, p, (r - t + p) % p);
    partial_attention_forward<B>(out, lse, q, Sl, qs, cur, cur + Ekv, Sl, ks, s.B, s.NH, s.NKV,
                                 s.HD, s.causal, w.scratch);
    hop.wait();
  }
}

template <class B>
void ring_attention_backward(comm::Communicator& cp, const CpAttentionShape& s, typename B::T* dq,
                             typename B::T* dk, typename B::T* dv, const typename B::T* dout,
                             const typename B::T* q, const typename B::T* k, const typename B::T* v,
                             const typename B::T* out, const float* lse, const CpScratch& ws,
                             CommStats* stats) {
  using T = typename B::T;
  const cp_detail::Sizes z(s, cp.size());
  const int p = z.p, r = cp.rank(), Sl = z.Sl;
  const int64_t Ekv = z.Ekv;
  const int eb = cp_detail::kElemBytes<B>;
  const cp_detail::RingBackward<B> w(ws.workspace, s, p);

  B::copy(w.buf[0], k, sizeof(T) * Ekv);
  B::copy(w.buf[0] + Ekv, v, sizeof(T) * Ekv);
  B::zero(w.buf[0] + 2 * Ekv, sizeof(T) * 2 * Ekv);
  Segment qs[2], ks[2];
  zigzag_segments(qs, s.S, p, r);
  for (int t = 0; t < p; ++t) {
    T* cur = w.buf[t % 2];
    T* nxt = w.buf[(t + 1) % 2];
    comm::Work hop_kv;
    if (t < p - 1) {
      hop_kv = ring_exchange_async<B>(&cp, cur, nxt, 2 * Ekv, B::kDType);
      if (stats) stats->send(2 * Ekv, eb);
    }
    zigzag_segments(ks, s.S, p, (r - t + p) % p);
    partial_attention_backward<B>(dq, cur + 2 * Ekv, cur + 3 * Ekv, dout, q, out, lse, Sl, qs, cur,
                                  cur + Ekv, Sl, ks, s.B, s.NH, s.NKV, s.HD, s.causal, w.scratch);
    // dK/dV move on with their block; after the last block this hop returns them to the owner.
    if (p > 1) {
      comm::Work hop_d =
          ring_exchange_async<B>(&cp, cur + 2 * Ekv, nxt + 2 * Ekv, 2 * Ekv, B::kDType);
      if (stats) stats->send(2 * Ekv, eb);
      hop_d.wait();
    }
    hop_kv.wait();
  }
  // This rank's dK/dV arrived with the last hop (p = 1: they never left buf[0]).
  const T* own = (p > 1 ? w.buf[p % 2] : w.buf[0]) + 2 * Ekv;
  B::add_inplace(dk, own, Ekv);
  B::add_inplace(dv, own + Ekv, Ekv);
}

// ---- Dispatch and the owning class ----------------------------------------------------------

template <class B>
int64_t cp_workspace_bytes(CpAttention a, const CpAttentionShape& s, int p) {
  return a == CpAttention::kTree ? tree_workspace_bytes<B>(s, p) : ring_workspace_bytes<B>(s, p);
}

template <class B>
void cp_attention_forward(CpAttention a, comm::Communicator& cp, const CpAttentionShape& s,
                          typename B::T* out, float* lse, const typename B::T* q,
                          const typename B::T* k, const typename B::T* v, const CpScratch& ws,
                          CommStats* stats) {
  if (a == CpAttention::kTree)
    tree_attention_forward<B>(cp, s, out, lse, q, k, v, ws, stats);
  else
    ring_attention_forward<B>(cp, s, out, lse, q, k, v, ws, stats);
}

template <class B>
void cp_attention_backward(CpAttention a, comm::Communicator& cp, const CpAttentionShape& s,
                           typename B::T* dq, typename B::T* dk, typename B::T* dv,
                           const typename B::T* dout, const typename B::T* q,
                           const typename B::T* k, const typename B::T* v, const typename B::T* out,
                           const float* lse, const CpScratch& ws, CommStats* stats) {
  if (a == CpAttention::kTree)
    tree_attention_backward<B>(cp, s, dq, dk, dv, dout, q, k, v, out, lse, ws, stats);
  else
    ring_attention_backward<B>(cp, s, dq, dk, dv, dout, q, k, v, out, lse, ws, stats);
}

template <class B>
ContextAttentionT<B>::ContextAttentionT(CpAttention algo, comm::Communicator* cp,
                                        const CpAttentionShape& shape)
    : algo_(algo), cp_(cp), shape_(shape) {
  const int p = cp_size();
  GROVE_CHECK(shape.S > 0 && (!cp_ || shape.S % (2 * p) == 0))
      << "context-parallel attention: sequence " << shape.S
      << " is not a multiple of 2*cp = " << 2 * p;
  GROVE_CHECK(shape.NKV > 0 && shape.NH % shape.NKV == 0)
      << "context-parallel attention: " << shape.NKV << " kv heads do not divide " << shape.NH
      << " heads";
  if (cp_) {
    ws_ = Tensor::empty({cp_workspace_bytes<B>(algo, shape, p)}, DType::kU8, B::kDevice);
    const int64_t n = cp_neg_inf_elems(shape, p);
    const std::vector<float> host(size_t(n), -std::numeric_limits<float>::infinity());
    neg_inf_ = Tensor::empty({n}, DType::kF32, B::kDevice);
    B::upload(neg_inf_.raw(), host.data(), sizeof(float) * size_t(n));
  }
}

template <class B>
void ContextAttentionT<B>::forward(T* out, float* lse, const T* q, const T* k, const T* v) {
  const CpAttentionShape& s = shape_;
  if (!cp_) {
    B::attention_forward(out, lse, nullptr, q, k, v,
                         kernels::AttentionShape{s.S, s.S, s.B, s.NH, s.NKV, s.HD, s.causal});
    return;
  }
  cp_attention_forward<B>(algo_, *cp_, shape_, out, lse, q, k, v, scratch(), &stats_);
}

template <class B>
void ContextAttentionT<B>::backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                                    const T* v, const T* out, const float* lse) {
  const CpAttentionShape& s = shape_;
  if (!cp_) {
    B::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, nullptr,
                          kernels::AttentionShape{s.S, s.S, s.B, s.NH, s.NKV, s.HD, s.causal});
    return;
  }
  cp_attention_backward<B>(algo_, *cp_, shape_, dq, dk, dv, dout, q, k, v, out, lse, scratch(),
                           &stats_);
}

}  // namespace grove::parallel
