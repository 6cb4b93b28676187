// MoeConfig: the typed configuration of a mixture-of-experts layer (DESIGN.md §7), validated in
// one place with messages that name the field (STYLE.md rule 7).
#pragma once

#include "core/status.h"

namespace grove::parallel {

struct MoeConfig {
  int num_experts = 8;          // E
  int top_k = 2;                // k experts per token; probabilities renormalised when k > 1
  int expert_ffn = 0;           // f, hidden size of each SwiGLU expert; 0: the model's ffn
  float aux_loss_coef = 1e-2f;  // α of the Switch load-balancing loss α·E·Σ f_i·P_i
  float z_loss_coef = 1e-3f;    // β of the router z-loss β·mean(logsumexp(logits)²)
  // 0 = dropless. Otherwise each source rank sends at most ceil(cf · T · k / E) (token, slot)
  // assignments to each expert (T: that rank's tokens); first slots win over second slots, then
  // earlier tokens. A dropped assignment contributes 0 (the residual carries the token).
  float capacity_factor = 0.0f;

  int expert_hidden(int model_ffn) const { return expert_ffn > 0 ? expert_ffn : model_ffn; }
  // OK, or the first problem, e.g. "moe.num_experts=6 is not divisible by parallel.ep=4".
  Status Validate(int ep) const;
};

}  // namespace grove::parallel
