// Transformer: a decoder-only language model with explicit forward and backward (DESIGN.md §3).
//
//   x = wte[tokens]                                   [N, h]   N = s*b, rows ordered (s, b)
//   for each block:
//     x2 = x  + Wo · attention(rope(Wq·rms1(x)), rope(Wk·rms1(x)), Wv·rms1(x))
//     x  = x2 + Wdown · (silu(Wgate·rms2(x2)) * Wup·rms2(x2))
//   logits = lm_head · rmsf(x);  loss = mean over valid targets of cross-entropy
//
// All buffers (stash, gradient scratch) are allocated in the constructor for a fixed (b, s), so
// memory is known before step 0. Gradients ACCUMULATE into grads() across backward calls
// (gradient accumulation); call zero_grads() at the start of each optimizer step.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/activations.h"
#include "model/config.h"
#include "model/weights.h"

namespace grove {

class Transformer {
 public:
  // `config` must be valid (ModelConfig::Validate) and seq <= config.max_seq_len.
  Transformer(const ModelConfig& config, int batch, int seq, Recompute mode);

  const ModelConfig& config() const { return config_; }
  int batch() const { return b_; }
  int seq() const { return s_; }
  Recompute recompute() const { return mode_; }
  Weights& params() { return params_; }
  const Weights& params() const { return params_; }
  Weights& grads() { return grads_; }

  // tokens, targets: [s, b] row-major (row = s_idx * b + b_idx). A target < 0 is ignored.
  // Returns the mean loss over valid targets.
  float forward(const int32_t* tokens, const int32_t* targets);
  // Backward of the last forward; d(loss) is scaled by `loss_scale` (1/accumulation steps).
  void backward(float loss_scale = 1.0f);
  void zero_grads() { grads_.zero(); }

  // Logits of the last forward, [N, V]; valid until backward() overwrites them.
  const Tensor& logits() const { return stash_.logits; }
  ActivationReport activation_report() const;
  // Approximate FLOPs of one forward+backward over b*s tokens (matmuls and attention).
  double flops_per_step() const;

 private:
  void block_forward(int l, BlockActivations& a);
  void block_backward(int l, BlockActivations& a);

  ModelConfig config_;
  int b_, s_;
  Recompute mode_;
  Weights params_, grads_;
  ActivationStash stash_;
  Tensor rope_cos_, rope_sin_;  // [max_seq_len, d/2]
  Tensor tokens_, targets_;     // [N] int32, copies of the last forward's inputs
  int64_t valid_targets_ = 0;

  // Gradient scratch, reused by every block in the backward.
  struct GradScratch {
    Tensor dresid;   // [N, h] gradient flowing along the residual stream
    Tensor dln;      // [N, h] gradient w.r.t. an RMSNorm output
    Tensor datt;     // [N, a*d]
    Tensor dq;       // [N, a*d]
    Tensor dk, dv;   // [N, k*d]
    Tensor dact;     // [N, f]
    Tensor dgate;    // [N, f]
    Tensor dup;      // [N, f]
    Tensor dlosses;  // [N]
  } g_;
};

}  // namespace grove
