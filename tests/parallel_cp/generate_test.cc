// Decoding with a CP-sharded KV cache, end to end, under mpirun:
//  - the Generator's logits for a prompt equal the training Transformer's forward logits at the
//    same positions (≤ 1e-4 relative), with the cache sharded over all ranks — the decode path
//    is the same model;
//  - greedy tokens generated over cp = N (tree and ring) equal, token for token, those generated
//    by one rank alone.
// The model is randomly initialised, saved through SaveCheckpoint and loaded the way
// grove-generate loads it. Its init_std is large so that logits are well separated and greedy
// choices do not hinge on the last bits.
#include "model/generate.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/transformer.h"
#include "tests/comm/mpi_test_env.h"
#include "tests/common/tensor_compare.h"
#include "worker/checkpoint.h"
#include "worker/generate_load.h"

namespace grove {
namespace {

// Why 1e-4: the Transformer runs the prompt as one [T, ...] batch (GEMMs over T rows, one
// attention call), the Generator one row at a time and attention merged over shards, so fp32
// rounding differs across 2 layers, norms and a 256-way lm head; observed differences are ≤ 4e-6.
constexpr double kLogitTol = 1e-4;

ModelConfig tiny_config(int kv_heads) {
  ModelConfig c;
  c.vocab_size = 256;
  c.d_model = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = kv_heads;
  c.max_seq_len = 64;
  c.init_std = 0.3f;
  c.seed = 77;
  return c;
}

// Rank 0 saves a freshly initialised model as a training run would; every rank loads it back.
struct SavedModel {
  std::string run_dir;
  ModelConfig config;
  Weights weights;
};

SavedModel save_and_load(const ModelConfig& c) {
  comm::Communicator& w = test::world();
  char path[64] = {};
  if (w.rank() == 0) {
    std::strcpy(path, "/tmp/grove_generate_test_XXXXXX");
    EXPECT_NE(mkdtemp(path), nullptr);
    Weights params = Weights::Init(c);
    AdamW opt(c);
    const nlohmann::json state = {{"config", {{"model", ModelConfigToJson(c)}}}};
    auto dir = SaveCheckpoint(std::string(path) + "/checkpoints", 1, params, opt, state, 1);
    EXPECT_TRUE(dir.ok()) << dir.status().message();
  }
  w.broadcast(path, sizeof(path), DType::kU8, 0);
  SavedModel m;
  m.run_dir = path;
  auto dir = ResolveCheckpointDir("", m.run_dir);
  EXPECT_TRUE(dir.ok()) << dir.status().message();
  Status st = LoadForGeneration(dir.value(), &m.config, &m.weights);
  EXPECT_TRUE(st.ok()) << st.message();
  w.barrier();
  if (w.rank() == 0) std::filesystem::remove_all(m.run_dir);
  return m;
}

std::vector<int32_t> random_tokens(int n, int vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.next_u64() % vocab);
  return t;
}

TEST(Generate, LogitsEqualTransformerForward) {
  // Multi-head, GQA, MoE (top-2 in every block; top-1 in every other block) and MLA.
  std::vector<ModelConfig> configs = {tiny_config(4), tiny_config(2), tiny_config(4),
                                      tiny_config(2)};
  configs[2].moe.num_experts = 4;
  configs[2].moe.top_k = 2;
  configs[3].moe.num_experts = 4;
  configs[3].moe.top_k = 1;
  configs[3].moe.every = 2;
  configs[3].moe.expert_ffn = 96;
  // Multi-head latent attention, decoded with the K/V cache of its padded keys and values.
  configs.push_back(tiny_config(0));
  configs[4].attention = Attention::kMla;
  configs[4].mla = MlaOptions{16, 32, 16, 8, 12};
  for (const ModelConfig& config : configs) {
    const int kv_heads = config.kv_heads();
    const SavedModel m = save_and_load(config);
    const ModelConfig& c = m.config;
    ASSERT_EQ(c.kv_heads(), kv_heads);
    ASSERT_EQ(c.moe.num_experts, config.moe.num_experts);
    const int T = 21;
    const std::vector<int32_t> tokens = random_tokens(T, c.vocab_size, 5);
    const std::vector<int32_t> targets(T, -1);

    Transformer model(c, /*batch=*/1, T, Recompute::kNone);
    std::map<std::string, Tensor> loaded;
    for (const NamedTensor& nt : m.weights.named()) loaded[nt.name] = nt.tensor;
    ASSERT_TRUE(model.params().CopyFrom(loaded, "loaded checkpoint").ok());
    model.forward(tokens.data(), targets.data());
    const float* want = model.logits().data<float>();

    for (auto algo : {CpAttention::kTree, CpAttention::kRing}) {
      SCOPED_TRACE(::testing::Message() << cp_attention_name(algo) << " kv_heads=" << kv_heads
                                        << " experts=" << c.moe.num_experts << " top_k="
                                        << c.moe.top_k << " " << attention_name(c.attention));
      Generator gen(c, m.weights, &test::world(), T, algo);
      for (int t = 0; t < T; ++t) {
        const float* got = gen.step(tokens[t]);
        EXPECT_TRUE(testing::compare("logits at position " + std::to_string(t), got,
                                     want + int64_t(t) * c.vocab_size, c.vocab_size, kLogitTol));
      }
      EXPECT_THROW(gen.step(0), Error);  // the context is full
    }
  }
}

TEST(Generate, GreedyTokensOverCpEqualOneRank) {
  const SavedModel m = save_and_load(tiny_config(2));
  const ModelConfig& c = m.config;
  const std::vector<int32_t> prompt = random_tokens(5, c.vocab_size, 9);
  const int max_new = 40;
  Generator single(c, m.weights, /*cp=*/nullptr, 64);
  const std::vector<int32_t> want = single.generate(prompt, max_new);
  ASSERT_EQ(static_cast<int>(want.size()), max_new);
  // Not a degenerate sequence: greedy decoding of this model visits several tokens.
  EXPECT_GE(std::set<int32_t>(want.begin(), want.end()).size(), 4u);
  for (auto algo : {CpAttention::kTree, CpAttention::kRing}) {
    Generator gen(c, m.weights, &test::world(), 64, algo);
    const std::vector<int32_t> got = gen.generate(prompt, max_new);
    EXPECT_EQ(got, want) << cp_attention_name(algo) << " over cp=" << test::world().size();
    if (test::world().size() > 1) {
      EXPECT_GT(gen.attention_stats().bytes, 0);
    }
  }
  // eos stops generation at its first occurrence and is included.
  Generator stop(c, m.weights, &test::world(), 64);
  const int32_t eos = want[3];
  const auto first = std::find(want.begin(), want.end(), eos);
  EXPECT_EQ(stop.generate(prompt, max_new, eos), std::vector<int32_t>(want.begin(), first + 1));
}

}  // namespace
}  // namespace grove
