#include "model/generate.h"

#include <algorithm>

#include "core/status.h"
#include "kernels/cpu/ops.h"

namespace grove {

namespace k = grove::cpu;

int32_t argmax(const float* x, int n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

Generator::Generator(const ModelConfig& config, const Weights& weights, comm::Communicator* cp,
                     int capacity, parallel::CpAttention attention)
    : config_(config),
      w_(weights),
      cp_(cp),
      cache_(cp ? cp->size() : 1, cp ? cp->rank() : 0, config.n_layers, /*B=*/1, config.kv_heads(),
             config.head_dim(), capacity),
      attn_(attention, cp, cache_, config.n_heads) {
  GROVE_CHECK(capacity > 0) << "generator: capacity " << capacity << " must be positive";
  GROVE_CHECK(static_cast<int>(weights.layers.size()) == config.n_layers)
      << "generator: the weights have " << weights.layers.size() << " layers, the config "
      << config.n_layers;
  const int h = config.d_model, d = config.head_dim(), f = config.ffn();
  const int qd = config.n_heads * d, kvd = config.kv_heads() * d;
  rope_cos_ = Tensor::empty({capacity, d / 2});
  rope_sin_ = Tensor::empty({capacity, d / 2});
  k::rope_table(rope_cos_.data<float>(), rope_sin_.data<float>(), capacity, d, config.rope_theta);
  x_ = Tensor::empty({h});
  ln_ = Tensor::empty({h});
  rstd_ = Tensor::empty({1});
  q_ = Tensor::empty({qd});
  k_ = Tensor::empty({kvd});
  v_ = Tensor::empty({kvd});
  att_ = Tensor::empty({qd});
  proj_ = Tensor::empty({h});
  gate_ = Tensor::empty({f});
  up_ = Tensor::empty({f});
  act_ = Tensor::empty({f});
  logits_ = Tensor::empty({config.vocab_size});
}

const float* Generator::step(int32_t token) {
  const ModelConfig& c = config_;
  GROVE_CHECK(token >= 0 && token < c.vocab_size)
      << "generator: token " << token << " outside the vocabulary of " << c.vocab_size;
  const int h = c.d_model, d = c.head_dim(), f = c.ffn();
  const int a = c.n_heads, kv = c.kv_heads();
  const int pos = cache_.begin_token();
  float* x = x_.data<float>();
  float* ln = ln_.data<float>();
  float* q = q_.data<float>();
  float* kk = k_.data<float>();
  float* v = v_.data<float>();
  k::embedding_forward(x, &token, w_.wte.data<float>(), 1, h);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = w_.layers[l];
    // Attention against the CP-sharded cache, which holds this token's K/V first.
    k::rmsnorm_forward(ln, rstd_.data<float>(), x, w.attn_norm.data<float>(), 1, h, c.norm_eps);
    k::linear_forward<float>(q, ln, w.wq.data<float>(), nullptr, 1, h, a * d);
    k::linear_forward<float>(kk, ln, w.wk.data<float>(), nullptr, 1, h, kv * d);
    k::linear_forward<float>(v, ln, w.wv.data<float>(), nullptr, 1, h, kv * d);
    k::rope_forward(q, rope_cos_.data<float>(), rope_sin_.data<float>(), 1, 1, a, d, pos);
    k::rope_forward(kk, rope_cos_.data<float>(), rope_sin_.data<float>(), 1, 1, kv, d, pos);
    cache_.store(l, pos, kk, v);
    attn_.forward(att_.data<float>(), q, cache_, l);
    k::linear_forward<float>(proj_.data<float>(), att_.data<float>(), w.wo.data<float>(), nullptr,
                             1, a * d, h);
    k::add_inplace(x, proj_.data<float>(), h);
    // SwiGLU MLP.
    k::rmsnorm_forward(ln, rstd_.data<float>(), x, w.mlp_norm.data<float>(), 1, h, c.norm_eps);
    k::linear_forward<float>(gate_.data<float>(), ln, w.w_gate.data<float>(), nullptr, 1, h, f);
    k::linear_forward<float>(up_.data<float>(), ln, w.w_up.data<float>(), nullptr, 1, h, f);
    k::swiglu_forward(act_.data<float>(), gate_.data<float>(), up_.data<float>(), int64_t(f));
    k::linear_forward<float>(proj_.data<float>(), act_.data<float>(), w.w_down.data<float>(),
                             nullptr, 1, f, h);
    k::add_inplace(x, proj_.data<float>(), h);
  }
  k::rmsnorm_forward(ln, rstd_.data<float>(), x, w_.final_norm.data<float>(), 1, h, c.norm_eps);
  k::linear_forward<float>(logits_.data<float>(), ln, w_.lm_head.data<float>(), nullptr, 1, h,
                           c.vocab_size);
  return logits_.data<float>();
}

std::vector<int32_t> Generator::generate(std::span<const int32_t> prompt, int max_new, int eos_id) {
  GROVE_CHECK(!prompt.empty()) << "generator: the prompt is empty";
  GROVE_CHECK(position() + static_cast<int>(prompt.size()) <= capacity())
      << "generator: a prompt of " << prompt.size() << " tokens does not fit the context of "
      << capacity() << " (" << position() << " used)";
  const float* logits = nullptr;
  for (int32_t t : prompt) logits = step(t);
  std::vector<int32_t> out;
  while (static_cast<int>(out.size()) < max_new) {
    int32_t next = argmax(logits, config_.vocab_size);
    if (cp_ && cp_->size() > 1) cp_->broadcast(&next, 1, DType::kI32, 0);
    out.push_back(next);
    if (next == eos_id || position() >= capacity()) break;
    logits = step(next);
  }
  return out;
}

}  // namespace grove
