// Shared by the CUDA generator tests (cuda_generate_test.cc: thread ranks;
// cuda_generate_mpi_test.cc: MPI ranks on the emulator): the tiny model, the sequences, and what a
// generator produced. With GROVE_GENERATE_CPU_REFERENCE the reference is the CPU Generator on one
// process, else the CUDA Generator on one rank without a group. Tolerances:
// cuda_generate_test.cc's header.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/cuda/backend.h"
#include "model/cuda/cuda_generate.h"
#include "model/weights.h"
#ifdef GROVE_GENERATE_CPU_REFERENCE
#include "model/generate.h"
#endif

namespace grove::generate_cases {

using Cuda = CudaBackend<float>;

constexpr double kLogitTol = 1e-5;

inline ModelConfig tiny_config(int kv_heads) {
  ModelConfig c;
  c.vocab_size = 128;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = kv_heads;
  c.max_seq_len = 32;
  c.init_std = 0.3f;
  c.seed = 77;
  return c;
}

inline std::vector<int32_t> random_tokens(int n, int vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.next_u64() % vocab);
  return t;
}

// What one generator produced: the logits of every position of `tokens` and the greedy
// continuation of `prompt`.
struct Decoded {
  std::vector<float> logits;  // [T, V]
  std::vector<int32_t> greedy;
  std::vector<int32_t> greedy_eos;  // stopped at the reference's 4th token
};

template <class G, class Download>
Decoded decode(G& gen, const ModelConfig& c, const std::vector<int32_t>& tokens,
               const std::vector<int32_t>& prompt, int max_new, int eos, Download download) {
  Decoded d;
  d.logits.resize(tokens.size() * size_t(c.vocab_size));
  for (size_t t = 0; t < tokens.size(); ++t)
    download(d.logits.data() + t * c.vocab_size, gen.step(tokens[t]));
  gen.reset();
  d.greedy = gen.generate(prompt, max_new);
  if (eos >= 0) {
    gen.reset();
    d.greedy_eos = gen.generate(prompt, max_new, eos);
  }
  return d;
}

// The CUDA generator's outputs (logits downloaded from the device).
inline Decoded decode_cuda(CudaGenerator& gen, const ModelConfig& c,
                           const std::vector<int32_t>& tokens, const std::vector<int32_t>& prompt,
                           int max_new, int eos) {
  return decode(gen, c, tokens, prompt, max_new, eos, [&](float* dst, const float* src) {
    Cuda::download(dst, src, sizeof(float) * c.vocab_size);
  });
}

constexpr int kT = 13, kMaxNew = 16, kCapacity = 24;

inline Decoded reference(const ModelConfig& c, const Weights& w, const std::vector<int32_t>& tokens,
                         const std::vector<int32_t>& prompt) {
#ifdef GROVE_GENERATE_CPU_REFERENCE
  Generator gen(c, w, /*cp=*/nullptr, kCapacity);
  return decode(gen, c, tokens, prompt, kMaxNew, -1,
                [&](float* dst, const float* src) { std::copy(src, src + c.vocab_size, dst); });
#else
  CudaGenerator gen(c, w, /*cp=*/nullptr, kCapacity);
  return decode_cuda(gen, c, tokens, prompt, kMaxNew, -1);
#endif
}

// The reference's greedy tokens up to and including its 4th (the eos of the stop check).
inline std::vector<int32_t> until_eos(const std::vector<int32_t>& greedy, int32_t eos) {
  const auto first = std::find(greedy.begin(), greedy.end(), eos);
  return std::vector<int32_t>(greedy.begin(), first + 1);
}

}  // namespace grove::generate_cases
