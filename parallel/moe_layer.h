// MoeLayer: a mixture-of-experts SwiGLU layer with expert parallelism (docs/moe.md).
//
// Legend: T local tokens (≤ max_tokens), h model dim, f expert hidden, E experts, k slots per
// token, ep expert-parallel ranks, E_l = E / ep experts held here (rank r of the ep group holds
// experts [r·E_l, (r+1)·E_l)).
//
//   out[t] = Σ_j w_{t,j} · Expert_{e_{t,j}}(x_t)     (dropped assignments contribute 0)
//   aux_loss(), z_loss(): Switch load-balancing and router z-loss, times their coefficients,
//   computed over every token of the stats group (identical on all its ranks).
//
// Stages: route (Router) → preprocess → dispatch → experts → combine (a
// Dispatcher, swappable via set_dispatcher) and backward in reverse; see moe_dispatcher.h.
//
// Collectives: forward issues all_reduce(stats group) then the dispatcher's exchanges (ep group);
// backward only the dispatcher's. Every rank issues them in the same order whatever the routing,
// also with T = 0. Null or size-one groups communicate nothing.
//
// Gradients are ACCUMULATED (+=) into grads(); the caller zeroes them once per step. backward()
// gives, on each rank, this rank's share of the gradient of
//     L = Σ_ranks Σ_t out_t · dout_t  +  loss_scale · (aux + z)
// (aux and z counted ONCE, not once per rank). Reductions the CALLER must do after backward:
//   - "experts.*": SUM over the edp group (ranks holding the same experts). Each rank's expert
//     grads already cover every token its ep group routed to its experts; summing over edp
//     covers the whole stats group. Do not also sum over ep (different experts).
//   - "router": SUM over the group that sums the dense gradients of the same tokens (the
//     dp × cp group, and tp too when tp ranks hold different (sequence-parallel) tokens) — i.e.
//     over the stats group. Each rank's router grad is a partial sum over its own tokens.
//   - din is complete for this rank's tokens (no reduction).
// If the trainer averages gradients (divides the dense sums by the data-parallel size D, the
// number of ranks holding distinct tokens), it divides the edp-summed expert grads and the router
// grads by the SAME D — not by edp — so that EP = N equals EP = 1. Since aux and z are counted
// once in the sum, a trainer that divides by D and wants aux + z at full weight passes
// loss_scale = D × its own scale.
// The stats group and the ep group must hold distinct tokens on each rank (with TP, sequence-
// parallel shards); replicated tokens would be counted, and sent to the experts, more than once.
//
// Memory: the router and token-sized buffers are allocated for max_tokens in the constructor;
// the per-expert row buffers depend on the routing (dropless: up to ep·max_tokens·k rows on one
// rank) and grow to the largest step seen, never shrink. stash_bytes() reports what the last
// forward keeps for the backward.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "spec/moe_options.h"
#include "parallel/moe_dispatcher.h"
#include "parallel/moe_experts.h"
#include "parallel/moe_router.h"

namespace grove::parallel {

// Per-step measurements of one layer (the last forward and backward).
struct MoeMetrics {
  int64_t tokens = 0;                       // tokens over the stats group
  std::vector<int64_t> tokens_per_expert;   // [E] (token, slot) assignments routed (stats group)
  std::vector<int64_t> dropped_per_expert;  // [E] of those dropped by capacity (stats group)
  int64_t dropped = 0;                      // Σ dropped_per_expert
  float aux_loss = 0, z_loss = 0;
  int64_t a2a_bytes_sent = 0;  // this rank, to other ranks, forward + backward
  double router_ms = 0;        // forward: router, top-k, capacity, stats all_reduce
  double dispatch_a2a_ms = 0;  // forward: counts + token rows all-to-alls
  double experts_ms = 0;       // forward: grouped expert GEMMs
  double combine_a2a_ms = 0;   // forward: outputs back
  double forward_ms = 0;       // whole forward
  double backward_a2a_ms = 0;  // backward: both all-to-alls
  double backward_ms = 0;      // whole backward
  double a2a_ms() const { return dispatch_a2a_ms + combine_a2a_ms + backward_a2a_ms; }
  double total_ms() const { return forward_ms + backward_ms; }
};

class MoeLayer {
 public:
  // cfg must be valid for the ep group's size (cfg.Validate). f: the experts' hidden size (the
  // caller resolves cfg.expert_hidden(model_ffn)). Parameters start at zero: call init() or
  // load_full(), or write params() directly.
  MoeLayer(const MoeOptions& cfg, int h, int f, int max_tokens, comm::Communicator* ep_group,
           comm::Communicator* stats_group);

