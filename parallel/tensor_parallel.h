// Tensor + sequence parallelism (Megatron-LM; docs/tensor_parallel.md): the four conjugate
// region ops and the column/row-parallel linear layers over the TP group of a ParallelGrid, on
// any kernel backend B (kernels/backend.h): the buffers are B's (host for CpuBackend, the device
// for CudaBackend<T>), the activations B::T, and the collectives run on the group directly or
// staged through host memory when the group does not work on B's memory
// (parallel/backend_collectives.h).
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
// code runs single-process. Header only (templates over B).
#pragma once

#include <cstdint>

#include "comm/communicator.h"
#include "core/status.h"
#include "parallel/backend_collectives.h"

namespace grove::parallel {

inline int tp_size(const comm::Communicator* tp) {
  return tp ? tp->size() : 1;
}
inline int tp_rank(const comm::Communicator* tp) {
  return tp ? tp->rank() : 0;
}

// f: forward is the identity (nothing to do); backward all-reduces the gradient in place.
template <class B>
void copy_to_tp_region_backward(comm::Communicator* tp, typename B::T* grad, int64_t n) {
  all_reduce<B>(tp, grad, n, B::kDType, comm::ReduceOp::kSum);
}

// f̄: forward all-reduces the partial sums in place; backward is the identity.
template <class B>
void reduce_from_tp_region_forward(comm::Communicator* tp, typename B::T* x, int64_t n) {
  all_reduce<B>(tp, x, n, B::kDType, comm::ReduceOp::kSum);
}

// g: forward all-gathers row shards [rows/t, cols] into full [rows, cols]; backward
// reduce-scatters the full gradient back into this rank's row shard (shard = not accumulated).
template <class B>
void gather_from_sequence_region_forward(comm::Communicator* tp, const typename B::T* shard,
                                         typename B::T* full, int64_t rows, int64_t cols) {
  const int t = tp_size(tp);
  GROVE_CHECK(rows % t == 0) << "sequence-parallel gather: " << rows << " rows do not split over "
                             << t << " TP ranks";
  all_gather<B>(tp, shard, full, rows / t * cols, B::kDType);
}
template <class B>
void gather_from_sequence_region_backward(comm::Communicator* tp, const typename B::T* dfull,
                                          typename B::T* dshard, int64_t rows, int64_t cols) {
  const int t = tp_size(tp);
  GROVE_CHECK(rows % t == 0) << "sequence-parallel reduce-scatter: " << rows
                             << " rows do not split over " << t << " TP ranks";
  reduce_scatter<B>(tp, dfull, dshard, rows / t * cols, B::kDType, comm::ReduceOp::kSum);
}

// ḡ: forward reduce-scatters partial sums [rows, cols] into this rank's summed row shard;
// backward all-gathers the shard gradient into the full gradient.
template <class B>
void scatter_to_sequence_region_forward(comm::Communicator* tp, const typename B::T* partial,
                                        typename B::T* shard, int64_t rows, int64_t cols) {
  gather_from_sequence_region_backward<B>(tp, partial, shard, rows, cols);
}
template <class B>
void scatter_to_sequence_region_backward(comm::Communicator* tp, const typename B::T* dshard,
                                         typename B::T* dfull, int64_t rows, int64_t cols) {
  gather_from_sequence_region_forward<B>(tp, dshard, dfull, rows, cols);
}

// Y[N, OC/t] = X[N, C] · W_r^T with W_r = rows [r·OC/t, (r+1)·OC/t) of the full [OC, C] weight.
// Input in the replicated region (the caller applies f or g), output in the parallel region.
template <class B>
class ColumnParallelLinear {
 public:
  using T = typename B::T;
  ColumnParallelLinear(int in_features, int out_features, const comm::Communicator* tp)
      : in_(in_features) {
    const int t = tp_size(tp);
    GROVE_CHECK(out_features % t == 0)
        << "column-parallel linear: tp=" << t << " does not divide " << out_features << " outputs";
    out_local_ = out_features / t;
  }
  int in_features() const { return in_; }
  int local_out() const { return out_local_; }
  void forward(T* out, const T* in, const T* weight, int N) const {
    B::linear_forward(out, in, weight, nullptr, N, in_, out_local_);
  }
  // dinp += dout · W_r (this rank's partial; the caller reduces it with f's or g's backward),
  // dweight += dout^T · in (fp32).
  void backward(T* dinp, float* dweight, const T* dout, const T* in, const T* weight, int N) const {
    B::linear_backward(dinp, dweight, nullptr, dout, in, weight, N, in_, out_local_);
  }

 private:
  int in_, out_local_;
};

// Y[N, OC] (partial) = X[N, C/t] · W_r^T with W_r = columns [r·C/t, (r+1)·C/t) of [OC, C].
// Input in the parallel region, output a partial sum the caller reduces with f̄ or ḡ.
template <class B>
class RowParallelLinear {
 public:
  using T = typename B::T;
  RowParallelLinear(int in_features, int out_features, const comm::Communicator* tp)
      : out_(out_features) {
    const int t = tp_size(tp);
    GROVE_CHECK(in_features % t == 0)
        << "row-parallel linear: tp=" << t << " does not divide " << in_features << " inputs";
    in_local_ = in_features / t;
  }
  int local_in() const { return in_local_; }
  int out_features() const { return out_; }
  void forward(T* out, const T* in, const T* weight, int N) const {
    B::linear_forward(out, in, weight, nullptr, N, in_local_, out_);
  }
  void backward(T* dinp, float* dweight, const T* dout, const T* in, const T* weight, int N) const {
    B::linear_backward(dinp, dweight, nullptr, dout, in, weight, N, in_local_, out_);
  }

 private:
  int in_local_, out_;
};

}  // namespace grove::parallel
