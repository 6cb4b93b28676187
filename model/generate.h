// Generator: greedy decoding of a trained transformer with a context-parallel (CP) KV cache.
//
// The model of model/transformer.h itself (its forward, one token at a time: B = S = 1), with
// each block's attention taken against the cache (Transformer::set_attention):
//   x = wte[token];  per layer: x += Wo · attn(rope(Wq·rms1(x)), cache ∪ rope(Wk·rms1(x)), Wv·…)
//                               x += Wdown · (silu(Wgate·rms2(x)) * Wup·rms2(x))
//   logits = lm_head · rmsf(x)
// RoPE is applied at the token's absolute position. Every CP rank holds the full (tp = 1)
// weights and computes the dense parts redundantly; the K/V of position t are kept by CP rank
// t % p only (parallel/kv_cache.h), and each layer's attention is the tree combine (or the ring
// baseline) over the group. The query is broadcast from CP rank 0 inside the attention, and the
// chosen token is broadcast from rank 0, so every rank generates the same text.
//
// MLA models decode with either cache (KvCache):
//   full:   the K/V cache of the padded per-head keys and values the block's forward builds
//           (2·a·dq floats per token per layer), the same attention as above;
//   latent: the latent cache (DeepSeek-V2's absorption; docs/attention.md#decoding). Per token
//           and layer only the row [c | k_R] (r_kv + d_r floats) is kept, on CP rank t % p, as
//           one shared kv head of width r_kv + d_r whose values are the same rows (stored once).
//           Per head h the query is absorbed into latent space,
//             q̃_h = s · [Wk_b,hᵀ q_nope_h | q_R_h],   s = sqrt((r_kv + d_r) / (d_n + d_r)),
//           so that q̃_h·[c | k_R] / sqrt(r_kv + d_r) (the kernels' scale) is the model's score
//           (q_nope_h·Wk_b,h c + q_R_h·k_R) / sqrt(d_n + d_r); the attention over the cache (MQA,
//           tree combine or ring, as above) gives Σ_t p_t [c_t | k_R,t], whose first r_kv columns
//           go through Wv_b,h (the k_R columns are dropped), then Wo as in the model. The
//           up-projections run per token on the query side only. Host backends only (CPU).
//
// Buffers are allocated in the constructor (the cache for `capacity` tokens), none per token.
//
// Backends: GeneratorT<B> runs TransformerT<B> with the cache and the attention on the same
// backend (parallel/kv_cache.h), fp32 (B::T = float): Generator is the host instance
// (CpuBackend), GeneratorT<CudaBackend<float>> (model/cuda/cuda_generate.h) the GPU one, where the
// model, the cache, the query, the partials and the combine stay in device memory. Per token the
// host sends the token id (the model's embedding input) and receives the V logits once
// (generate()'s argmax runs on the host, then rank 0's choice is broadcast) and the model's
// one-float loss of the forward; nothing else crosses. Definitions in model/generate_impl.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"
#include "kernels/cpu/backend.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "parallel/cp_attention.h"
#include "parallel/kv_cache.h"
#include "spec/model_config.h"

namespace grove {

// Which cache an MLA model decodes with (grove-generate --kv-cache); MHA/GQA models use kFull.
enum class KvCache { kFull, kLatent };
inline const char* kv_cache_name(KvCache k) {
  return k == KvCache::kLatent ? "latent" : "full";
}

template <class B>
class GeneratorT {
 public:
  static_assert(std::is_same_v<typename B::T, float>, "decoding runs fp32 activations");
  // `weights` are the full (tp = 1) parameters of `config` (host memory), identical on every CP
  // rank (copied into the model). cp: the context-parallel group, nullptr for one process.
  // capacity: the most tokens (prompt + generated) the context may hold, at most
  // model.max_seq_len.
  GeneratorT(const ModelConfig& config, const Weights& weights, comm::Communicator* cp,
             int capacity, CpAttention attention = CpAttention::kTree,
             KvCache kv_cache = KvCache::kFull);

  // Runs `token` at the next position (position() before the call) and returns the logits [V]
  // of the next token, in B's memory (host for CpuBackend, device for CudaBackend). Every CP rank
  // calls it with the same token.
  const float* step(int32_t token);
  // Greedy decoding: feeds the prompt (at least one token), then appends the argmax token until
  // max_new tokens were generated, eos_id was produced (it is included), or the context is full.
  // Returns the generated tokens, identical on every rank (rank 0's argmax is broadcast).
  std::vector<int32_t> generate(std::span<const int32_t> prompt, int max_new, int eos_id = -1);

  int position() const { return cache_.length(); }
  int capacity() const { return cache_.capacity(); }
  void reset() { cache_.clear(); }
  // Communication of the attention so far (bytes per rank, rounds).
  const parallel::CommStats& attention_stats() const { return attn_.stats(); }
  const ModelConfig& config() const { return config_; }
  KvCache kv_cache() const { return kv_cache_; }
  // Bytes of this rank's cache shard, and per token it holds (all layers).
  int64_t cache_bytes() const { return cache_.bytes(); }
  int64_t cache_bytes_per_token() const {
    return cache_.local_capacity() > 0 ? cache_.bytes() / cache_.local_capacity() : 0;
  }

 private:
  // Rank 0's token to every rank of cp_ (through B's memory when the group works there).
  void broadcast_token(int32_t* token);

  // The latent cache's attention of one block (host memory): absorbed query, attention over the
  // cache, the value up-projection into att [a*dv].
  void latent_attend(int layer, float* att, const float* q, const float* c, const float* k_rope);

  ModelConfig config_;
  comm::Communicator* cp_;
  KvCache kv_cache_;
  parallel::ShardedKvCacheT<B> cache_;
  parallel::DecodeAttentionT<B> attn_;
  TransformerT<B> model_;           // B = S = 1, no gradients
  int pos_ = 0;                     // position of the token being run
  std::vector<float> host_logits_;  // [V] device backends: generate()'s copy of the logits
  Tensor token_;                    // [1] int32 in B's memory: the broadcast token
  // Latent cache: wk_b [a*d_n, r_kv] and wv_b [a*dv, r_kv] per layer, the cached row
  // [r_kv + d_r], the absorbed query and the attention output [a, r_kv + d_r].
  std::vector<std::vector<float>> wk_b_, wv_b_;
  std::vector<float> row_, qa_, oa_;
};

using Generator = GeneratorT<CpuBackend>;
extern template class GeneratorT<CpuBackend>;

// Index of the largest value (the first one on ties).
inline int32_t argmax(const float* x, int n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

}  // namespace grove
