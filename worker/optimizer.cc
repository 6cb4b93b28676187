#include "worker/optimizer.h"

#include <cmath>

#include "kernels/cpu/ops.h"

namespace grove {

float learning_rate(const TrainOptions& t, int step) {
  if (t.warmup_steps > 0 && step <= t.warmup_steps)
    return t.lr * static_cast<float>(step) / static_cast<float>(t.warmup_steps);
  const int decay_steps = t.steps - t.warmup_steps;
  if (decay_steps <= 0) return t.lr;
  const double progress =
      std::min(1.0, static_cast<double>(step - t.warmup_steps) / static_cast<double>(decay_steps));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return static_cast<float>(t.min_lr + (t.lr - t.min_lr) * cosine);
}

double grad_global_norm(const Weights& grads) {
  double sum = 0.0;
  for (const NamedTensor& g : grads.named())
    sum += cpu::sum_squares(g.tensor.data<float>(), g.tensor.numel());
  return std::sqrt(sum);
}

float clip_gradients(Weights& grads, double norm, float max_norm) {
  if (max_norm <= 0.0f || norm <= max_norm || !std::isfinite(norm)) return 1.0f;
  const float scale = static_cast<float>(max_norm / (norm + 1e-6));
  for (NamedTensor& g : grads.named())
    cpu::scale_inplace(g.tensor.data<float>(), scale, g.tensor.numel());
  return scale;
}

AdamW::AdamW(const ModelConfig& c, int tp, int ep, Device device)
    : layout_(ParamLayout::Of(c, tp, ep)),
      m_flat_(Tensor::zeros({layout_.size}, DType::kF32, device)),
      v_flat_(Tensor::zeros({layout_.size}, DType::kF32, device)),
      m_(Weights::View(m_flat_, layout_)),
      v_(Weights::View(v_flat_, layout_)) {}

AdamW AdamW::clone() const {
  AdamW o = *this;
  o.m_flat_ = m_flat_.clone();
  o.v_flat_ = v_flat_.clone();
  o.m_ = Weights::View(o.m_flat_, layout_);
  o.v_ = Weights::View(o.v_flat_, layout_);
  return o;
}

void AdamW::copy_from(const AdamW& other) {
  GROVE_CHECK(other.layout_.size == layout_.size) << "AdamW::copy_from: another layout";
  m_flat_.copy_from(other.m_flat_);
  v_flat_.copy_from(other.v_flat_);
  step_ = other.step_;
}

void AdamW::step(Weights& params, const Weights& grads, float lr, const TrainOptions& t) {
  ++step_;
  std::vector<NamedTensor> p = params.named(), g = grads.named(), m = m_.named(), v = v_.named();
  for (size_t i = 0; i < p.size(); ++i) {
    const float wd = p[i].tensor.ndim() >= 2 ? t.weight_decay : 0.0f;
    cpu::adamw_update(p[i].tensor.data<float>(), g[i].tensor.data<float>(),
                      m[i].tensor.data<float>(), v[i].tensor.data<float>(), p[i].tensor.numel(), lr,
                      t.beta1, t.beta2, t.adam_eps, wd, step_);
  }
}

}  // namespace grove