  // out[T,h] (written) for in[T,h]. Returns aux_loss() + z_loss().
  float forward(float* out, const float* in, int T);
  // din[T,h] += d/d(in) of (Σ out·dout + loss_scale·(aux + z)); grads +=. After forward().
  void backward(float* din, const float* dout, float loss_scale);

  float aux_loss() const { return router_.stats().aux_loss; }
  float z_loss() const { return router_.stats().z_loss; }
  MoeMetrics metrics() const;
  size_t stash_bytes() const;

  // Parameters and gradients, stable names and order:
  //   "router" [E, h], "experts.w_gate" [E_l, f, h], "experts.w_up" [E_l, f, h],
  //   "experts.w_down" [E_l, h, f].  (Tensors share storage with the layer.)
  std::vector<NamedTensor> params() const;
  std::vector<NamedTensor> grads() const;
  void zero_grads();
  // Replaces the layer's parameter and gradient tensors by views owned elsewhere (e.g. the
  // model's flat buffers), same names and shapes as params() / grads(); the layer then reads and
  // accumulates into them. No gradients (empty): the layer keeps its own.
  void bind(const std::vector<NamedTensor>& params, const std::vector<NamedTensor>& grads);

  // The full parameters of all E experts from `seed` (same names, expert tensors with E rows):
  // normal(0, std), w_down normal(0, out_std); one Rng stream per tensor, so every ep layout
  // draws the same numbers.
  static std::vector<NamedTensor> init_full(const MoeOptions& cfg, int h, int f, uint64_t seed,
                                            double std, double out_std);
  // init_full(...) and keep this rank's experts: EP = N equals EP = 1 from the same seed.
  void init(uint64_t seed, double std, double out_std);
  // Copies this rank's slice of full tensors (names as init_full; expert tensors [E, ...]).
  void load_full(const std::vector<NamedTensor>& full);
  // Experts [ep_rank·E_l, (ep_rank+1)·E_l) of a full expert tensor [E, ...].
  static Tensor slice_experts(const Tensor& full, int ep, int ep_rank);

  void set_dispatcher(std::unique_ptr<Dispatcher> d) { dispatcher_ = std::move(d); }
  Dispatcher& dispatcher() { return *dispatcher_; }
  const MoeOptions& config() const { return cfg_; }
  int ep_size() const { return ep_size_; }
  int ep_rank() const { return ep_rank_; }
  int local_experts() const { return E_l_; }

 private:
  MoeOptions cfg_;
  int h_, f_, max_tokens_, ep_size_, ep_rank_, E_l_;
  comm::Communicator* stats_;
  Router router_;
  std::unique_ptr<Dispatcher> dispatcher_;
  Routing routing_;
  int T_ = -1;  // tokens of the last forward; -1 before the first

  Tensor router_w_, w_gate_, w_up_, w_down_;  // [E,h], [E_l,f,h], [E_l,f,h], [E_l,h,f]
  Tensor d_router_w_, dw_gate_, dw_up_, dw_down_;

  std::vector<float> x_;          // [T_max, h] stash: the input (router backward)
  ExpertBatch batch_;             // rows of the last dispatch (buffer owned by the dispatcher)
  std::vector<float> gate_, up_;  // [R, f] stash
  std::vector<float> y_;          // [R, h] scratch: expert outputs; backward: dy
  std::vector<float> dx_;         // [R, h] backward scratch
  std::vector<float> act_, dact_, dgate_, dup_;  // [R, f] scratch
  std::vector<float> dweight_;                   // [T_max, k] backward scratch

  MoeMetrics timing_;  // the *_ms fields of the last step
};

}  // namespace grove::parallel
