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
// Peer-to-peer messages use tags 0 (K/V) and 1 (dK/dV) on the CP communicator.
#pragma once

#include <cstdint>

#include "comm/communicator.h"
#include "parallel/cp_attention.h"

namespace grove::parallel {

int64_t ring_workspace_elems(const CpAttentionShape& s, int p);
void ring_attention_forward(comm::Communicator& cp, const CpAttentionShape& s, float* out,
                            float* lse, const float* q, const float* k, const float* v,
                            float* workspace, CommStats* stats = nullptr);
void ring_attention_backward(comm::Communicator& cp, const CpAttentionShape& s, float* dq,
                             float* dk, float* dv, const float* dout, const float* q,
                             const float* k, const float* v, const float* out, const float* lse,
                             float* workspace, CommStats* stats = nullptr);

}  // namespace grove::parallel
