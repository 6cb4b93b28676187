// Tree attention over the context-parallel group (Zyphra 2024; docs/attention.md#tree-attention).
//
// The softmax reduction over the sequence is associative, so KV-sharded attention combines with
// two collectives instead of p-1 serial hops. Each rank computes the attention of the queries
// against its local keys, a partial (o_i, lse_i) in fp32; the exact combine is
//     M = AllReduce_MAX(lse_i);   [N | D] = SUM_i [o_i · e^{lse_i − M} | e^{lse_i − M}]
//     out = N / D,  lse = M + log D
// A rank whose keys are all masked (or that holds none) has lse_i = -inf, weight 0: no NaN.
// A row masked everywhere ends with out = 0, lse = -inf.
//
// Training (shapes and contract in parallel/cp_attention.h), conjugate collectives:
//   forward:  all-gather Q (zigzag shards) → partials of all queries against the local K/V
//             → MAX all-reduce of lse, SUM reduce-scatter of the packed [o·w | w] to the owners
//   backward: all-gather Q, dO, O, lse → FlashAttention-2 backward with the global lse against
//             the local K/V (dK, dV stay local) → SUM reduce-scatter of dQ to the owners
// Decoding: tree_combine below (all-reduce form, payload O(rows · HD), independent of context).
#pragma once

#include <cstdint>

#include "comm/communicator.h"
#include "parallel/cp_attention.h"

namespace grove::parallel {

// On backend B (parallel/cp_attention.h; defined in parallel/cp_attention_impl.h). With fp32
// activations the numerators and weights travel packed in one reduce-scatter; with bf16 the
// numerators (bf16) and the weights (fp32) in two.
template <class B>
int64_t tree_workspace_bytes(const CpAttentionShape& s, int p);
template <class B>
void tree_attention_forward(comm::Communicator& cp, const CpAttentionShape& s, typename B::T* out,
                            float* lse, const typename B::T* q, const typename B::T* k,
                            const typename B::T* v, const CpScratch& ws,
                            CommStats* stats = nullptr);
template <class B>
void tree_attention_backward(comm::Communicator& cp, const CpAttentionShape& s, typename B::T* dq,
                             typename B::T* dk, typename B::T* dv, const typename B::T* dout,
                             const typename B::T* q, const typename B::T* k, const typename B::T* v,
                             const typename B::T* out, const float* lse, const CpScratch& ws,
                             CommStats* stats = nullptr);

// The exact combine of per-rank partials in place, all ranks ending with the same result (host
// memory, fp32; decoding, parallel/kv_cache.h):
// o [rows, HD] (row i's output) and lse [rows] (row i's lse) — one MAX all-reduce of rows floats
// and one SUM all-reduce of rows·(HD+1) floats. scratch: tree_combine_scratch_elems floats.
inline int64_t tree_combine_scratch_elems(int64_t rows, int HD) {
  return rows * (HD + 2);
}
void tree_combine(comm::Communicator& cp, float* o, float* lse, int64_t rows, int HD,
                  float* scratch, CommStats* stats = nullptr);
// The same on backend B's buffers (o, lse and scratch in B's memory; the collectives through
// parallel/backend_collectives.h). Defined in parallel/kv_cache_impl.h.
template <class B>
void tree_combine(comm::Communicator& cp, float* o, float* lse, int64_t rows, int HD,
                  float* scratch, CommStats* stats = nullptr);

}  // namespace grove::parallel
