// The whole model against a PyTorch re-implementation (tests/oracle/transformer_reference.py):
// same weights and batch, loss and EVERY parameter gradient within 1e-4 relative (docs/testing.md),
// for each recompute mode, with grouped-query attention, and with a mixture-of-experts block (also
// its aux + z loss, which a full-recompute backward must not count twice).
//
// Why 1e-4: the reference runs in float64 from the same fp32 weights, so the difference is Grove's
// fp32 rounding alone; through 2 blocks, a vocabulary softmax and sums over up to N*V terms it
// stays around 1e-6..1e-5 in practice. A wrong sign, scale, missing term or mis-routed gradient
// shows up as O(1) relative error, four orders above the bound.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "core/safetensors.h"
#include "model/transformer.h"
#include "tests/common/tensor_compare.h"
#include "tests/common/torch_oracle.h"

namespace grove {
namespace {

struct Case {
  std::string name;
  nlohmann::json cfg;
  int batch, seq;
  Recompute mode;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

SafetensorsFile RunOracle(const Case& c) {
  std::string args = "'";
  args += c.cfg.dump();
  args += "' " + std::to_string(c.batch) + " " + std::to_string(c.seq) + " 7";
  return testing::RunTorchOracle("tests/oracle/transformer_reference.py", c.name, args);
}

class TransformerVsTorch : public ::testing::TestWithParam<Case> {};

TEST_P(TransformerVsTorch, LossAndEveryGradient) {
  const Case& c = GetParam();
  SafetensorsFile ref = RunOracle(c);
  ASSERT_FALSE(ref.tensors.empty());
  ModelConfig cfg;
  ASSERT_TRUE(ModelConfigFromJson(c.cfg, &cfg).ok());
  Transformer model(cfg, c.batch, c.seq, c.mode);
  Status st = model.params().CopyFrom(ref.tensors, "oracle", "model.");
  ASSERT_TRUE(st.ok()) << st.message();

  const float loss =
      model.forward(ref.tensors["tokens"].data<int32_t>(), ref.tensors["targets"].data<int32_t>());
  model.zero_grads();
  model.backward();
  const double want = ref.tensors["loss"].data<double>()[0];
  EXPECT_TRUE(testing::compare("loss", &loss, &want, 1, 1e-4));
  int checked = 0;
  double worst = 0;
  std::string worst_name;
  for (const NamedTensor& g : model.grads().named()) {
    const Tensor& r = ref.tensors.at("grad." + g.name);
    ASSERT_EQ(r.numel(), g.tensor.numel()) << g.name;
    EXPECT_TRUE(
        testing::compare(g.name, g.tensor.data<float>(), r.data<double>(), g.tensor.numel(), 1e-4));
    const double rel =
        testing::compare_stats(g.tensor.data<float>(), r.data<double>(), g.tensor.numel()).rel();
    if (rel > worst) worst = rel, worst_name = g.name;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(ref.tensors.size() - 5) / 2);  // every model.* has a grad.*
  if (cfg.moe.num_experts > 0) {
    // fp32 logits sit ~1e-6 from the float64 ones: a smaller top-k margin could flip a choice.
    ASSERT_GT(ref.tensors["topk_margin"].data<double>()[0], 1e-4) << "change the oracle seed";
    const double want_moe = ref.tensors["moe_loss"].data<double>()[0];
    const float got_moe = model.moe_loss();
    EXPECT_TRUE(testing::compare("moe_loss", &got_moe, &want_moe, 1, 1e-4));
  }
  std::printf("  %s: loss %.8f vs torch %.8f; worst gradient rel error %.2e (%s)\n", c.name.c_str(),
              loss, want, worst, worst_name.c_str());
}

const nlohmann::json kBase = {
    {"vocab_size", 97}, {"d_model", 32}, {"n_layers", 2}, {"n_heads", 4}, {"max_seq_len", 16}};
// Block 1 of 2 is a dropless top-2 mixture of 4 experts (expert_ffn 24).
const nlohmann::json kMoe = [] {
  nlohmann::json j = kBase;
  j["moe"] = {{"num_experts", 4}, {"top_k", 2}, {"every", 2}, {"expert_ffn", 24}};
  return j;
}();
nlohmann::json with(nlohmann::json j, const char* k, int v) {
  j[k] = v;
  return j;
}
// Multi-head latent attention: a query latent (rank 12), a KV latent of 20, qk 6 + 4 per head and
// values of 8 (< 10: zero-padded inside attention), d_model 32 over 4 heads.
const nlohmann::json kMla = [] {
  nlohmann::json j = kBase;
  j["attention"] = "mla";
  j["mla"] = {{"q_lora_rank", 12},
              {"kv_lora_rank", 20},
              {"qk_nope_head_dim", 6},
              {"qk_rope_head_dim", 4},
              {"v_head_dim", 8}};
  return j;
}();
// Without the query latent, v as wide as q/k (no padding), and an MoE block.
const nlohmann::json kMlaNoQLora = [] {
  nlohmann::json j = kMoe;
  j["attention"] = "mla";
  j["mla"] = {
      {"kv_lora_rank", 16}, {"qk_nope_head_dim", 8}, {"qk_rope_head_dim", 4}, {"v_head_dim", 12}};
  return j;
}();

INSTANTIATE_TEST_SUITE_P(
    Modes, TransformerVsTorch,
    ::testing::Values(Case{"none", kBase, 3, 8, Recompute::kNone},
                      Case{"selective", kBase, 3, 8, Recompute::kSelective},
                      Case{"full", kBase, 3, 8, Recompute::kFull},
                      Case{"gqa", with(with(kBase, "n_kv_heads", 2), "ffn_hidden", 48), 2, 12,
                           Recompute::kSelective},
                      Case{"moe", kMoe, 3, 8, Recompute::kSelective},
                      Case{"moe_full", kMoe, 3, 8, Recompute::kFull},
                      Case{"mla_none", kMla, 3, 8, Recompute::kNone},
                      Case{"mla_selective", kMla, 3, 8, Recompute::kSelective},
                      Case{"mla_full", kMla, 2, 12, Recompute::kFull},
                      Case{"mla_moe_no_q_lora", kMlaNoQLora, 3, 8, Recompute::kSelective}),
    [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
}  // namespace grove
