// MoeOptions: the mixture-of-experts settings of a model (model.moe in the JSON config) and
// LshOptions, its LSH-compressed expert all-to-all (model.moe.lsh). One definition, used by the
// model's config (spec/model_config.h), the MoE layer (parallel/moe_layer.h) and the LSH
// dispatcher (parallel/lsh_compressor.h) alike.
#pragma once

#include <cstdint>

#include "core/status.h"

namespace grove {

// Cross-polytope LSH of the rows an expert all-to-all sends: rows of one (rank, expert) group
// that fall into the same bucket travel as one centroid. Defaults from the study on Brown
// (docs/lsh.md#what-keeps-a-bucket-together): the group's shared component is removed before
// hashing, up to four hash codes are used as far as they keep ≥ 4× compression, and compression
// starts after the early phase in which every MoE input points the same way. Off by default.
struct LshOptions {
  bool enabled = false;  // false: every row is its own bucket (the plain path's rows)
  int num_hashes = 4;    // L hash functions combined into one bucket id (at most; see target)
  int rotation_dim = 8;  // r: 2r buckets per hash function; r ≤ h (d_model)
  int min_tokens = 8;    // a (rank, expert) group with fewer tokens is sent uncompressed
  uint64_t seed = 0x15AC0DEull;
  // What is hashed: false, the rows x; true, x − μ with μ the mean of the rows of the group
  // (the component every token of the group shares is removed before the cross-polytope hash).
  bool center = true;
  // 0: every group is bucketed by all L hash codes. > 0: per group, by the longest prefix
  // code_1..code_l (l ≤ L) whose buckets still compress the group at least this much
  // (n / B_l ≥ target_compression; l = 1 when even one code splits it finer).
  double target_compression = 4.0;
  // Compression starts after this many training steps (the trainer's global step, restored from
  // checkpoints, so a resumed run does not warm up again); before, every row is its own bucket
  // (the plain path).
  int warmup_steps = 50;
  // true: out_t = Σ_j w·(y_b + (x_t − c_b)) (residual error compensation); false: Σ_j w·y_b.
  bool compensate = true;

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
