#include "model/generate.h"

#include <algorithm>
#include <cmath>

#include "core/status.h"

namespace grove {

int32_t argmax(const float* x, int n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

Generator::Generator(const ModelConfig& config, const Weights& weights, comm::Communicator* cp,
                     int capacity, CpAttention attention)
    : config_(config),
      cp_(cp),
      cache_(cp ? cp->size() : 1, cp ? cp->rank() : 0, config.n_layers, /*B=*/1, config.kv_heads(),
             config.attn_qk_dim(), capacity),
      attn_(attention, cp, cache_, config.n_heads),
      model_(config, /*batch=*/1, /*seq=*/1, Recompute::kNone, {}, /*training=*/false) {
  GROVE_CHECK(capacity > 0 && capacity <= config.max_seq_len)
      << "generator: capacity " << capacity
      << " must lie in [1, model.max_seq_len=" << config.max_seq_len << "]";
  const Status st = model_.load_params(weights);
  GROVE_CHECK(st.ok()) << "generator: " << st.message();
  // Each block: this token's K/V go to the CP-sharded cache (kept by rank pos % cp), then the
  // query attends to every cached position across the group.
  model_.set_attention(
      [this](int layer, float* att, const float* q, const float* k, const float* v) {
        cache_.store(layer, pos_, k, v);
        attn_.forward(att, q, cache_, layer);
      });
}

const float* Generator::step(int32_t token) {
  GROVE_CHECK(token >= 0 && token < config_.vocab_size)
      << "generator: token " << token << " outside the vocabulary of " << config_.vocab_size;
  pos_ = cache_.begin_token();
  model_.set_position(pos_);
  const int32_t no_target = -1;
  model_.forward(&token, &no_target);
  return model_.logits().data<float>();
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
