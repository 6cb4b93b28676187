// Context-parallel (CP) attention: the common interface of tree and ring attention
// (docs/attention.md), on any kernel backend B (kernels/backend.h): the buffers are B's (host for
// CpuBackend, the device for CudaBackend<T>), q/k/v/out of B::T, lse fp32; the collectives run on
// the CP group directly or staged through host memory when the group does not work on B's memory
// (parallel/backend_collectives.h).
//
// Legend: S global sequence, p CP size, Sl = S/p local rows, B batch, NH query heads, NKV
// key/value heads (NH % NKV == 0), HD head dim.
//
// Layout (every rank of the CP group, same shape everywhere):
//   q, out, dq, dout   [Sl, B, NH, HD]   this rank's zigzag shard (parallel/zigzag.h): rows
//   k, v, dk, dv       [Sl, B, NKV, HD]  0..c-1 are chunk r, rows c..2c-1 chunk 2p-1-r, c = S/2p
//   lse                [B, NH, Sl]       natural-log softmax denominator of each local query row
//                                        over the WHOLE sequence (the global lse), as the kernel
// RoPE must already be applied at the rows' global positions (Zigzag::position / chunk_pos0).
// With causal, query at global position i sees keys at positions <= i.
//
// Contract of both algorithms (CpAttention::kTree and kRing take the same arguments):
//   forward   writes out and lse (not accumulated).
//   backward  dq, dk, dv += (accumulated, like every Grove backward; callers zero them), given the
//             forward's out and global lse, and dout.
//   Results equal single-device attention over the full sequence (up to the summation order in
//   fp32; with bf16 activations the partial outputs, the tree's numerators and the ring's dK/dV
//   accumulators are rounded to bf16 between steps).
//   Every member of `cp` calls together; a CP group of size one runs the same code with no
//   communication.
// Workspaces are sized up front (cp_workspace_bytes) and passed in, so memory is known before
// step 0. The algorithms' templates are defined in parallel/cp_attention_impl.h, instantiated for
// CpuBackend in cp_attention.cc and for the CUDA backends in model/cuda/cuda_transformer.cc.
//
// Building blocks shared by both: partial attention of a set of query segments against a set of
// key segments (several kernel calls with the right q_pos0/k_pos0, merged by lse), and the
// lse-weighted merge of two partials (the kernels' attention_merge). Fully masked partials have
// lse = -inf and output 0; every merge and combine handles them without NaN.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "comm/communicator.h"
#include "core/status.h"
#include "core/tensor.h"
#include "kernels/cpu/backend.h"
#include "spec/enums.h"

namespace grove::parallel {

// CpAttention (kTree, kRing), its names and parsing: spec/enums.h.

struct CpAttentionShape {
  int S = 0;  // global sequence length, a multiple of 2p
  int B = 1, NH = 1, NKV = 1, HD = 1;
  bool causal = true;
};

// Communication volume of a call, per rank, under bandwidth-optimal collectives:
// all_gather / reduce_scatter (p-1)·n, all_reduce 2(p-1)/p·n, broadcast (p-1)/p·n, send n
// (n = the per-rank block of `elem_bytes`-byte elements). `rounds` counts the dependent
// communication steps on the critical path (a collective counts ceil(log2 p), a ring hop 1).
struct CommStats {
  double bytes = 0;
  int64_t rounds = 0;
  void all_gather(int p, int64_t elems, int elem_bytes = 4) {
    if (p <= 1) return;
    bytes += double(p - 1) * elems * elem_bytes;
    rounds += log2_ceil(p);
  }
  void reduce_scatter(int p, int64_t elems, int elem_bytes = 4) {
    all_gather(p, elems, elem_bytes);
  }
  void all_reduce(int p, int64_t elems, int elem_bytes = 4) {
    if (p <= 1) return;
    bytes += 2.0 * (p - 1) / p * elems * elem_bytes;
    rounds += log2_ceil(p);
  }
  void broadcast(int p, int64_t elems, int elem_bytes = 4) {
    if (p <= 1) return;
    bytes += double(p - 1) / p * elems * elem_bytes;
    rounds += log2_ceil(p);
  }
  void send(int64_t elems, int elem_bytes = 4) {
    bytes += double(elems) * elem_bytes;
    rounds += 1;
  }

 private:
  static int log2_ceil(int p) {
    int r = 0;
    while ((1 << r) < p) ++r;
    return r;
  }
};

// ---- Building blocks ------------------------------------------------------------------------
// A run of consecutive rows of a q or k/v buffer that have consecutive global positions.
struct Segment {
  int row0 = 0;  // first row in the buffer
  int rows = 0;
  int pos0 = 0;  // global position of row0
};
// The two segments of a zigzag shard of `rank` (rows [0, c) and [c, 2c)).
inline void zigzag_segments(Segment out[2], int S, int p, int rank) {
  const int c = S / (2 * p);
  out[0] = Segment{0, c, rank * c};
  out[1] = Segment{c, c, (2 * p - 1 - rank) * c};
}

// Carves a byte workspace into typed arrays, each 256-byte aligned, in call order. With a null
// base nothing is touched and used() is the size the same sequence of take() calls needs.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base) : base_(static_cast<std::byte*>(base)) {}
  template <typename X>
  X* take(int64_t n) {
    used_ = (used_ + 255) / 256 * 256;
    X* out = base_ ? reinterpret_cast<X*>(base_ + used_) : nullptr;
    used_ += sizeof(X) * size_t(n);
    return out;
  }
  int64_t used() const { return int64_t(used_); }

