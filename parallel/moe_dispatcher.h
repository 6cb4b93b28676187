// Expert-parallel dispatch (docs/moe.md#expert-parallel-dispatch), as one staged interface
// so that the plain all-to-all dispatcher here and a compressed one can be
// swapped and tested on the same tokens. The stages of one MoE layer, forward then backward:
//
//   route       Router::forward                   (moe_router.h; not a dispatcher stage)
//   preprocess  Dispatcher::preprocess            layout from the routing, counts exchanged
//   dispatch    Dispatcher::dispatch              token rows → the ranks holding their experts
//   experts     swiglu_experts_forward            (moe_experts.h) on the rows dispatch returned
//   combine     Dispatcher::combine               expert outputs back, out[t] = Σ_j w_{t,j}·y_{t,j}
//   backward    combine_backward → swiglu_experts_backward → dispatch_backward → Router::backward
//
// Legend: T local tokens, h model dim, k slots per token, E experts, ep expert-parallel ranks,
// E_l = E / ep local experts (rank r holds experts [r·E_l, (r+1)·E_l)), R rows this rank's
// experts received, S (token, slot) assignments this rank sent (kept ones only).
//
// Invariants of every Dispatcher:
//  - Every stage is collective over the ep group and issues the same collectives in the same
//    order on every rank whatever the routing (zero tokens to an expert, to a rank, from a rank,
//    T = 0). A null ep group or one of size one communicates nothing.
//  - The rows handed to the experts are grouped by local expert: expert l owns rows
//    [offset[l], offset[l+1]); within an expert, rows are ordered by source rank, then token, then
//    slot — so with tokens split contiguously over ranks the order is the single-rank order.
//  - The backward stages must follow the forward stages of the same step; they WRITE their
//    outputs except dispatch_backward, which accumulates into din (+=).
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "parallel/moe_exchange.h"
#include "parallel/moe_router.h"

namespace grove::parallel {

// The rows this rank's experts work on.
struct ExpertBatch {
  const float* x = nullptr;     // [R, h]
  int64_t rows = 0;             // R
  std::vector<int64_t> offset;  // [E_l + 1]
};

// Communication of the dispatcher's stages (this rank), accumulated until reset_stats().
struct DispatchStats {
  int64_t bytes_sent = 0;      // all-to-all bytes to other ranks (counts + rows), fwd + bwd
  double dispatch_a2a_ms = 0;  // forward: counts exchange and token rows out
  double combine_a2a_ms = 0;   // forward: expert outputs back
  double backward_a2a_ms = 0;  // backward: both exchanges
};

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  virtual const char* name() const = 0;

  // preprocess: the per-destination layout of the routing (and of x, for dispatchers that
  // compress); exchanges the counts. `routing` and x[T,h] must stay alive and unchanged until
  // dispatch returns; the dispatcher copies what the backward needs.
  virtual void preprocess(const Routing& routing, const float* x) = 0;
  // dispatch: sends the token rows; returns the rows this rank's experts must process. The
  // returned buffer stays valid (and is what the experts' backward reads) until the next
  // preprocess.
  virtual ExpertBatch dispatch(const float* x) = 0;
  // combine: y[R,h] expert outputs, in the layout of dispatch's rows → out[T,h] (written).
  virtual void combine(float* out, const float* y) = 0;

  // Backward of combine: dout[T,h] → dy[R,h] (written, dispatch's layout) and
  // dweight[T,k] = dL/dw_{t,j} (written; 0 for dropped assignments).
  virtual void combine_backward(float* dy, float* dweight, const float* dout) = 0;
  // Backward of dispatch: dx[R,h] (gradient of the expert inputs) → din[T,h] += ....
  virtual void dispatch_backward(float* din, const float* dx) = 0;

  // Bytes kept from forward to backward (the last forward).
  virtual size_t stash_bytes() const = 0;
  const DispatchStats& stats() const { return stats_; }
  void reset_stats() { stats_ = DispatchStats{}; }

 protected:
  DispatchStats stats_;
};

// The plain dispatcher: count tokens per expert → all_to_all of counts → permute (sort the
// assignments by expert, hence by destination rank) → all_to_all_v → sort by local expert. The
// combine and both backward stages run the same exchanges in reverse. Collectives per step,
// always, in this order: forward all_to_all(counts), all_to_all_v(x), all_to_all_v(y); backward
// all_to_all_v(dy), all_to_all_v(dx).
class AllToAllDispatcher final : public Dispatcher {
 public:
  // ep_group: null or size one = all experts local. num_experts % ep size == 0.
  AllToAllDispatcher(int num_experts, int h, comm::Communicator* ep_group);
  const char* name() const override { return "all_to_all"; }

  void preprocess(const Routing& routing, const float* x) override;
  ExpertBatch dispatch(const float* x) override;
  void combine(float* out, const float* y) override;
  void combine_backward(float* dy, float* dweight, const float* dout) override;
  void dispatch_backward(float* din, const float* dx) override;
  size_t stash_bytes() const override;

 private:
  ExpertExchange xch_;  // counts, layouts and row all-to-alls over the ep group
  int E_, h_;
  int T_ = 0, k_ = 0;
  int64_t S_ = 0;
  std::vector<float> weight_;        // [T, k] combine weights
  std::vector<int64_t> perm_;        // [S] permuted row → assignment t·k + j
  std::vector<int64_t> pos_;         // [T, k] assignment → permuted row, −1 if dropped
  std::vector<int64_t> send_count_;  // [E] assignments to each expert
  std::vector<int64_t> recv_count_;  // [ep, E_l] rows from source s for local expert l
  std::vector<float> send_;          // [S, h] scratch: permuted rows
  std::vector<float> recv_;          // [R, h] scratch: received layout
  std::vector<float> expert_in_;     // [R, h] stash: the experts' input
  std::vector<float> returned_;      // [S, h] stash: expert outputs back, permuted order
};

}  // namespace grove::parallel
