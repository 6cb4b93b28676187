// MLA decoding with the latent cache (model/generate.h, KvCache::kLatent), under mpirun np 1/2/4:
//  - per step, the latent-cache Generator's logits equal the full-cache Generator's (the K/V of
//    the padded per-head keys and values) within kLatentTol, for q_lora off and on, tree and
//    ring, with the cache sharded over all ranks;
//  - greedy tokens of the latent cache equal those of the full cache, token for token;
//  - the latent cache holds (r_kv + d_r) · 4 bytes per token per layer, the full one 2·a·dq·4;
//  - the latent cache on an MHA model is an error naming --kv-cache, in the Generator and in
//    GenerateOnDevice (what grove-generate runs), as is the latent cache with --device cuda.
// The model is randomly initialised with a large init_std so that greedy choices are separated.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/generate.h"
#include "parallel/grid.h"
#include "tests/comm/mpi_test_env.h"
#include "worker/generate_device.h"

namespace grove {
namespace {

// Why 2e-5 (max |Δ| / max |full logit| per step): the latent path changes the order of the fp32
// operations (Wk_b is applied to the query instead of the keys, Wv_b after the weighted sum instead
// of before, the query is prescaled); over 2 layers and a 256-way lm head the test prints its
// worst case: measured 1.1e-6 to 2.0e-6 over np 1/2/4, tree and ring, q_lora off and on.
constexpr double kLatentTol = 2e-5;

ModelConfig mla_config(int q_lora) {
  ModelConfig c;
  c.vocab_size = 256;
  c.d_model = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.max_seq_len = 64;
  c.init_std = 0.3f;
  c.seed = 91;
  c.attention = Attention::kMla;
  c.mla = MlaOptions{q_lora, 32, 16, 8, 12};  // r_q, r_kv, d_n, d_r, dv
  return c;
}

std::vector<int32_t> random_tokens(int n, int vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.next_u64() % vocab);
  return t;
}

double max_rel(const float* got, const float* want, int n) {
  double d = 0, m = 0;
  for (int i = 0; i < n; ++i) {
    d = std::max(d, double(std::fabs(got[i] - want[i])));
    m = std::max(m, double(std::fabs(want[i])));
  }
  return d / std::max(m, 1e-30);
}

TEST(GenerateLatent, LogitsEqualFullCache) {
  for (int q_lora : {0, 24}) {
    const ModelConfig c = mla_config(q_lora);
    const Weights w = Weights::Init(c);  // same seed on every rank: identical weights
    const int T = 30;
    const std::vector<int32_t> tokens = random_tokens(T, c.vocab_size, 5);
    for (auto algo : {CpAttention::kTree, CpAttention::kRing}) {
      SCOPED_TRACE(::testing::Message() << cp_attention_name(algo) << " q_lora=" << q_lora
                                        << " cp=" << test::world().size());
      Generator full(c, w, &test::world(), T, algo, KvCache::kFull);
      Generator latent(c, w, &test::world(), T, algo, KvCache::kLatent);
      double worst = 0;
      for (int t = 0; t < T; ++t) {
        const float* want = full.step(tokens[t]);
        const float* got = latent.step(tokens[t]);
        const double rel = max_rel(got, want, c.vocab_size);
        worst = std::max(worst, rel);
        EXPECT_LE(rel, kLatentTol) << "position " << t;
        EXPECT_EQ(argmax(got, c.vocab_size), argmax(want, c.vocab_size)) << "position " << t;
      }
      if (test::world().rank() == 0)
        std::printf("[latent] %s q_lora=%d cp=%d: max relative logit difference %.3g\n",
                    cp_attention_name(algo), q_lora, test::world().size(), worst);
      EXPECT_THROW(latent.step(0), Error);  // the context is full
    }
  }
}

TEST(GenerateLatent, GreedyTokensEqualFullCache) {
  for (int q_lora : {0, 24}) {
    const ModelConfig c = mla_config(q_lora);
    const Weights w = Weights::Init(c);
    const std::vector<int32_t> prompt = random_tokens(5, c.vocab_size, 9);
    const int max_new = 40;
    Generator single(c, w, /*cp=*/nullptr, 64, CpAttention::kTree, KvCache::kFull);
    const std::vector<int32_t> want = single.generate(prompt, max_new);
    ASSERT_EQ(static_cast<int>(want.size()), max_new);
    EXPECT_GE(std::set<int32_t>(want.begin(), want.end()).size(), 4u);
    for (auto algo : {CpAttention::kTree, CpAttention::kRing}) {
      Generator gen(c, w, &test::world(), 64, algo, KvCache::kLatent);
      EXPECT_EQ(gen.generate(prompt, max_new), want)
          << cp_attention_name(algo) << " q_lora=" << q_lora << " cp=" << test::world().size();
      if (test::world().size() > 1) {
        EXPECT_GT(gen.attention_stats().bytes, 0);
      }
    }
  }
}

TEST(GenerateLatent, CacheBytesPerToken) {
  const ModelConfig c = mla_config(0);
  const Weights w = Weights::Init(c);
  const int L = c.n_layers, kvr = c.mla_kv_rank(), dr = c.mla_rope_dim();
  const int dq = c.attn_qk_dim(), a = c.n_heads;
  Generator latent(c, w, &test::world(), 64, CpAttention::kTree, KvCache::kLatent);
  Generator full(c, w, &test::world(), 64, CpAttention::kTree, KvCache::kFull);
  EXPECT_EQ(latent.cache_bytes_per_token(), int64_t(kvr + dr) * 4 * L);
  EXPECT_EQ(full.cache_bytes_per_token(), int64_t(2) * a * dq * 4 * L);
  const int p = test::world().size(), local = (64 + p - 1) / p;
  EXPECT_EQ(latent.cache_bytes(), int64_t(local) * (kvr + dr) * 4 * L);
  if (test::world().rank() == 0)
    std::printf("[latent] bytes per token: latent %lld, full %lld\n",
                static_cast<long long>(latent.cache_bytes_per_token()),
                static_cast<long long>(full.cache_bytes_per_token()));
}

TEST(GenerateLatent, MhaModelIsAnError) {
  ModelConfig c = mla_config(0);
  c.attention = Attention::kMha;
  c.mla = {};
  const Weights w = Weights::Init(c);
  try {
    Generator gen(c, w, &test::world(), 8, CpAttention::kTree, KvCache::kLatent);
    FAIL() << "the latent cache on an MHA model was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-cache"), std::string::npos) << e.what();
  }
}

