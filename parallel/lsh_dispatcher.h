// LshDispatcher: the expert-parallel all-to-all with LSH-compressed rows (docs/lsh.md), the
// same stages as AllToAllDispatcher (moe_dispatcher.h), so MoeLayer runs it
// after set_dispatcher and the two are tested against each other on the same tokens.
//
// Legend: T local tokens, h model dim, k slots, E experts, ep ranks, E_l = E / ep local experts,
// a = (t, j) a kept assignment of token t to expert e_a with combine weight w_a, b(a) its
// centroid (one per bucket per destination expert), n_b the bucket's size, C centroids this rank
// sends, R centroid rows this rank's experts receive.
//
// Forward (per source rank; a "group" is the tokens this rank routes to one expert):
//   preprocess  hash every token once (LshCompressor; with cfg.center, each group's rows are
//               hashed as x − μ, μ the group's mean row); per expert, a group of ≥ min_tokens
//               tokens is bucketed by id (with cfg.target_compression, by the longest prefix of
//               the L codes that keeps n / B ≥ target), a smaller one (or any, when disabled or
//               within the first cfg.warmup_steps training steps, see set_step) keeps one
//               bucket per token;
//               all_to_all of (centroids, tokens) per expert
//   dispatch    c_b = mean of its tokens (x_t − c_b, the residual, stays here); all_to_all_v of
//               the centroids, sorted by local expert as in the plain dispatcher
//   experts     y_b = Expert(c_b)  (the caller, on the rows dispatch returned)
//   combine     all_to_all_v of y back;  out_t = Σ_j w_a · (y_b(a) + (x_t − c_b(a)))
//               (cfg.compensate = false: out_t = Σ_j w_a · y_b(a), and the backward below
//               drops the residual path: dweight_a = dout_t·y_b, din_t += Σ_j dc_b / n_b)
// "Residual error compensation" (docs/lsh.md#forward): the token's bucket result plus its own
// residual x − c, inside the combine weight so that Σ_j w_a = 1 gives out = x for identity
// experts. A bucket of one token has residual exactly 0: the result is the plain path's, bit for
// bit (same rows, same order, same arithmetic).
//
// Backward (the exact gradient of that forward; routing and buckets are piecewise constant):
//   combine_backward   dweight_a = dout_t · (y_b + x_t − c_b);  dy_b = Σ_{a ∈ b} w_a·dout_t
//                      (summed per bucket: one row per centroid goes back, compressed)
//   dispatch_backward  all_to_all_v of dc_b = J_b^T dy_b (the experts' input gradient) back;
//                      din_t += Σ_j [ w_a·dout_t + (dc_b − dy_b) / n_b ]
//                      (residual path: +w·dout through x_t and −w·dout through −c_b; the mean's
//                      backward spreads the bucket's gradient over its n_b tokens). For n_b = 1
//                      the two dy terms cancel and din_t += dc_b exactly, as in the plain path.
// Collectives per step, always, in this order (as AllToAllDispatcher): forward all_to_all(counts),
// all_to_all_v(centroids), all_to_all_v(y); backward all_to_all_v(dy), all_to_all_v(dc).
// Receivers get no per-bucket sizes: the experts' forward and weight gradients need only the
// centroid rows and their summed gradients; the sizes stay where the mean's backward needs them.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "parallel/lsh_compressor.h"
#include "parallel/moe_dispatcher.h"
#include "parallel/moe_exchange.h"

namespace grove::parallel {

// The compression of the last step on this rank (forward + backward).
struct LshMetrics {
  int64_t groups = 0;              // non-empty (expert) groups this rank sent
  int64_t compressed_groups = 0;   // of those, bucketed (≥ min_tokens and enabled)
  int64_t assignments = 0;         // kept (token, slot) rows the plain path would send
  int64_t centroids = 0;           // rows sent instead (C)
  int64_t bytes_sent = 0;          // all-to-all bytes to other ranks, counts + rows, fwd + bwd
  int64_t bytes_uncompressed = 0;  // what AllToAllDispatcher sends for the same routing
  double residual_norm_sum = 0;    // Σ_a ‖x_t − c_b(a)‖₂ over kept assignments
  double token_norm_sum = 0;       // Σ_a ‖x_t‖₂ (to make the residual relative)
  int64_t hash_codes_sum = 0;      // Σ over compressed groups of the hash codes used (≤ L each)
  bool warmup = false;             // enabled, but still in moe.lsh.warmup_steps: nothing bucketed
  double compression_ratio() const {
    return centroids > 0 ? double(assignments) / double(centroids) : 1.0;
  }
  double bytes_ratio() const {
    return bytes_sent > 0 ? double(bytes_uncompressed) / double(bytes_sent) : 1.0;
  }
  double mean_residual_norm() const {
    return assignments > 0 ? residual_norm_sum / double(assignments) : 0.0;
  }
  double mean_hash_codes() const {
    return compressed_groups > 0 ? double(hash_codes_sum) / double(compressed_groups) : 0.0;
  }
  double relative_residual() const {
    return token_norm_sum > 0 ? residual_norm_sum / token_norm_sum : 0.0;
  }
};

class LshDispatcher final : public Dispatcher {
 public:
  // ep_group: null or size one = all experts local. num_experts % ep == 0; cfg valid for h.
  LshDispatcher(int num_experts, int h, comm::Communicator* ep_group, const LshOptions& cfg);
  const char* name() const override { return "lsh_all_to_all"; }

