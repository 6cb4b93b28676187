// Weights: the transformer's parameters (or their gradients) as named tensors.
//
// The same struct holds parameters and gradients, so "grads.layers[i].wq" is the gradient of
// "params.layers[i].wq". Linear weights are [out, in] as in torch.nn.Linear (y = x W^T).
// named() lists every tensor in one fixed order with stable names ("layers.3.w_gate"); the
// optimizer, the checkpoint and the PyTorch oracle test all go through it.
#pragma once

#include <string>
#include <vector>

#include "core/safetensors.h"
#include "core/tensor.h"
#include "model/config.h"

namespace grove {

struct LayerWeights {
  Tensor attn_norm;  // [h]
  Tensor wq;         // [a*d, h]
  Tensor wk;         // [k*d, h]
  Tensor wv;         // [k*d, h]
  Tensor wo;         // [h, a*d]
  Tensor mlp_norm;   // [h]
  Tensor w_gate;     // [f, h]
  Tensor w_up;       // [f, h]
  Tensor w_down;     // [h, f]
};

struct Weights {
  Tensor wte;                        // [V, h] token embedding
  std::vector<LayerWeights> layers;  // L blocks
  Tensor final_norm;                 // [h]
  Tensor lm_head;                    // [V, h]

  // Zero-filled tensors of the right shapes.
  static Weights Zeros(const ModelConfig& c);
  // Deterministic initialisation from c.seed: N(0, init_std) for matrices, with the residual
  // output projections (wo, w_down) scaled by 1/sqrt(2L) as in GPT-2; norm weights = 1.
  static Weights Init(const ModelConfig& c);

  // Every tensor with its name, sharing storage with this struct.
  std::vector<NamedTensor> named() const;
  int64_t numel() const;
  void zero();
  // Copies tensors by name from `src` (shapes must match exactly). Errors name the tensor.
  Status CopyFrom(const std::map<std::string, Tensor>& src, const std::string& origin,
                  const std::string& prefix = "");
};

}  // namespace grove