 private:
  std::byte* base_;
  size_t used_ = 0;
};

// What the algorithms work in, in B's memory: a workspace of cp_workspace_bytes<B>(...) bytes and
// cp_neg_inf_elems(...) floats holding -inf (the initial lse of empty partials, copied from).
struct CpScratch {
  void* workspace = nullptr;
  const float* neg_inf = nullptr;
};
inline int64_t cp_neg_inf_elems(const CpAttentionShape& s, int p) {
  return int64_t(s.B) * s.NH * (s.S / p) * p;
}

// o [SQ, B, NH, HD] and lse [B, NH, SQ] are running partials (start: o = 0, lse = -inf); merges
// in the attention of every q segment against every k/v segment (k, v [SK, B, NKV, HD]).
// Causal pairs that are fully masked are skipped, unmasked ones run without the mask. scratch:
// partial_forward_scratch_bytes<B>(SQ, B, NH, HD) bytes.
template <class B>
void partial_attention_forward(typename B::T* o, float* lse, const typename B::T* q, int SQ,
                               std::span<const Segment> qs, const typename B::T* k,
                               const typename B::T* v, int SK, std::span<const Segment> ks, int Bt,
                               int NH, int NKV, int HD, bool causal, void* scratch);
template <class B>
int64_t partial_forward_scratch_bytes(int SQ, int Bt, int NH, int HD);
// dq [SQ, ...] += and dk, dv [SK, ...] += the contributions of the same pairs, given the combined
// out/dout and the global lse [B, NH, SQ] of the q rows (FlashAttention-2 backward).
// scratch: B * NH * SQ floats.
template <class B>
void partial_attention_backward(typename B::T* dq, typename B::T* dk, typename B::T* dv,
                                const typename B::T* dout, const typename B::T* q,
                                const typename B::T* out, const float* lse, int SQ,
                                std::span<const Segment> qs, const typename B::T* k,
                                const typename B::T* v, int SK, std::span<const Segment> ks, int Bt,
                                int NH, int NKV, int HD, bool causal, float* scratch);

// ---- The interface the model uses ----------------------------------------------------------
// Workspace bytes needed by algorithm `a` on a group of size p (max of forward and backward).
template <class B>
int64_t cp_workspace_bytes(CpAttention a, const CpAttentionShape& s, int p);
template <class B>
void cp_attention_forward(CpAttention a, comm::Communicator& cp, const CpAttentionShape& s,
                          typename B::T* out, float* lse, const typename B::T* q,
                          const typename B::T* k, const typename B::T* v, const CpScratch& ws,
                          CommStats* stats = nullptr);
template <class B>
void cp_attention_backward(CpAttention a, comm::Communicator& cp, const CpAttentionShape& s,
                           typename B::T* dq, typename B::T* dk, typename B::T* dv,
                           const typename B::T* dout, const typename B::T* q,
                           const typename B::T* k, const typename B::T* v, const typename B::T* out,
                           const float* lse, const CpScratch& ws, CommStats* stats = nullptr);

// The same with an owned workspace (in B's memory), allocated once for a fixed shape.
// cp = nullptr means one process: the plain attention kernel over the whole sequence (no
// workspace, no zigzag).
template <class B>
class ContextAttentionT {
 public:
  using T = typename B::T;
  ContextAttentionT(CpAttention algo, comm::Communicator* cp, const CpAttentionShape& shape);
  CpAttention algo() const { return algo_; }
  const CpAttentionShape& shape() const { return shape_; }
  int cp_size() const { return cp_ ? cp_->size() : 1; }
  int local_rows() const { return shape_.S / cp_size(); }
  void forward(T* out, float* lse, const T* q, const T* k, const T* v);
  void backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                const T* out, const float* lse);
  int64_t workspace_bytes() const { return static_cast<int64_t>(ws_.bytes() + neg_inf_.bytes()); }
  // Accumulated over every call since construction (or reset_stats).
  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  CpScratch scratch() { return {ws_.raw(), neg_inf_.data<float>()}; }

  CpAttention algo_;
  comm::Communicator* cp_;  // null: one process
  CpAttentionShape shape_;
  Tensor ws_;       // u8 [cp_workspace_bytes]
  Tensor neg_inf_;  // fp32 [cp_neg_inf_elems], -inf
  CommStats stats_;
};

// The host backend's (the CPU model, benchmarks, tests).
using ContextAttention = ContextAttentionT<CpuBackend>;
extern template class ContextAttentionT<CpuBackend>;

}  // namespace grove::parallel