// grove-generate's entry point: the latent cache gives the full cache's tokens over cp = world
// and reports its bytes per token; the selection errors name the flag.
TEST(GenerateLatent, GenerateOnDeviceSelection) {
  const int n = test::world().size();
  auto grid = parallel::ParallelGrid::create(
      std::shared_ptr<comm::Communicator>(&test::world(), [](comm::Communicator*) {}),
      {.world = n, .tp = 1, .cp = n, .ep = 1, .dp = 1});
  ASSERT_TRUE(grid.ok()) << grid.status().message();
  const ModelConfig c = mla_config(0);
  const Weights w = Weights::Init(c);
  const std::vector<int32_t> prompt = random_tokens(4, c.vocab_size, 13);
  auto full = GenerateOnDevice(Device::kCPU, c, w, grid.value(), 24, CpAttention::kTree, prompt, 16,
                               -1, KvCache::kFull);
  auto latent = GenerateOnDevice(Device::kCPU, c, w, grid.value(), 24, CpAttention::kTree, prompt,
                                 16, -1, KvCache::kLatent);
  ASSERT_TRUE(full.ok() && latent.ok());
  EXPECT_EQ(latent.value().tokens, full.value().tokens);
  EXPECT_EQ(latent.value().cache_bytes_per_token,
            int64_t(c.mla_kv_rank() + c.mla_rope_dim()) * 4 * c.n_layers);
  auto cuda = GenerateOnDevice(Device::kCUDA, c, w, grid.value(), 24, CpAttention::kTree, prompt,
                               16, -1, KvCache::kLatent);
  ASSERT_FALSE(cuda.ok());
  EXPECT_NE(cuda.status().message().find("--kv-cache latent"), std::string::npos);
  ModelConfig mha = c;
  mha.attention = Attention::kMha;
  mha.mla = {};
  const Weights wm = Weights::Init(mha);
  auto bad = GenerateOnDevice(Device::kCPU, mha, wm, grid.value(), 24, CpAttention::kTree, prompt,
                              16, -1, KvCache::kLatent);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--kv-cache"), std::string::npos) << bad.status().message();
}

}  // namespace
}  // namespace grove
