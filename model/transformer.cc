#include "model/transformer.h"

#include <cmath>
#include <limits>

#include "kernels/cpu/ops.h"

namespace grove {

namespace k = cpu;

Transformer::Transformer(const ModelConfig& config, int batch, int seq, Recompute mode)
    : config_(config), b_(batch), s_(seq), mode_(mode) {
  Status st = config_.Validate();
  GROVE_CHECK(st.ok()) << st.message();
  GROVE_CHECK(seq > 0 && seq <= config_.max_seq_len)
      << "seq " << seq << " exceeds model.max_seq_len " << config_.max_seq_len;
  GROVE_CHECK(batch > 0) << "batch must be positive";
  params_ = Weights::Init(config_);
  grads_ = Weights::Zeros(config_);
  stash_ = ActivationStash::Allocate(config_, b_, s_, mode_);
  const int d = config_.head_dim();
  rope_cos_ = Tensor::empty({config_.max_seq_len, d / 2});
  rope_sin_ = Tensor::empty({config_.max_seq_len, d / 2});
  k::rope_table(rope_cos_.data<float>(), rope_sin_.data<float>(), config_.max_seq_len, d,
                config_.rope_theta);
  const int64_t N = int64_t(b_) * s_, h = config_.d_model, qd = int64_t(config_.n_heads) * d,
                kvd = int64_t(config_.kv_heads()) * d, f = config_.ffn();
  tokens_ = Tensor::empty({N}, DType::kI32);
  targets_ = Tensor::empty({N}, DType::kI32);
  g_.dresid = Tensor::empty({N, h});
  g_.dln = Tensor::empty({N, h});
  g_.datt = Tensor::empty({N, qd});
  g_.dq = Tensor::empty({N, qd});
  g_.dk = Tensor::empty({N, kvd});
  g_.dv = Tensor::empty({N, kvd});
  g_.dact = Tensor::empty({N, f});
  g_.dgate = Tensor::empty({N, f});
  g_.dup = Tensor::empty({N, f});
  g_.dlosses = Tensor::empty({N});
}

// ---- one block ---------------------------------------------------------------------------------

void Transformer::block_forward(int l, BlockActivations& a) {
  const LayerWeights& w = params_.layers[l];
  const int N = b_ * s_, h = config_.d_model, d = config_.head_dim();
  const int qd = config_.n_heads * d, kvd = config_.kv_heads() * d, f = config_.ffn();
  const float* x = stash_.resid[l].data<float>();
  float* out = stash_.resid[l + 1].data<float>();

  k::rmsnorm_forward(a.ln1.data<float>(), a.rstd1.data<float>(), x, w.attn_norm.data<float>(), N, h,
                     config_.norm_eps);
  k::linear_forward(a.q.data<float>(), a.ln1.data<float>(), w.wq.data<float>(), (float*)nullptr, N,
                    h, qd);
  k::linear_forward(a.k.data<float>(), a.ln1.data<float>(), w.wk.data<float>(), (float*)nullptr, N,
                    h, kvd);
  k::linear_forward(a.v.data<float>(), a.ln1.data<float>(), w.wv.data<float>(), (float*)nullptr, N,
                    h, kvd);
  k::rope_forward(a.q.data<float>(), rope_cos_.data<float>(), rope_sin_.data<float>(), s_, b_,
                  config_.n_heads, d, 0);
  k::rope_forward(a.k.data<float>(), rope_cos_.data<float>(), rope_sin_.data<float>(), s_, b_,
                  config_.kv_heads(), d, 0);
  k::AttentionShape shape{s_, s_, b_, config_.n_heads, config_.kv_heads(), d, /*causal=*/true};
  k::attention_forward(a.att.data<float>(), a.lse.data<float>(),
                       a.probs.defined() ? a.probs.data<float>() : nullptr, a.q.data<float>(),
                       a.k.data<float>(), a.v.data<float>(), shape);
  // x2 = x + Wo·att
  k::linear_forward(a.resid2.data<float>(), a.att.data<float>(), w.wo.data<float>(),
                    (float*)nullptr, N, qd, h);
  k::add_inplace(a.resid2.data<float>(), x, int64_t(N) * h);

  k::rmsnorm_forward(a.ln2.data<float>(), a.rstd2.data<float>(), a.resid2.data<float>(),
                     w.mlp_norm.data<float>(), N, h, config_.norm_eps);
  k::linear_forward(a.gate.data<float>(), a.ln2.data<float>(), w.w_gate.data<float>(),
                    (float*)nullptr, N, h, f);
  k::linear_forward(a.up.data<float>(), a.ln2.data<float>(), w.w_up.data<float>(), (float*)nullptr,
                    N, h, f);
  k::swiglu_forward(a.act.data<float>(), a.gate.data<float>(), a.up.data<float>(), int64_t(N) * f);
  // out = x2 + Wdown·act
  k::linear_forward(out, a.act.data<float>(), w.w_down.data<float>(), (float*)nullptr, N, f, h);
  k::add_inplace(out, a.resid2.data<float>(), int64_t(N) * h);
}

// On entry g_.dresid holds d(loss)/d(block output); on exit d(loss)/d(block input).
void Transformer::block_backward(int l, BlockActivations& a) {
  const LayerWeights& w = params_.layers[l];
  LayerWeights& gw = grads_.layers[l];
  const int N = b_ * s_, h = config_.d_model, d = config_.head_dim();
  const int qd = config_.n_heads * d, kvd = config_.kv_heads() * d, f = config_.ffn();
  const float* x = stash_.resid[l].data<float>();
  float* dresid = g_.dresid.data<float>();

  // MLP: out = x2 + Wdown·act. The residual passes dresid straight through to x2.
  g_.dact.zero();
  k::linear_backward(g_.dact.data<float>(), gw.w_down.data<float>(), (float*)nullptr, dresid,
                     a.act.data<float>(), w.w_down.data<float>(), N, f, h);
  g_.dgate.zero();
  g_.dup.zero();
  k::swiglu_backward(g_.dgate.data<float>(), g_.dup.data<float>(), g_.dact.data<float>(),
                     a.gate.data<float>(), a.up.data<float>(), int64_t(N) * f);
  g_.dln.zero();
  k::linear_backward(g_.dln.data<float>(), gw.w_gate.data<float>(), (float*)nullptr,
                     g_.dgate.data<float>(), a.ln2.data<float>(), w.w_gate.data<float>(), N, h, f);
  k::linear_backward(g_.dln.data<float>(), gw.w_up.data<float>(), (float*)nullptr,
                     g_.dup.data<float>(), a.ln2.data<float>(), w.w_up.data<float>(), N, h, f);
  k::rmsnorm_backward(dresid, gw.mlp_norm.data<float>(), g_.dln.data<float>(),
                      a.resid2.data<float>(), w.mlp_norm.data<float>(), a.rstd2.data<float>(), N,
                      h);

  // Attention: x2 = x + Wo·att.
  g_.datt.zero();
  k::linear_backward(g_.datt.data<float>(), gw.wo.data<float>(), (float*)nullptr, dresid,
                     a.att.data<float>(), w.wo.data<float>(), N, qd, h);
  g_.dq.zero();
  g_.dk.zero();
  g_.dv.zero();
  k::AttentionShape shape{s_, s_, b_, config_.n_heads, config_.kv_heads(), d, /*causal=*/true};
  k::attention_backward(g_.dq.data<float>(), g_.dk.data<float>(), g_.dv.data<float>(),
                        g_.datt.data<float>(), a.q.data<float>(), a.k.data<float>(),
                        a.v.data<float>(), a.att.data<float>(), a.lse.data<float>(),
                        a.probs.defined() ? a.probs.data<float>() : nullptr, shape);
  k::rope_backward(g_.dq.data<float>(), rope_cos_.data<float>(), rope_sin_.data<float>(), s_, b_,
                   config_.n_heads, d, 0);
  k::rope_backward(g_.dk.data<float>(), rope_cos_.data<float>(), rope_sin_.data<float>(), s_, b_,
                   config_.kv_heads(), d, 0);
  g_.dln.zero();
  k::linear_backward(g_.dln.data<float>(), gw.wq.data<float>(), (float*)nullptr,
                     g_.dq.data<float>(), a.ln1.data<float>(), w.wq.data<float>(), N, h, qd);
  k::linear_backward(g_.dln.data<float>(), gw.wk.data<float>(), (float*)nullptr,
                     g_.dk.data<float>(), a.ln1.data<float>(), w.wk.data<float>(), N, h, kvd);
  k::linear_backward(g_.dln.data<float>(), gw.wv.data<float>(), (float*)nullptr,
                     g_.dv.data<float>(), a.ln1.data<float>(), w.wv.data<float>(), N, h, kvd);
  k::rmsnorm_backward(dresid, gw.attn_norm.data<float>(), g_.dln.data<float>(), x,
                      w.attn_norm.data<float>(), a.rstd1.data<float>(), N, h);
}

// ---- whole model -------------------------------------------------------------------------------

float Transformer::forward(const int32_t* tokens, const int32_t* targets) {
  const int N = b_ * s_, h = config_.d_model, V = config_.vocab_size;
  int32_t* tok = tokens_.data<int32_t>();
  int32_t* tgt = targets_.data<int32_t>();
  valid_targets_ = 0;
  for (int i = 0; i < N; ++i) {
    GROVE_CHECK(tokens[i] >= 0 && tokens[i] < V) << "token id " << tokens[i] << " at position " << i
                                                 << " is outside the vocabulary [0, " << V << ")";
    GROVE_CHECK(targets[i] < V) << "target id " << targets[i] << " outside the vocabulary";
    tok[i] = tokens[i];
    tgt[i] = targets[i];
    valid_targets_ += targets[i] >= 0;
  }

  k::embedding_forward(stash_.resid[0].data<float>(), tok, params_.wte.data<float>(), N, h);
  for (int l = 0; l < config_.n_layers; ++l)
    block_forward(l, mode_ == Recompute::kFull ? stash_.transient : stash_.blocks[l]);

  k::rmsnorm_forward(stash_.lnf.data<float>(), stash_.rstdf.data<float>(),
                     stash_.resid[config_.n_layers].data<float>(), params_.final_norm.data<float>(),
                     N, h, config_.norm_eps);
  k::linear_forward(stash_.logits.data<float>(), stash_.lnf.data<float>(),
                    params_.lm_head.data<float>(), (float*)nullptr, N, h, V);
  k::cross_entropy_forward(stash_.losses.data<float>(), stash_.ce_lse.data<float>(),
                           stash_.logits.data<float>(), tgt, N, V);
  double sum = 0.0;
  const float* losses = stash_.losses.data<float>();
  for (int i = 0; i < N; ++i) sum += losses[i];  // fixed order: bit-reproducible
  return valid_targets_ > 0 ? static_cast<float>(sum / double(valid_targets_)) : 0.0f;
}

void Transformer::backward(float loss_scale) {
  const int N = b_ * s_, h = config_.d_model, V = config_.vocab_size;
  const int L = config_.n_layers;
  float* dl = g_.dlosses.data<float>();
  const float per_token = valid_targets_ > 0 ? loss_scale / float(valid_targets_) : 0.0f;
  for (int i = 0; i < N; ++i) dl[i] = per_token;

  // Head: dlogits overwrite the logits in place.
  float* dlogits = stash_.logits.data<float>();
  k::cross_entropy_backward(dlogits, stash_.logits.data<float>(), stash_.ce_lse.data<float>(),
                            targets_.data<int32_t>(), dl, N, V);
  g_.dln.zero();
  k::linear_backward(g_.dln.data<float>(), grads_.lm_head.data<float>(), (float*)nullptr, dlogits,
                     stash_.lnf.data<float>(), params_.lm_head.data<float>(), N, h, V);
  g_.dresid.zero();
  k::rmsnorm_backward(g_.dresid.data<float>(), grads_.final_norm.data<float>(),
                      g_.dln.data<float>(), stash_.resid[L].data<float>(),
                      params_.final_norm.data<float>(), stash_.rstdf.data<float>(), N, h);

  for (int l = L - 1; l >= 0; --l) {
    if (mode_ == Recompute::kFull) {
      // Re-run the block from its saved input; the forward is deterministic, so the recomputed
      // intermediates are bit-identical to the first pass. resid[l+1] is rewritten with the same
      // values it already holds.
      block_forward(l, stash_.transient);
      block_backward(l, stash_.transient);
    } else {
      block_backward(l, stash_.blocks[l]);
    }
  }
  k::embedding_backward(grads_.wte.data<float>(), g_.dresid.data<float>(), tokens_.data<int32_t>(),
                        N, h);
}

ActivationReport Transformer::activation_report() const {
  ActivationReport r;
  for (int l = 0; l < config_.n_layers; ++l) {
    size_t bytes = stash_.resid[l].bytes();
    if (mode_ != Recompute::kFull) bytes += stash_.blocks[l].bytes();
    r.per_layer.push_back(bytes);
  }
  r.transient = mode_ == Recompute::kFull ? stash_.transient.bytes() : 0;
  r.head = stash_.resid[config_.n_layers].bytes() + stash_.rstdf.bytes() + stash_.lnf.bytes() +
           stash_.logits.bytes() + stash_.ce_lse.bytes() + stash_.losses.bytes();
  return r;
}

double Transformer::flops_per_step() const {
  // 6 FLOPs per parameter per token for the matmuls (2 forward, 4 backward), excluding the
  // embedding lookup, plus attention: QK^T and PV, 2*2*s*s*d per head per sequence forward
  // (halved by the causal mask is NOT assumed: we report dense-equivalent work like PaLM's MFU).
  const double N = double(b_) * s_;
  const double matmul_params =
      double(config_.num_parameters()) - double(config_.vocab_size) * config_.d_model;
  const double attn =
      2.0 * 2.0 * s_ * double(s_) * config_.head_dim() * config_.n_heads * b_ * config_.n_layers;
  return 6.0 * matmul_params * N + 3.0 * attn;
}

}  // namespace grove
