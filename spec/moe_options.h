// MoeOptions: the mixture-of-experts settings of a model (model.moe in the JSON config) and
// LshOptions, its LSH-compressed expert all-to-all (model.moe.lsh). One definition, used by the
// model's config (spec/model_config.h), the MoE layer (parallel/moe_layer.h) and the LSH
// dispatcher (parallel/lsh_compressor.h) alike.
#pragma once

#include <cstdint>

#include "core/status.h"

namespace grove {

// Cross-polytope LSH of the rows an expert all-to-all sends: rows of one (rank, expert) group
// that fall into the same bucket travel as one centroid. Defaults from the num_hashes sweep on
// Brown (bench/lsh/README.md): one hash function keeps convergence, more make the MoE inputs
// collapse into few buckets. Off by default.
struct LshOptions {
  bool enabled = false;  // false: every row is its own bucket (the plain path's rows)
  int num_hashes = 1;    // L hash functions combined into one bucket id
  int rotation_dim = 8;  // r: 2r buckets per hash function; r ≤ h (d_model)
  int min_tokens = 8;    // a (rank, expert) group with fewer tokens is sent uncompressed
  uint64_t seed = 0x15AC0DEull;

  // OK, or the first problem naming the field, e.g. "moe.lsh.rotation_dim=64 must be in
  // [1, h=32]" (checked whether or not enabled).
  Status Validate(int h) const;
};

// Every `every`-th block's MLP is an MoE layer of `num_experts` SwiGLU experts with a top-k
// router. num_experts = 0: a dense model.
struct MoeOptions {
  int num_experts = 0;          // E; 0: dense model
  int top_k = 2;                // k experts per token; probabilities renormalised when k > 1
  int every = 1;                // MoE in blocks every-1, 2·every-1, ... (1: every block)
  int expert_ffn = 0;           // f, hidden size of each SwiGLU expert; 0: the model's ffn
  float aux_loss_coef = 1e-2f;  // α of the Switch load-balancing loss α·E·Σ f_i·P_i
  float z_loss_coef = 1e-3f;    // β of the router z-loss β·mean(logsumexp(logits)²)
  // 0 = dropless. Otherwise each source rank sends at most ceil(cf · T · k / E) (token, slot)
  // assignments to each expert (T: that rank's tokens); first slots win over second slots, then
  // earlier tokens. A dropped assignment contributes 0 (the residual carries the token).
  float capacity_factor = 0.0f;
  LshOptions lsh;

  int expert_hidden(int model_ffn) const { return expert_ffn > 0 ? expert_ffn : model_ffn; }
  // The layer's settings for an expert-parallel size `ep` (needs num_experts >= 1): OK, or the
  // first problem, e.g. "moe.num_experts=6 is not divisible by parallel.ep=4". The model-level
  // checks (every, lsh only when enabled) are ModelConfig::Validate's.
  Status Validate(int ep) const;
};

}  // namespace grove
