// The definitions of GeneratorT (model/generate.h), included by the translation units that
// instantiate a backend: model/generate.cc (CpuBackend) and model/cuda/cuda_generate.cc
// (CudaBackend<float>).
#pragma once

#include <algorithm>
#include <cmath>

#include "core/status.h"
#include "model/generate.h"
#include "parallel/backend_collectives.h"

namespace grove {

template <class B>
GeneratorT<B>::GeneratorT(const ModelConfig& config, const Weights& weights, comm::Communicator* cp,
                          int capacity, CpAttention attention, KvCache kv_cache)
    : config_(config),
      cp_(cp),
      kv_cache_(kv_cache),
      // The latent cache: one shared kv head [c | k_R] that is also the value (stored once).
      cache_(cp ? cp->size() : 1, cp ? cp->rank() : 0, config.n_layers, /*batch=*/1,
             kv_cache == KvCache::kLatent ? 1 : config.kv_heads(),
             kv_cache == KvCache::kLatent && config.is_mla()
                 ? config.mla_kv_rank() + config.mla_rope_dim()
                 : config.attn_qk_dim(),
             capacity, /*values_are_keys=*/kv_cache == KvCache::kLatent),
      attn_(attention, cp, cache_, config.n_heads),
      model_(config, /*batch=*/1, /*seq=*/1, Recompute::kNone, {}, /*training=*/false) {
  GROVE_CHECK(capacity > 0 && capacity <= config.max_seq_len)
      << "generator: capacity " << capacity
      << " must lie in [1, model.max_seq_len=" << config.max_seq_len << "]";
  const Status st = model_.load_params(weights);
  GROVE_CHECK(st.ok()) << "generator: " << st.message();
  if constexpr (!kernels::kHostBackend<B>) host_logits_.resize(size_t(config.vocab_size));
  token_ = Tensor::zeros({1}, DType::kI32, B::kDevice);
  if (kv_cache_ == KvCache::kLatent) {
    GROVE_CHECK(config.is_mla()) << "generator: the latent KV cache (--kv-cache latent) needs an "
                                    "MLA model (model.attention=mla); this one is "
                                 << attention_name(config.attention) << ": use --kv-cache full";
    if constexpr (kernels::kHostBackend<B>) {
      const int L = config.n_layers, kvr = config.mla_kv_rank();
      const int H = config.n_heads, HD = kvr + config.mla_rope_dim();
      for (int l = 0; l < L; ++l) {
        const Tensor& kb = weights.layers[size_t(l)].wk_b;
        const Tensor& vb = weights.layers[size_t(l)].wv_b;
        GROVE_CHECK(kb.dtype() == DType::kF32 && vb.dtype() == DType::kF32)
            << "generator: the latent cache reads fp32 wk_b / wv_b";
        wk_b_.emplace_back(kb.data<float>(), kb.data<float>() + kb.numel());
        wv_b_.emplace_back(vb.data<float>(), vb.data<float>() + vb.numel());
        GROVE_CHECK(int64_t(wk_b_.back().size()) == int64_t(H) * config.mla_nope_dim() * kvr &&
                    int64_t(wv_b_.back().size()) == int64_t(H) * config.mla_v_dim() * kvr)
            << "generator: layer " << l << "'s wk_b / wv_b do not match the MLA dimensions";
      }
      row_.resize(size_t(HD));
      qa_.resize(size_t(H) * HD);
      oa_.resize(size_t(H) * HD);
      model_.set_mla_attention(
          [this](int layer, float* att, const float* q, const float* c, const float* k_rope) {
            latent_attend(layer, att, q, c, k_rope);
          });
      return;
    } else {
      GROVE_CHECK(false) << "generator: the latent KV cache decodes on the CPU only "
                            "(--device cpu); use --kv-cache full on this device";
    }
  }
  // Each block: this token's K/V go to the CP-sharded cache (kept by rank pos % cp), then the
  // query attends to every cached position across the group.
  model_.set_attention(
      [this](int layer, float* att, const float* q, const float* k, const float* v) {
        cache_.store(layer, pos_, k, v);
        attn_.forward(att, q, cache_, layer);
      });
}

template <class B>
void GeneratorT<B>::latent_attend(int layer, float* att, const float* q, const float* c,
                                  const float* k_rope) {
  if constexpr (kernels::kHostBackend<B>) {
    const int H = config_.n_heads, kvr = config_.mla_kv_rank(), dr = config_.mla_rope_dim();
    const int dn = config_.mla_nope_dim(), dv = config_.mla_v_dim(), dq = dn + dr, HD = kvr + dr;
    // This token's row [c | k_R], kept by rank pos % p (values are the keys: stored once).
    std::copy(c, c + kvr, row_.begin());
    std::copy(k_rope, k_rope + dr, row_.begin() + kvr);
    cache_.store(layer, pos_, row_.data(), row_.data());
    // Absorbed query per head: s·[Wk_b,hᵀ q_nope_h | q_R_h]; s turns the kernels' 1/sqrt(HD)
    // into the model's 1/sqrt(dq).
    const float s = std::sqrt(float(HD) / float(dq));
    const float* wk = wk_b_[size_t(layer)].data();
    for (int h = 0; h < H; ++h) {
      const float* qh = q + int64_t(h) * dq;
      float* out = qa_.data() + int64_t(h) * HD;
      std::fill(out, out + kvr, 0.0f);
      for (int i = 0; i < dn; ++i) {
        const float qi = qh[i];
        const float* w = wk + (int64_t(h) * dn + i) * kvr;
        for (int j = 0; j < kvr; ++j) out[j] += qi * w[j];
      }
      for (int j = 0; j < kvr; ++j) out[j] *= s;
      for (int r = 0; r < dr; ++r) out[kvr + r] = s * qh[dn + r];
    }
    // MQA over the sharded cache: oa [a, r_kv + d_r] = Σ_t p_t [c_t | k_R,t] (tree or ring).
    attn_.forward(oa_.data(), qa_.data(), cache_, layer);
    // Head outputs: Wv_b,h · (Σ_t p_t c_t); the k_R columns of oa are not values.
    const float* wv = wv_b_[size_t(layer)].data();
    for (int h = 0; h < H; ++h) {
      const float* oh = oa_.data() + int64_t(h) * HD;
      for (int v = 0; v < dv; ++v) {
        const float* w = wv + (int64_t(h) * dv + v) * kvr;
        float acc = 0.0f;
        for (int j = 0; j < kvr; ++j) acc += w[j] * oh[j];
        att[int64_t(h) * dv + v] = acc;
      }
    }
  } else {
    (void)layer, (void)att, (void)q, (void)c, (void)k_rope;
  }
}

template <class B>
const float* GeneratorT<B>::step(int32_t token) {
  GROVE_CHECK(token >= 0 && token < config_.vocab_size)
      << "generator: token " << token << " outside the vocabulary of " << config_.vocab_size;
  pos_ = cache_.begin_token();
  model_.set_position(pos_);
  const int32_t no_target = -1;
  model_.forward(&token, &no_target);
  return model_.logits().template data<float>();
}

template <class B>
void GeneratorT<B>::broadcast_token(int32_t* token) {
  if (!parallel::active(cp_)) return;
  if (cp_->device() == Device::kCPU) {
    cp_->broadcast(token, 1, DType::kI32, 0);
    return;
  }
  int32_t* dev = token_.template data<int32_t>();
  B::upload(dev, token, sizeof(int32_t));
  parallel::broadcast<B>(cp_, dev, 1, DType::kI32, 0);
  B::download(token, dev, sizeof(int32_t));
}

template <class B>
std::vector<int32_t> GeneratorT<B>::generate(std::span<const int32_t> prompt, int max_new,
                                             int eos_id) {
  GROVE_CHECK(!prompt.empty()) << "generator: the prompt is empty";
  GROVE_CHECK(position() + static_cast<int>(prompt.size()) <= capacity())
      << "generator: a prompt of " << prompt.size() << " tokens does not fit the context of "
      << capacity() << " (" << position() << " used)";
  const float* logits = nullptr;
  for (int32_t t : prompt) logits = step(t);
  std::vector<int32_t> out;
  while (static_cast<int>(out.size()) < max_new) {
    const float* host = logits;
    if constexpr (!kernels::kHostBackend<B>) {  // the V logits, once per token
      B::download(host_logits_.data(), logits, sizeof(float) * host_logits_.size());
      host = host_logits_.data();
    }
    int32_t next = argmax(host, config_.vocab_size);
    broadcast_token(&next);
    out.push_back(next);
    if (next == eos_id || position() >= capacity()) break;
    logits = step(next);
  }
  return out;
}

}  // namespace grove
