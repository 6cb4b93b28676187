// Ring attention over the context-parallel group: the baseline tree attention is measured against
// (docs/attention.md#ring-attention). Same shapes, zigzag layout and contract as
// parallel/cp_attention.h.
//
//   forward:  the local K/V block travels the ring: p-1 hops to rank r+1 (the next block is
//             received while the current one is computed); each rank merges its queries'
//             partials against every block online by lse.
//   backward: K/V travel again with their dK/dV accumulators; each rank adds its contribution
//             and passes them on; after the last block one more hop returns dK/dV to the owner.
//             dQ stays local.
// Each hop is an all_to_all_v on the CP communicator with one non-zero count each way (to r+1,
// from r-1): NCCL runs it as a grouped send/recv, so a ring of hops cannot deadlock as ungrouped
// sends would; the K/V and dK/dV hops in flight together are matched in issue order.
#pragma once

#include <cstdint>

#include "comm/communicator.h"
#include "parallel/cp_attention.h"

namespace grove::parallel {

// On backend B (parallel/cp_attention.h; defined in parallel/cp_attention_impl.h).
template <class B>
int64_t ring_workspace_bytes(const CpAttentionShape& s, int p);
template <class B>
void ring_attention_forward(comm::Communicator& cp, const CpAttentionShape& s, typename B::T* out,
                            float* lse, const typename B::T* q, const typename B::T* k,
                            const typename B::T* v, const CpScratch& ws,
                            CommStats* stats = nullptr);
template <class B>
void ring_attention_backward(comm::Communicator& cp, const CpAttentionShape& s, typename B::T* dq,
                             typename B::T* dk, typename B::T* dv, const typename B::T* dout,
                             const typename B::T* q, const typename B::T* k, const typename B::T* v,
                             const typename B::T* out, const float* lse, const CpScratch& ws,
                             CommStats* stats = nullptr);

}  // namespace grove::parallel
