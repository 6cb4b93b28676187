#include "parallel/tensor_parallel.h"

#include <cstring>

#include "core/status.h"
#include "kernels/cpu/ops.h"

namespace grove::parallel {

namespace {
bool active(const comm::Communicator* tp) {
  return tp != nullptr && tp->size() > 1;
}
}  // namespace

int tp_size(const comm::Communicator* tp) {
  return tp ? tp->size() : 1;
}
int tp_rank(const comm::Communicator* tp) {
  return tp ? tp->rank() : 0;
}

void copy_to_tp_region_backward(comm::Communicator* tp, float* grad, int64_t n) {
  if (active(tp)) tp->all_reduce(grad, n, DType::kF32, comm::ReduceOp::kSum);
}

void reduce_from_tp_region_forward(comm::Communicator* tp, float* x, int64_t n) {
  if (active(tp)) tp->all_reduce(x, n, DType::kF32, comm::ReduceOp::kSum);
}

void gather_from_sequence_region_forward(comm::Communicator* tp, const float* shard, float* full,
                                         int64_t rows, int64_t cols) {
  const int t = tp_size(tp);
  GROVE_CHECK(rows % t == 0) << "sequence-parallel gather: " << rows << " rows do not split over "
                             << t << " TP ranks";
  if (!active(tp)) {
    if (shard != full) std::memcpy(full, shard, sizeof(float) * rows * cols);
    return;
  }
  tp->all_gather(shard, full, rows / t * cols, DType::kF32);
}

void gather_from_sequence_region_backward(comm::Communicator* tp, const float* dfull, float* dshard,
                                          int64_t rows, int64_t cols) {
  if (!active(tp)) {
    if (dfull != dshard) std::memcpy(dshard, dfull, sizeof(float) * rows * cols);
    return;
  }
  tp->reduce_scatter(dfull, dshard, rows / tp->size() * cols, DType::kF32, comm::ReduceOp::kSum);
}

void scatter_to_sequence_region_forward(comm::Communicator* tp, const float* partial, float* shard,
                                        int64_t rows, int64_t cols) {
  gather_from_sequence_region_backward(tp, partial, shard, rows, cols);
}

void scatter_to_sequence_region_backward(comm::Communicator* tp, const float* dshard, float* dfull,
                                         int64_t rows, int64_t cols) {
  gather_from_sequence_region_forward(tp, dshard, dfull, rows, cols);
}

ColumnParallelLinear::ColumnParallelLinear(int in_features, int out_features,
                                           const comm::Communicator* tp)
    : in_(in_features) {
  const int t = tp_size(tp);
  GROVE_CHECK(out_features % t == 0)
      << "column-parallel linear: tp=" << t << " does not divide " << out_features << " outputs";
  out_local_ = out_features / t;
}

void ColumnParallelLinear::forward(float* out, const float* in, const float* weight, int N) const {
  cpu::linear_forward(out, in, weight, static_cast<const float*>(nullptr), N, in_, out_local_);
}

void ColumnParallelLinear::backward(float* dinp, float* dweight, const float* dout, const float* in,
                                    const float* weight, int N) const {
  cpu::linear_backward(dinp, dweight, static_cast<float*>(nullptr), dout, in, weight, N, in_,
                       out_local_);
}

RowParallelLinear::RowParallelLinear(int in_features, int out_features,
                                     const comm::Communicator* tp)
    : out_(out_features) {
  const int t = tp_size(tp);
  GROVE_CHECK(in_features % t == 0)
      << "row-parallel linear: tp=" << t << " does not divide " << in_features << " inputs";
  in_local_ = in_features / t;
}

void RowParallelLinear::forward(float* out, const float* in, const float* weight, int N) const {
  cpu::linear_forward(out, in, weight, static_cast<const float*>(nullptr), N, in_local_, out_);
}

void RowParallelLinear::backward(float* dinp, float* dweight, const float* dout, const float* in,
                                 const float* weight, int N) const {
  cpu::linear_backward(dinp, dweight, static_cast<float*>(nullptr), dout, in, weight, N, in_local_,
                       out_);
}

}  // namespace grove::parallel
