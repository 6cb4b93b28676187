// ModelConfig: the shape of a decoder-only transformer, validated in one place. model.moe is
// MoeOptions (spec/moe_options.h).
//
// Legend used across model/: s sequence, b batch, h d_model, a heads, k kv heads, d head dim
// (h / a), f SwiGLU hidden size, V vocabulary, L layers, N = s*b tokens.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>

#include "core/status.h"
#include "spec/enums.h"
#include "spec/moe_options.h"

namespace grove {

// model.mla: multi-head latent attention (DeepSeek-V2; docs/model.md#multi-head-latent-attention).
// A 0 dimension takes DeepSeek-V2's ratio to d = d_model / n_heads: kv_lora_rank 4d,
// qk_nope_head_dim d, qk_rope_head_dim d/2, v_head_dim d. q_lora_rank 0 means no query
// low-rank projection (queries straight from the normalised input).
struct MlaOptions {
  int q_lora_rank = 0;
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
};

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
  Attention attention = Attention::kMha;
  MlaOptions mla;  // read when attention == kMla

  bool is_mla() const { return attention == Attention::kMla; }
  // MLA's dimensions with their defaults resolved (meaningful when is_mla()).
  int mla_kv_rank() const { return mla.kv_lora_rank > 0 ? mla.kv_lora_rank : 4 * head_dim(); }
  int mla_nope_dim() const { return mla.qk_nope_head_dim > 0 ? mla.qk_nope_head_dim : head_dim(); }
  int mla_rope_dim() const {
    return mla.qk_rope_head_dim > 0 ? mla.qk_rope_head_dim : head_dim() / 2;
  }
  int mla_v_dim() const { return mla.v_head_dim > 0 ? mla.v_head_dim : head_dim(); }
  // Per head: the query/key width the attention kernels see (q, k and the zero-padded v), and the
  // value width (the attention output the output projection reads). MHA: both head_dim().
  int attn_qk_dim() const { return is_mla() ? mla_nope_dim() + mla_rope_dim() : head_dim(); }
  int attn_v_dim() const { return is_mla() ? mla_v_dim() : head_dim(); }
  // The width RoPE rotates per head: head_dim() (MHA) or qk_rope_head_dim (MLA).
  int rope_dim() const { return is_mla() ? mla_rope_dim() : head_dim(); }
  // MLA: parameters of one block that tensor parallelism replicates (the down-projections and
  // the latent norms); 0 for MHA.
  int64_t mla_replicated_parameters() const;

  int kv_heads() const { return is_mla() ? n_heads : n_kv_heads > 0 ? n_kv_heads : n_heads; }
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

 private:
  Status ValidateMla() const;   // the attention fields of model.attention=mla
  Status ValidateRest() const;  // the fields every attention shares
};

// JSON (de)serialisation. Unknown keys are an error naming the key and the known ones.
Status ModelConfigFromJson(const nlohmann::json& j, ModelConfig* out);
nlohmann::json ModelConfigToJson(const ModelConfig& c);

}  // namespace grove
