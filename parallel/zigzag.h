// Zigzag layout of a sequence over the context-parallel (CP) group, for causal load balance.
//
// With p CP ranks the global sequence of S positions is cut into 2p chunks of c = S/(2p) rows;
// rank r holds chunk r followed by chunk 2p-1-r, i.e. a shard of S/p rows:
//     shard row i (0 <= i < c)      global position  r*c + i
//     shard row c + i               global position  (2p-1-r)*c + i
// Under a causal mask every rank then sees the same amount of work (an early chunk pairs with a
// late one). With p = 1 the layout is the identity.
//
// Tensors are sequence first, [S, B, ...]: a "row" is one sequence position with all its batch
// and feature elements (row_elems = B * ...), so a chunk is a contiguous slab of c rows.
// Invariant: S % (2p) == 0 (checked; the error names S and p).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "comm/communicator.h"
#include "core/status.h"

namespace grove::parallel {

struct Zigzag {
  int S = 0;     // global sequence length
  int p = 1;     // CP size
  int rank = 0;  // CP rank

  // Throws grove::Error unless S % (2p) == 0 and 0 <= rank < p.
  Zigzag(int S_, int p_, int rank_) : S(S_), p(p_), rank(rank_) {
    GROVE_CHECK(p >= 1 && rank >= 0 && rank < p)
        << "zigzag layout: rank " << rank << " out of range for cp=" << p;
    GROVE_CHECK(S > 0 && S % (2 * p) == 0)
        << "zigzag layout: sequence " << S << " is not a multiple of 2*cp = " << 2 * p;
  }

  int chunk() const { return S / (2 * p); }  // c
  int local_rows() const { return S / p; }   // rows of a shard (2c)
  // Global chunk index of this rank's first (half = 0) or second (half = 1) chunk.
  int chunk_index(int half) const { return half == 0 ? rank : 2 * p - 1 - rank; }
  // Global position of the first row of this rank's chunk `half` (the pos0 for RoPE / masks).
  int chunk_pos0(int half) const { return chunk_index(half) * chunk(); }
  // Global position of shard row i.
  int position(int i) const {
    const int c = chunk();
    return i < c ? chunk_pos0(0) + i : chunk_pos0(1) + (i - c);
  }
  // Global positions of all local_rows() rows of the shard.
  std::vector<int32_t> positions() const {
    std::vector<int32_t> pos(local_rows());
    for (int i = 0; i < local_rows(); ++i) pos[i] = position(i);
    return pos;
  }
  // The same layout seen from another rank.
  Zigzag of_rank(int r) const { return Zigzag(S, p, r); }
};

// shard [S/p, row_elems] = this rank's two chunks of full [S, row_elems] (host memory).
template <typename T>
void zigzag_shard(T* shard, const T* full, const Zigzag& z, int64_t row_elems) {
  const int64_t chunk_elems = int64_t(z.chunk()) * row_elems;
  for (int half = 0; half < 2; ++half)
    std::memcpy(shard + half * chunk_elems, full + z.chunk_index(half) * chunk_elems,
                sizeof(T) * chunk_elems);
}
// full [S, row_elems] from all shards stacked in rank order, shards [p, S/p, row_elems] (as an
// all_gather of the shards delivers them; host memory).
template <typename T>
void zigzag_unshard(T* full, const T* shards, int S, int p, int64_t row_elems) {
  const Zigzag z0(S, p, 0);
  const int64_t chunk_elems = int64_t(z0.chunk()) * row_elems;
  for (int r = 0; r < p; ++r) {
    const Zigzag z = z0.of_rank(r);
    const T* shard = shards + int64_t(r) * 2 * chunk_elems;
    for (int half = 0; half < 2; ++half)
      std::memcpy(full + z.chunk_index(half) * chunk_elems, shard + half * chunk_elems,
                  sizeof(T) * chunk_elems);
  }
}
// Collective over cp: every rank ends with the full [S, row_elems] tensor (all-gather + unshard).
// `scratch` holds S * row_elems elements.
void zigzag_all_gather(comm::Communicator& cp, const float* shard, float* full, float* scratch,
                       int S, int64_t row_elems);

// RoPE (kernels/cpu/ops.h) of a zigzag shard x [S/p, B, NHx, HD] in place, each row rotated at its
// global position (one kernel call per chunk); cos/sin tables cover positions [0, S).
void zigzag_rope_forward(float* x, const float* cos_table, const float* sin_table, const Zigzag& z,
                         int B, int NHx, int HD);
void zigzag_rope_backward(float* dx, const float* cos_table, const float* sin_table,
                          const Zigzag& z, int B, int NHx, int HD);

// The same on a kernel backend Bk (kernels/backend.h): x [S/p, B, NHx, HD] of Bk::T in Bk's
// memory, cos/sin tables in Bk's memory; `backward` applies the inverse rotation (the gradient).
template <class Bk>
void zigzag_rope(typename Bk::T* x, const float* cos_table, const float* sin_table, const Zigzag& z,
                 int B, int NHx, int HD, bool backward) {
  const int64_t chunk_elems = int64_t(z.chunk()) * B * NHx * HD;
  for (int half = 0; half < 2; ++half) {
    if (backward)
      Bk::rope_backward(x + half * chunk_elems, cos_table, sin_table, z.chunk(), B, NHx, HD,
                        z.chunk_pos0(half));
    else
      Bk::rope_forward(x + half * chunk_elems, cos_table, sin_table, z.chunk(), B, NHx, HD,
                       z.chunk_pos0(half));
  }
}

}  // namespace grove::parallel
