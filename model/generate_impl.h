// The definitions of GeneratorT (model/generate.h), included by the translation units that
// instantiate a backend: model/generate.cc (CpuBackend) and model/cuda/cuda_generate.cc
// (CudaBackend<float>).
#pragma once

#include <algorithm>

#include "core/status.h"
#include "model/generate.h"
#include "parallel/backend_collectives.h"

namespace grove {

template <class B>
GeneratorT<B>::GeneratorT(const ModelConfig& config, const Weights& weights, comm::Communicator* cp,
                          int capacity, CpAttention attention)
    : config_(config),
      cp_(cp),
      cache_(cp ? cp->size() : 1, cp ? cp->rank() : 0, config.n_layers, /*batch=*/1,
             config.kv_heads(), config.attn_qk_dim(), capacity),
      attn_(attention, cp, cache_, config.n_heads),
      model_(config, /*batch=*/1, /*seq=*/1, Recompute::kNone, {}, /*training=*/false) {
  GROVE_CHECK(capacity > 0 && capacity <= config.max_seq_len)
      << "generator: capacity " << capacity
      << " must lie in [1, model.max_seq_len=" << config.max_seq_len << "]";
  const Status st = model_.load_params(weights);
  GROVE_CHECK(st.ok()) << "generator: " << st.message();
  if constexpr (!kernels::kHostBackend<B>) host_logits_.resize(size_t(config.vocab_size));
  token_ = Tensor::zeros({1}, DType::kI32, B::kDevice);
  // Each block: this token's K/V go to the CP-sharded cache (kept by rank pos % cp), then the
  // query attends to every cached position across the group.
  model_.set_attention(
      [this](int layer, float* att, const float* q, const float* k, const float* v) {
        cache_.store(layer, pos_, k, v);
        attn_.forward(att, q, cache_, layer);
      });
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
