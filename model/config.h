// ModelConfig: the shape of a decoder-only transformer (DESIGN.md §3), validated in one place.
//
// Legend used across model/: s sequence, b batch, h d_model, a heads, k kv heads, d head dim
// (h / a), f SwiGLU hidden size, V vocabulary, L layers, N = s*b tokens.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>

#include "core/status.h"

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

  int kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int head_dim() const { return d_model / n_heads; }
  int ffn() const { return ffn_hidden > 0 ? ffn_hidden : (8 * d_model / 3 + 63) / 64 * 64; }
  int64_t num_parameters() const;

  // Every constraint, with a message naming the field and the fix.
  Status Validate() const;
};

enum class Recompute { kNone, kSelective, kFull };
const char* recompute_name(Recompute r);
StatusOr<Recompute> parse_recompute(const std::string& s);

// JSON (de)serialisation. Unknown keys are an error naming the key and the known ones.
Status ModelConfigFromJson(const nlohmann::json& j, ModelConfig* out);
nlohmann::json ModelConfigToJson(const ModelConfig& c);

}  // namespace grove
