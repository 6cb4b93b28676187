// Tensor + sequence parallelism (Megatron-LM; docs/tensor_parallel.md): the four conjugate
// region ops and the column/row-parallel linear layers, over the TP group of a ParallelGrid.
//
// Regions of an activation [s, b, h] (rows ordered (s, b), so a sequence shard is a contiguous
// row block; rank r of the TP group holds rows [r*N/t, (r+1)*N/t)):
//   replicated  every TP rank holds the full [N, h]            (plain TP, outside attention/MLP)
//   sequence    rank r holds its rows [N/t, h]                  (SP, outside attention/MLP)
//   parallel    rank r holds its column block [N, H/t]          (inside attention/MLP)
//
// The conjugate pairs (forward / backward):
//   f   copy_to_tp_region            identity      / all-reduce
//   f̄   reduce_from_tp_region        all-reduce    / identity
//   g   gather_from_sequence_region  all-gather(s) / reduce-scatter(s)
//   ḡ   scatter_to_sequence_region   reduce-scatter(s) / all-gather(s)
// A null communicator or a group of size one makes every op a copy (or nothing), so the same
// code runs single-process.
#pragma once

#include <cstdint>

#include "comm/communicator.h"

namespace grove::parallel {

// f: forward is the identity (nothing to do); backward all-reduces the gradient in place.
void copy_to_tp_region_backward(comm::Communicator* tp, float* grad, int64_t n);
// f̄: forward all-reduces the partial sums in place; backward is the identity.
void reduce_from_tp_region_forward(comm::Communicator* tp, float* x, int64_t n);
// g: forward all-gathers row shards [rows/t, cols] into full [rows, cols]; backward
// reduce-scatters the full gradient back into this rank's row shard (shard = not accumulated).
void gather_from_sequence_region_forward(comm::Communicator* tp, const float* shard, float* full,
                                         int64_t rows, int64_t cols);
void gather_from_sequence_region_backward(comm::Communicator* tp, const float* dfull, float* dshard,
                                          int64_t rows, int64_t cols);
// ḡ: forward reduce-scatters partial sums [rows, cols] into this rank's summed row shard;
// backward all-gathers the shard gradient into the full gradient.
void scatter_to_sequence_region_forward(comm::Communicator* tp, const float* partial, float* shard,
                                        int64_t rows, int64_t cols);
void scatter_to_sequence_region_backward(comm::Communicator* tp, const float* dshard, float* dfull,
                                         int64_t rows, int64_t cols);

int tp_size(const comm::Communicator* tp);
int tp_rank(const comm::Communicator* tp);

// Y[N, OC/t] = X[N, C] · W_r^T with W_r = rows [r·OC/t, (r+1)·OC/t) of the full [OC, C] weight.
// Input in the replicated region (the caller applies f or g), output in the parallel region.
class ColumnParallelLinear {
 public:
  ColumnParallelLinear(int in_features, int out_features, const comm::Communicator* tp);
  int in_features() const { return in_; }
  int local_out() const { return out_local_; }
  void forward(float* out, const float* in, const float* weight, int N) const;
  // dinp += dout · W_r (this rank's partial; the caller reduces it with f's or g's backward),
  // dweight += dout^T · in.
  void backward(float* dinp, float* dweight, const float* dout, const float* in,
                const float* weight, int N) const;

 private:
  int in_, out_local_;
};

// Y[N, OC] (partial) = X[N, C/t] · W_r^T with W_r = columns [r·C/t, (r+1)·C/t) of [OC, C].
// Input in the parallel region, output a partial sum the caller reduces with f̄ or ḡ.
class RowParallelLinear {
 public:
  RowParallelLinear(int in_features, int out_features, const comm::Communicator* tp);
  int local_in() const { return in_local_; }
  int out_features() const { return out_; }
  void forward(float* out, const float* in, const float* weight, int N) const;
  void backward(float* dinp, float* dweight, const float* dout, const float* in,
                const float* weight, int N) const;

 private:
  int in_local_, out_;
};

}  // namespace grove::parallel