  void preprocess(const Routing& routing, const float* x) override;
  ExpertBatch dispatch(const float* x) override;
  void combine(float* out, const float* y) override;
  void combine_backward(float* dy, float* dweight, const float* dout) override;
  void dispatch_backward(float* din, const float* dx) override;
  size_t stash_bytes() const override;

  // The warm-up clock: training steps completed before the coming pass (cfg.warmup_steps
  // counts them). The trainer sets its global step before every forward, so a run resumed from
  // a checkpoint continues the schedule instead of warming up again; each backward pass advances
  // the clock by one, so a caller that never sets it counts backward passes.
  void set_step(int64_t step) { step_ = step; }
  int64_t step() const { return step_; }

  const LshMetrics& metrics() const { return metrics_; }
  const LshCompressor& compressor() const { return lsh_; }
  // [T, k] centroid row of each assignment of the last step (−1: dropped). Two steps with
  // equal values bucketed identically (tests use it to keep finite differences on one bucketing).
  const std::vector<int64_t>& assignment_centroid() const { return pos_; }

 private:
  // Adds row bytes sent to other ranks to both stats_ and metrics_.
  int64_t count_bytes(int64_t bytes);
  // ids[m] = id(x_t − μ) for the group's members (t = members[m] / k), μ the group's mean row.
  void hash_centered(uint64_t* ids, const int64_t* members, int64_t n);
  // With target_compression: reduces ids[n] to the longest prefix of codes that keeps
  // n / B ≥ target (at least one code); returns the number of codes kept.
  int choose_codes(uint64_t* ids, int64_t n);

  ExpertExchange xch_;  // counts, layouts and row all-to-alls over the ep group
  int ep_size_, ep_rank_, E_, E_l_, h_;
  LshCompressor lsh_;
  int T_ = 0, k_ = 0;
  int64_t C_ = 0, R_ = 0, M_ = 0;  // centroids sent, rows received, kept assignments
  std::vector<float> weight_;      // [T, k] combine weights
  std::vector<float> x_;           // [T, h] stash: the tokens (residual x − c is formed from it)
  std::vector<uint64_t> ids_;      // [T] bucket ids
  std::vector<int64_t> pos_;       // [T, k] assignment → centroid row, −1 if dropped
  std::vector<int64_t> kept_tok_, kept_cen_;     // [M] kept assignments in (t, j) order: t, b
  std::vector<float> kept_w_;                    // [M] their combine weights
  std::vector<int64_t> count_;                   // [C] bucket sizes n_b
  std::vector<uint8_t> has_residual_;            // [T] some slot of t is in a bucket of > 1
  std::vector<int64_t> send_count_;              // [E] centroids to each expert
  std::vector<int64_t> token_count_;             // [E] kept assignments to each expert
  std::vector<int64_t> counts_out_, counts_in_;  // [ep, E_l, 2] (centroids, tokens) exchanged
  std::vector<int64_t> recv_count_;              // [ep, E_l] centroids from s for local l
  std::vector<int64_t> scratch_bucket_;          // [T] bucketize scratch
  std::vector<uint64_t> scratch_ids_;            // [T]
  std::vector<double> acc_;                      // [C, h] scratch: centroid sums
  std::vector<float> centroid_;                  // [C, h] stash: centroids sent
  std::vector<float> returned_;                  // [C, h] stash: expert outputs back
  std::vector<float> recv_;                      // [R, h] scratch
  std::vector<float> expert_in_;                 // [R, h] stash: the experts' input
  std::vector<float> dsum_;                      // [C, h] backward: Σ_{a∈b} w_a·dout_t
  std::vector<float> back_;                      // [C, h] backward scratch
  std::vector<float> rgrad_;                     // [T, h] backward: residual path Σ w·dout
  std::vector<double> mu_acc_;                   // [h] centring: the group's row sum
  std::vector<float> centred_;                   // [h] centring: x_t − μ
  std::vector<uint64_t> prefix_ids_;             // [n] target compression: prefix ids
  int64_t step_ = 0;                             // warm-up clock (set_step)
  LshMetrics metrics_;
};

}  // namespace grove::parallel
