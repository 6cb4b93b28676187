#include "model/generate.h"

#include <algorithm>
#include <cmath>

#include "core/status.h"
#include "kernels/cpu/ops.h"

namespace grove {

namespace k = grove::cpu;

int32_t argmax(const float* x, int n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

Generator::Generator(const ModelConfig& config, const Weights& weights, comm::Communicator* cp,
                     int capacity, CpAttention attention)
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
  const int fmax = std::max(f, config.expert_ffn());
  gate_ = Tensor::empty({fmax});
  up_ = Tensor::empty({fmax});
  act_ = Tensor::empty({fmax});
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
    // SwiGLU MLP, or a mixture of SwiGLU experts.
    k::rmsnorm_forward(ln, rstd_.data<float>(), x, w.mlp_norm.data<float>(), 1, h, c.norm_eps);
    if (w.router.defined()) {
      moe_forward(w, ln, x);
      continue;
    }
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

// The MoE layer for one token, as in training (parallel/moe_router.cc): top-k of the router
// logits (ties to the lower expert id), softmax probabilities as weights, renormalised over the
// k chosen when k > 1; x += Σ_j w_j · Expert_{e_j}(ln). Every expert is local (tp = ep = 1).
void Generator::moe_forward(const LayerWeights& w, const float* ln, float* x) {
  const ModelConfig& c = config_;
  const int h = c.d_model, E = c.moe.num_experts, K = c.moe.top_k, fe = c.expert_ffn();
  std::vector<float> logits(E);
  k::linear_forward<float>(logits.data(), ln, w.router.data<float>(), nullptr, 1, h, E);
  std::vector<int> chosen;
  for (int j = 0; j < K; ++j) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      if (std::find(chosen.begin(), chosen.end(), e) != chosen.end()) continue;
      if (best < 0 || logits[e] > logits[best]) best = e;
    }
    chosen.push_back(best);
  }
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(double(l) - mx);
  std::vector<float> weight(K);
  float norm = 0;
  for (int j = 0; j < K; ++j) {
    weight[j] = float(std::exp(double(logits[chosen[j]]) - mx) / sum);
    norm += weight[j];
  }
  if (K == 1) norm = 1.0f;
  for (int j = 0; j < K; ++j) {
    const int64_t e = chosen[j];
    k::linear_forward<float>(gate_.data<float>(), ln, w.e_gate.data<float>() + e * fe * h, nullptr,
                             1, h, fe);
    k::linear_forward<float>(up_.data<float>(), ln, w.e_up.data<float>() + e * fe * h, nullptr, 1,
                             h, fe);
    k::swiglu_forward(act_.data<float>(), gate_.data<float>(), up_.data<float>(), int64_t(fe));
    k::linear_forward<float>(proj_.data<float>(), act_.data<float>(),
                             w.e_down.data<float>() + e * h * fe, nullptr, 1, fe, h);
    const float wj = weight[j] / norm;
    for (int i = 0; i < h; ++i) x[i] += wj * proj_.data<float>()[i];
  }
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
