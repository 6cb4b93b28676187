// ModelConfig: the shape of a decoder-only transformer, validated in one place. model.moe is
// MoeOptions (spec/moe_options.h).
//
// Legend used across model/: s sequence, b batch, h d_model, a heads, k kv heads, d head dim
// (h / a), f SwiGLU hidden size, V vocabulary, L layers, N = s*b tokens.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>

#include "core/status.h"
#include "spec/moe_options.h"

namespace grove {

struct ModelConfig {
  int vocab_size = 8192;
  int d_model = 256;
  int n_layers = 4;
  int n_heads = 8;
  int n_kv_heads = 0;  // 0: same as n_heads (plain multi-head attention); fewer: GQA
  int ffn_hidden = 0;  // 0: 8/3 * d_model rounded up to a multiple of 64 (Llama convention)
  int max_seq_len = 256;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  float init_std = 0.02f;
  uint64_t seed = 1234;  // parameter initialisation
  MoeOptions moe;

  int kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int head_dim() const { return d_model / n_heads; }
  int ffn() const { return ffn_hidden > 0 ? ffn_hidden : (8 * d_model / 3 + 63) / 64 * 64; }
  int64_t num_parameters() const;
  // Parameters a token passes through (top_k experts of each MoE layer, plus the router).
  int64_t active_parameters() const;
  // Model FLOPs of one forward + backward over `batch` sequences of `seq` tokens, the MFU
  // numerator: 6 per matmul parameter per token (2 forward, 4 backward; the embedding lookup
  // excluded, top_k experts per token) plus attention QK^T and PV, 4·seq²·d per head per sequence
  // forward, counted dense (not halved for the causal mask) and x3 for forward + backward, as in
  // PaLM's MFU.
  double training_flops(double batch, double seq) const;
  bool is_moe_layer(int l) const { return moe.num_experts > 0 && (l + 1) % moe.every == 0; }
  int expert_ffn() const { return moe.expert_hidden(ffn()); }

  // Every constraint, with a message naming the field and the fix.
  Status Validate() const;
};

// JSON (de)serialisation. Unknown keys are an error naming the key and the known ones.
Status ModelConfigFromJson(const nlohmann::json& j, ModelConfig* out);
nlohmann::json ModelConfigToJson(const ModelConfig& c);

}  // namespace grove
