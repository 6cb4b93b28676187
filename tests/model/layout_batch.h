// The global batch of the layout-equivalence tests and a data-parallel rank's columns of it,
// shared by the CPU (parallel_equivalence_test.cc) and the CUDA-backend (cuda_equivalence_cases.cc)
// drivers, so that both compare against the same single-rank batch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "spec/model_config.h"

namespace grove::testing {

struct LayoutBatch {
  std::vector<int32_t> tokens, targets;  // [s, B] row-major (row = s_idx * B + b_idx)
};

// Random tokens and targets (seed 5) of a [s, B] batch; target 3 is ignored (-1).
inline LayoutBatch GlobalBatch(const ModelConfig& c, int s, int B) {
  LayoutBatch g;
  Rng rng(5);
  for (int i = 0; i < s * B; ++i) {
    g.tokens.push_back(int32_t(rng.next_u64() % c.vocab_size));
    g.targets.push_back(int32_t(rng.next_u64() % c.vocab_size));
  }
  g.targets[3] = -1;
  return g;
}

// Columns [r·b, (r+1)·b) of a [s, B] batch: data-parallel rank r's share.
inline std::vector<int32_t> Columns(const std::vector<int32_t>& x, int s, int B, int r, int b) {
  std::vector<int32_t> out;
  for (int i = 0; i < s; ++i)
    for (int j = 0; j < b; ++j) out.push_back(x[size_t(i) * B + r * b + j]);
  return out;
}

}  // namespace grove::testing
