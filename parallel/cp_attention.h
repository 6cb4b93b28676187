// Context-parallel (CP) attention: the common interface of tree and ring attention
// (docs/attention.md).
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
//   Results equal single-device attention over the full sequence (up to fp32 summation order).
//   Every member of `cp` calls together; a CP group of size one runs the plain kernel.
// Workspaces are sized up front (workspace_elems) and passed in, so memory is known before step 0.
//
// Building blocks shared by both: partial attention of a set of query segments against a set of
// key segments (several kernel calls with the right q_pos0/k_pos0, merged by lse), and the
// lse-weighted merge of two partials. Fully masked partials have lse = -inf and output 0; every
// merge and combine handles them without NaN.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "comm/communicator.h"
#include "core/status.h"
#include "core/tensor.h"
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
// (n = the per-rank block). `rounds` counts the dependent communication steps on the critical
// path (a collective counts ceil(log2 p), a ring hop 1).
struct CommStats {
  double bytes = 0;
  int64_t rounds = 0;
  void all_gather(int p, int64_t elems);
  void reduce_scatter(int p, int64_t elems);
  void all_reduce(int p, int64_t elems);
  void broadcast(int p, int64_t elems);
  void send(int64_t elems);
};

// ---- Building blocks ------------------------------------------------------------------------
// A run of consecutive rows of a q or k/v buffer that have consecutive global positions.
struct Segment {
  int row0 = 0;  // first row in the buffer
  int rows = 0;
  int pos0 = 0;  // global position of row0
};
// The two segments of a zigzag shard of `rank` (rows [0, c) and [c, 2c)).
void zigzag_segments(Segment out[2], int S, int p, int rank);

// o [SQ, B, NH, HD] and lse [B, NH, SQ] are running partials (start: o = 0, lse = -inf); merges
// in the attention of every q segment against every k/v segment (k, v [SK, B, NKV, HD]).
// Causal pairs that are fully masked are skipped, unmasked ones run without the mask. scratch:
// partial_scratch_elems(SQ, B, NH, HD) floats.
void partial_attention_forward(float* o, float* lse, const float* q, int SQ,
                               std::span<const Segment> qs, const float* k, const float* v, int SK,
                               std::span<const Segment> ks, int B, int NH, int NKV, int HD,
                               bool causal, float* scratch);
int64_t partial_scratch_elems(int SQ, int B, int NH, int HD);
// dq [SQ, ...] += and dk, dv [SK, ...] += the contributions of the same pairs, given the combined
// out/dout and the global lse [B, NH, SQ] of the q rows (FlashAttention-2 backward).
// scratch: B * NH * SQ floats.
void partial_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                const float* out, const float* lse, int SQ,
                                std::span<const Segment> qs, const float* k, const float* v, int SK,
                                std::span<const Segment> ks, int B, int NH, int NKV, int HD,
                                bool causal, float* scratch);
// (The merge of partial results, out and lse, is the kernel attention_merge: kernels/cpu/ops.h.)

// ---- The interface the model uses ----------------------------------------------------------
// Workspace floats needed by algorithm `a` on a group of size p (max of forward and backward).
int64_t cp_workspace_elems(CpAttention a, const CpAttentionShape& s, int p);
void cp_attention_forward(CpAttention a, comm::Communicator& cp, const CpAttentionShape& s,
                          float* out, float* lse, const float* q, const float* k, const float* v,
                          float* workspace, CommStats* stats = nullptr);
void cp_attention_backward(CpAttention a, comm::Communicator& cp, const CpAttentionShape& s,
                           float* dq, float* dk, float* dv, const float* dout, const float* q,
                           const float* k, const float* v, const float* out, const float* lse,
                           float* workspace, CommStats* stats = nullptr);

// The same with an owned workspace, allocated once for a fixed shape. cp = nullptr means one
// process: the plain attention kernel over the whole sequence (no workspace, no zigzag).
class ContextAttention {
 public:
  ContextAttention(CpAttention algo, comm::Communicator* cp, const CpAttentionShape& shape);
  CpAttention algo() const { return algo_; }
  const CpAttentionShape& shape() const { return shape_; }
  int cp_size() const { return cp_ ? cp_->size() : 1; }
  int local_rows() const { return shape_.S / cp_size(); }
  void forward(float* out, float* lse, const float* q, const float* k, const float* v);
  void backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                const float* v, const float* out, const float* lse);
  int64_t workspace_bytes() const { return static_cast<int64_t>(ws_.bytes()); }
  // Accumulated over every call since construction (or reset_stats).
  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  CpAttention algo_;
  comm::Communicator* cp_;  // null: one process
  CpAttentionShape shape_;
  Tensor ws_;
  CommStats stats_;
};

}  // namespace grove::parallel
