// Helpers shared by the LSH dispatcher tests: token generators and a layer runner that swaps in
// the LshDispatcher.
#pragma once

#include <memory>
#include <vector>

#include "core/rng.h"
#include "parallel/lsh_dispatcher.h"
#include "parallel/moe_layer.h"

namespace grove::parallel::lsh_test {

inline std::vector<float> Randn(size_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = scale * float(rng.normal());
  return v;
}

// T tokens around K centres: x_t = centre_{t mod K}·spread + noise·N(0, 1). Centres and noise
// from `seed`; token t of a global batch is the same whatever slice of it a rank holds.
inline std::vector<float> Clustered(int T, int h, int K, uint64_t seed, float spread = 3.0f,
                                    float noise = 0.05f) {
  const std::vector<float> centres = Randn(size_t(K) * h, seed, spread);
  std::vector<float> x = Randn(size_t(T) * h, seed + 1, noise);
  for (int t = 0; t < T; ++t) {
    for (int c = 0; c < h; ++c) x[size_t(t) * h + c] += centres[size_t(t % K) * h + c];
  }
  return x;
}

inline LshDispatcher& UseLsh(MoeLayer& layer, int h, comm::Communicator* ep,
                             const LshOptions& lcfg) {
  layer.set_dispatcher(std::make_unique<LshDispatcher>(layer.config().num_experts, h, ep, lcfg));
  return static_cast<LshDispatcher&>(layer.dispatcher());
}

}  // namespace grove::parallel::lsh_test
