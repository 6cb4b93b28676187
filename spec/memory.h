// Memory model: the bytes a training step needs per rank, from the formula derived in
// docs/memory.md. The activation part equals what the activation stash allocates, byte for byte
// (tests/model check it for every recompute mode), so the layout planner can trust it.
//
// Legend: s sequence, b micro-batch, h d_model, a heads, k kv heads, d head dim, f SwiGLU hidden,
// V vocabulary, L layers, t tensor-parallel size, N = s*b. fp32 everywhere (4 bytes).
#pragma once

#include <cstdint>
#include <string>

#include "spec/enums.h"
#include "spec/model_config.h"

namespace grove {

struct MemoryLayout {
  int batch = 1;    // b: micro-batch per data-parallel rank
  int seq = 1;      // s
  int tp = 1;       // t
  bool sp = false;  // sequence parallelism (norms/residuals on [s/t, b, h])
  Recompute recompute = Recompute::kSelective;
  int ep = 1;  // expert parallel (experts split over ep ranks)
};

struct MemoryEstimate {
  int64_t activations_per_layer = 0;  // bytes kept by one block across the step
  int64_t activations_transient = 0;  // full recompute: one block's intermediates, reused
  int64_t activations_head = 0;       // final norm, logits (vocab-parallel), losses
  int64_t activations = 0;            // L * per_layer + transient + head
  int64_t parameters = 0;             // this rank's shard of the weights
  int64_t gradients = 0;
  int64_t optimizer = 0;  // AdamW m and v
  int64_t total = 0;
  std::string to_string() const;
};

// Bytes one transformer block keeps for the backward (docs/memory.md). An MoE block's stash holds
// the same buffers as a dense block's (`moe` does not change the count); the experts' own stash
// depends on the routing and is estimated separately (MoeExpectedStashBytes, balanced routing).
// EstimateMemory's activations count both.
int64_t ActivationBytesPerLayer(const ModelConfig& c, const MemoryLayout& m, bool moe = false);
int64_t MoeExpectedStashBytes(const ModelConfig& c, const MemoryLayout& m);
MemoryEstimate EstimateMemory(const ModelConfig& c, const MemoryLayout& m);

}  // namespace grove
