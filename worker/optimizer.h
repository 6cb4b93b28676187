// AdamW with decoupled weight decay, global-norm gradient clipping and the learning-rate
// schedule (linear warmup, cosine decay to min_lr).
//
// The moments m and v are Weights of the same shapes as the parameters, so they are saved in
// and restored from checkpoints by name ("adam_m.layers.0.wq"), which makes resume exact.
#pragma once

#include "model/weights.h"
#include "spec/train_config.h"

namespace grove {

// Learning rate for optimizer step `step` (1-based): linear warmup over warmup_steps, then cosine
// from lr down to min_lr at the last step.
float learning_rate(const TrainOptions& t, int step);

// Global L2 norm of all gradients (accumulated in double, in a fixed order).
double grad_global_norm(const Weights& grads);
// Scales gradients so their global norm is at most max_norm; returns the scale applied.
float clip_gradients(Weights& grads, double norm, float max_norm);

// The AdamW state: moments m and v as ONE flat fp32 buffer each (ParamLayout), on the model's
// device, with named views for the checkpoints. The update itself runs on the flat buffers
// (adamw_step in worker/training_model_impl.h); step() below is the per-tensor host form.
class AdamW {
 public:
  explicit AdamW(const ModelConfig& c, int tp = 1, int ep = 1, Device device = Device::kCPU);

  // One update with learning rate `lr` (host tensors); increments the step count first (bias
  // correction uses the 1-based step). Weight decay applies to matrices only, not to norm weights.
  void step(Weights& params, const Weights& grads, float lr, const TrainOptions& t);

  AdamW clone() const;
  int steps_taken() const { return step_; }
  void set_steps_taken(int s) { step_ = s; }
  Weights& m() { return m_; }
  Weights& v() { return v_; }
  const ParamLayout& layout() const { return layout_; }
  float* m_flat() { return m_flat_.data<float>(); }
  float* v_flat() { return v_flat_.data<float>(); }
  // Copies the moments and the step count from another AdamW of the same layout (any devices).
  void copy_from(const AdamW& other);

 private:
  ParamLayout layout_;
  Tensor m_flat_, v_flat_;
  Weights m_, v_;
  int step_ = 0;
};

}  // namespace grove
