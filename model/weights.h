// Weights: the transformer's parameters (or their gradients) as named tensors.
//
// Under tensor parallelism (t ranks) each rank holds its shard of every matrix (shard_dim says
// which axis is split): attention heads and SwiGLU columns by rows of wq/wk/wv/w_gate/w_up (MLA:
// wq/wq_b/wk_b/wv_b) and columns of wo/w_down, the vocabulary by rows of wte/lm_head. Norm
// weights and MLA's down-projections (wq_a, wkv_a, wk_rope) are replicated.
//
// The same struct holds parameters and gradients, so "grads.layers[i].wq" is the gradient of
// "params.layers[i].wq". Linear weights are [out, in] as in torch.nn.Linear (y = x W^T).
// named() lists every tensor in one fixed order with stable names ("layers.3.w_gate"); the
// optimizer, the checkpoint and the PyTorch oracle test all go through it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "core/tensor.h"
#include "spec/model_config.h"

namespace grove {

// Attention of a block: MHA has wq, wk, wv, wo. MLA (model.attention=mla; dq = qk_nope +
// qk_rope per head, each query head's rows [nope | rope], dv = v_head_dim, r_q / r_kv the latent
// ranks) has wq (r_q = 0) or wq_a, q_norm, wq_b; then wkv_a, wk_rope, kv_norm, wk_b, wv_b, wo.
struct LayerWeights {
  Tensor attn_norm;  // [h]
  Tensor wq;         // [a*d, h]         (MLA without q_lora_rank: [a*dq, h])
  Tensor wk;         // [k*d, h]         (MHA)
  Tensor wv;         // [k*d, h]         (MHA)
  Tensor wq_a;       // [r_q, h]         (MLA with q_lora_rank: replicated query down-projection)
  Tensor q_norm;     // [r_q]            RMSNorm of the query latent (replicated)
  Tensor wq_b;       // [a*dq, r_q]      query up-projection (heads split)
  Tensor wkv_a;      // [r_kv, h]        (MLA) KV down-projection to the latent (replicated)
  Tensor wk_rope;    // [qk_rope, h]     the decoupled RoPE key, shared by all heads (replicated)
  Tensor kv_norm;    // [r_kv]           RMSNorm of the KV latent (replicated)
  Tensor wk_b;       // [a*qk_nope, r_kv] key up-projection, no-RoPE part (heads split)
  Tensor wv_b;       // [a*dv, r_kv]     value up-projection (heads split)
  Tensor wo;         // [h, a*d]         (MLA: [h, a*dv])
  Tensor mlp_norm;   // [h]
  Tensor w_gate;     // [f, h]   (dense blocks)
  Tensor w_up;       // [f, h]
  Tensor w_down;     // [h, f]
  Tensor router;     // [E, h]   (MoE blocks, replicated)
  Tensor e_gate;     // [E/ep, fe, h]  this rank's experts
  Tensor e_up;       // [E/ep, fe, h]
  Tensor e_down;     // [E/ep, h, fe]
};

// How a named tensor is split: over the TP group by rows or columns, or over the EP group by
// experts (dim 0), or not at all.
enum class ShardDim { kReplicated, kRows, kCols, kExperts };
ShardDim shard_dim(const std::string& name);

// Where each parameter lives in ONE flat buffer: the tensors of Weights::named(), in that order,
// each starting at a multiple of 8 elements (16-byte aligned in fp32 and in a bf16 copy, for
// vector loads). Shapes are this rank's shards (tp, ep), known before anything is allocated.
struct ParamEntry {
  std::string name;  // as in Weights::named(): "wte", "layers.3.wq", "layers.1.experts.w_up"
  Shape shape;
  int64_t offset = 0;  // in elements
  int64_t numel = 0;
  bool decay = false;  // matrices take weight decay; norm weights do not
};
struct ParamLayout {
  std::vector<ParamEntry> entries;
  int64_t size = 0;  // elements of the flat buffer (with the alignment padding)

  static ParamLayout Of(const ModelConfig& c, int tp = 1, int ep = 1);
  // The entry of `name` (GROVE_CHECK-fails naming it when absent).
  const ParamEntry& at(const std::string& name) const;
};

struct Weights {
  Tensor wte;                        // [V, h] token embedding
  std::vector<LayerWeights> layers;  // L blocks
  Tensor final_norm;                 // [h]
  Tensor lm_head;                    // [V, h]

  // Zero-filled tensors of the right (per-rank, for tp, ep > 1) shapes, as views of one
  // host buffer laid out as ParamLayout::Of(c, tp, ep).
  static Weights Zeros(const ModelConfig& c, int tp = 1, int ep = 1);
  // Tensors that are views of `flat` (any device and dtype, at least layout.size elements) at
  // the layout's offsets: writing a tensor writes the flat buffer and back.
  static Weights View(const Tensor& flat, const ParamLayout& layout);
  // Deterministic initialisation from c.seed: N(0, init_std) for matrices, with the residual
  // output projections (wo, w_down) scaled by 1/sqrt(2L) as in GPT-2; norm weights = 1.
  // For tp > 1 the full weights are generated and this rank's shard is kept, so every layout
  // starts from the same model.
  static Weights Init(const ModelConfig& c, int tp = 1, int tp_rank = 0, int ep = 1,
                      int ep_rank = 0);
  // This rank's shard of full (tp = ep = 1) weights.
  static Weights Shard(const Weights& full, const ModelConfig& c, int tp, int tp_rank, int ep = 1,
                       int ep_rank = 0);

  // Every tensor with its name, sharing storage with this struct.
  std::vector<NamedTensor> named() const;
  int64_t numel() const;
  void zero();
  // Deep copy.
  Weights clone() const;
  // Copies tensors by name from `src` (shapes must match exactly; any devices). Errors name the
  // tensor.
  Status CopyFrom(const std::map<std::string, Tensor>& src, const std::string& origin,
                  const std::string& prefix = "");
};

}  // namespace grove
