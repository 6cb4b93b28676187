// The MoE router (docs/moe.md#router): the "route" stage that precedes every dispatcher.
//
// Legend: T local tokens, h model dim, E experts, k experts per token.
// Forward, in fp32 (sums of exponentials in double):
//   logits[T,E] = x[T,h] · W_r[E,h]^T,  p = softmax(logits),  lse[T] = logsumexp(logits)
//   top-k by logit (a tie goes to the lower expert id), combine weights w_j = p_{e_j} / Σ_j'
//   p_{e_j'} capacity (capacity_factor > 0): see MoeOptions; dropped assignments are marked, not
//   removed aux = α·E·Σ_i f_i·P_i,  f_i = (assignments routed to i, before dropping) / (T_all·k),
//                           P_i = Σ_t p_{t,i} / T_all
//   z   = β·Σ_t lse_t² / T_all
// T_all and the sums run over every token of the stats group (one all_reduce of E·3 + 3 doubles,
// issued by every member whatever its T, including T = 0), so aux and z are identical on every
// rank. f_i is a count and carries no gradient (as in Switch / Megatron).
//
// Backward: d/dlogits of Σ_{t,j} dweight_{t,j}·w_{t,j} + loss_scale·(aux + z), where the aux and z
// terms are the derivatives with respect to THIS rank's tokens only; summed over the stats group
// they give the gradient of aux + z exactly once. dW_r and din are accumulated (+=).
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "spec/moe_options.h"

namespace grove::parallel {

// The routing of this rank's T tokens: the route stage's output, every dispatcher's input.
struct Routing {
  int T = 0, k = 0;
  std::vector<int32_t> expert;  // [T, k] chosen expert ids, distinct within a token
  std::vector<float> weight;    // [T, k] combine weights (renormalised over the k when k > 1)
  std::vector<uint8_t> kept;    // [T, k] 1 = sent to its expert, 0 = dropped by capacity
};

// Token statistics over the stats group, from the last forward.
struct RouterStats {
  int64_t tokens = 0;                       // T_all
  std::vector<int64_t> tokens_per_expert;   // [E] (token, slot) assignments routed, before dropping
  std::vector<int64_t> dropped_per_expert;  // [E] of those, dropped by capacity
  float aux_loss = 0, z_loss = 0;           // already multiplied by α and β
};

class Router {
 public:
  Router(const MoeOptions& cfg, int h, int max_tokens);

  // Writes *routing for x[T,h] with router weight w[E,h]. Collective over `stats` (may be null).
  void forward(Routing* routing, const float* x, const float* w, int T, comm::Communicator* stats);
  // din[T,h] += ..., dw[E,h] += ... for the x of the last forward; dweight[T,k] = dL/dw_{t,j}.
  void backward(float* din, float* dw, const float* dweight, const Routing& routing, const float* x,
                const float* w, float loss_scale);

  const RouterStats& stats() const { return stats_; }
  size_t stash_bytes() const;  // probs and lse of the last forward

 private:
  int E_, k_, h_, max_tokens_;
  float capacity_factor_, aux_coef_, z_coef_;
  int T_ = 0;
  std::vector<float> probs_;     // [T_max, E] softmax (kept for backward)
  std::vector<float> lse_;       // [T_max]
  std::vector<float> dlogits_;   // [T_max, E] the logits in the forward, dlogits in the backward
  std::vector<int32_t> counts_;  // [E] assignments per expert in the stats group (last forward)
  RouterStats stats_;
};

}  // namespace grove::parallel
