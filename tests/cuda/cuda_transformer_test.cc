// The transformer on the CUDA backend (TransformerT<CudaBackend<T>>, the same model code as the
// CPU backend) against the float64 PyTorch re-implementation of the model
// (tests/oracle/transformer_reference.py, the oracle the CPU model is checked against): loss and
// the gradient of every parameter, in fp32 (tight) and bf16 (mixed precision, looser), dense and
// with a mixture-of-experts block (its aux + z loss too); recompute modes against each other;
// and, without a device, the flat parameter layout against Weights::named().
//
// Links only the GPU model, the CUDA kernels and GoogleTest, so it runs on a GPU machine without
// OpenBLAS or MPI. Every device test skips with one line when no CUDA device is present.
#include "model/cuda/cuda_transformer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/common/tensor_compare.h"
#include "tests/common/torch_oracle.h"
#include "tests/cuda/test_util.h"

namespace grove {
namespace {

class GpuTransformerTest : public cuda::testing::GpuTest {};

enum class GpuPrecision { kFp32, kBf16 };

// A host copy of device weights.
Weights ToHost(const Weights& w, const ModelConfig& cfg) {
  Weights out = Weights::Zeros(cfg);
  std::vector<NamedTensor> src = w.named(), dst = out.named();
  for (size_t i = 0; i < dst.size(); ++i) dst[i].tensor.copy_from(src[i].tensor);
  return out;
}

nlohmann::json SmallConfig() {
  return {{"vocab_size", 96}, {"d_model", 64},    {"n_layers", 2},     {"n_heads", 4},
          {"n_kv_heads", 2},  {"ffn_hidden", 96}, {"max_seq_len", 32}, {"seed", 11}};
}

ModelConfig Parse(const nlohmann::json& j) {
  ModelConfig c;
  Status st = ModelConfigFromJson(j, &c);
  GROVE_CHECK(st.ok()) << st.message();
  return c;
}

struct OracleCase {
  const char* name;
  GpuPrecision precision;
  Recompute mode;
  bool moe = false;
  bool moe_every_block = false;  // both blocks MoE (each layer's backward uses its own counts)
  bool mla = false;              // multi-head latent attention (MlaConfig)
};
// The oracle's seed (weights and batch). The MoE cases use one whose smallest top-k logit margin
// (0.087) is well above bf16's logit error, so that bf16 routing agrees with float64 routing.
int OracleSeed(const OracleCase& c) {
  return c.moe ? 28 : 7;
}

// Block 1 of 2 a dropless top-2 mixture of 4 experts.
nlohmann::json MoeConfig() {
  nlohmann::json j = SmallConfig();
  j["moe"] = {{"num_experts", 4}, {"top_k", 2}, {"every", 2}, {"expert_ffn", 48}};
  return j;
}

// Multi-head latent attention: a query latent of 32, a KV latent of 48, 4 heads of qk 16 + 8 and
// values of 16 (zero-padded to 24 inside attention).
nlohmann::json MlaConfig() {
  nlohmann::json j = SmallConfig();
  j.erase("n_kv_heads");
  j["attention"] = "mla";
  j["mla"] = {{"q_lora_rank", 32},
              {"kv_lora_rank", 48},
              {"qk_nope_head_dim", 16},
              {"qk_rope_head_dim", 8},
              {"v_head_dim", 16}};
  return j;
}

template <typename T>
void CheckAgainstOracleT(const OracleCase& c) {
  const int batch = 3, seq = 16;
  nlohmann::json cfg_json = c.mla ? MlaConfig() : c.moe ? MoeConfig() : SmallConfig();
  if (c.moe_every_block) cfg_json["moe"]["every"] = 1;
  std::string args = "'";  // built piecewise: GCC 12 misreports -Wrestrict on "'" + string
  args += cfg_json.dump();
  args += "' " + std::to_string(batch) + " " + std::to_string(seq) + " " +
          std::to_string(OracleSeed(c));
  SafetensorsFile ref = testing::RunTorchOracle("tests/oracle/transformer_reference.py",
                                                std::string("gpu_") + c.name, args);
  ASSERT_FALSE(ref.tensors.empty());
  const ModelConfig cfg = Parse(cfg_json);
  using Model = TransformerT<CudaBackend<T>>;
  const Status ok = Model::Supports(cfg, batch, seq, {});
  ASSERT_TRUE(ok.ok()) << ok.message();
  Model m(cfg, batch, seq, c.mode);
  Weights w = Weights::Zeros(cfg);
  ASSERT_TRUE(w.CopyFrom(ref.tensors, "oracle", "model.").ok());
  ASSERT_TRUE(m.load_params(w).ok());

  const float loss =
      m.forward(ref.tensors["tokens"].data<int32_t>(), ref.tensors["targets"].data<int32_t>());
  m.zero_grads();
  m.backward();
  Weights g = ToHost(m.grads(), cfg);

  const double want = ref.tensors["loss"].data<double>()[0];
  const bool fp32 = c.precision == GpuPrecision::kFp32;
  if (c.moe) {
    // fp32 logits sit ~1e-6 from the float64 ones, bf16 ones ~1e-2: a smaller top-k margin
    // could flip a routing choice and the comparison would mean nothing.
    const double margin = ref.tensors["topk_margin"].data<double>()[0];
    ASSERT_GT(margin, fp32 ? 1e-4 : 5e-2) << "change the oracle seed";
    const double want_moe = ref.tensors["moe_loss"].data<double>()[0];
    EXPECT_NEAR(m.moe_loss(), want_moe, (fp32 ? 1e-4 : 2e-2) * want_moe);
  }
  // fp32: the CPU model's tolerance (no TF32; the only differences are summation orders).
  // bf16: ~8 significant bits per stored activation; the loss to 1%, each gradient to 5% in norm.
  EXPECT_NEAR(loss, want, fp32 ? 1e-4 * std::abs(want) : 1e-2 * std::abs(want));
  double worst = 0;
  std::string worst_name;
  for (const NamedTensor& nt : g.named()) {
    const Tensor& r = ref.tensors.at("grad." + nt.name);
    ASSERT_EQ(r.numel(), nt.tensor.numel()) << nt.name;
    if (fp32) {
      EXPECT_TRUE(testing::compare(nt.name, nt.tensor.data<float>(), r.data<double>(),
                                   nt.tensor.numel(), 1e-4));
      const double rel =
          testing::compare_stats(nt.tensor.data<float>(), r.data<double>(), nt.tensor.numel())
              .rel();
      if (rel > worst) worst = rel, worst_name = nt.name;
    } else {
      const double rel =
          testing::norm_rel(nt.tensor.data<float>(), r.data<double>(), nt.tensor.numel());
      EXPECT_LT(rel, 5e-2) << nt.name;
      if (rel > worst) worst = rel, worst_name = nt.name;
    }
  }
  std::printf("[%s] loss %.7f (torch %.7f), worst gradient error %.3g in %s\n", c.name, loss, want,
              worst, worst_name.c_str());
}

void CheckAgainstOracle(const OracleCase& c) {
  if (c.precision == GpuPrecision::kFp32)
    CheckAgainstOracleT<float>(c);
  else
    CheckAgainstOracleT<cuda::bf16>(c);
}

TEST_F(GpuTransformerTest, Fp32MatchesTorch) {
  CheckAgainstOracle({"fp32", GpuPrecision::kFp32, Recompute::kSelective});
}
TEST_F(GpuTransformerTest, Fp32FullRecomputeMatchesTorch) {
  CheckAgainstOracle({"fp32_full", GpuPrecision::kFp32, Recompute::kFull});
}
TEST_F(GpuTransformerTest, Bf16MatchesTorch) {
  CheckAgainstOracle({"bf16", GpuPrecision::kBf16, Recompute::kSelective});
}
TEST_F(GpuTransformerTest, MoeFp32MatchesTorch) {
  CheckAgainstOracle({"moe_fp32", GpuPrecision::kFp32, Recompute::kSelective, true});
}
TEST_F(GpuTransformerTest, MoeFp32FullRecomputeMatchesTorch) {
  CheckAgainstOracle({"moe_fp32_full", GpuPrecision::kFp32, Recompute::kFull, true});
}
TEST_F(GpuTransformerTest, MoeEveryBlockFp32MatchesTorch) {
  CheckAgainstOracle({"moe2_fp32", GpuPrecision::kFp32, Recompute::kSelective, true, true});
}
TEST_F(GpuTransformerTest, MoeBf16MatchesTorch) {
  CheckAgainstOracle({"moe_bf16", GpuPrecision::kBf16, Recompute::kSelective, true});
}
TEST_F(GpuTransformerTest, MlaFp32MatchesTorch) {
  CheckAgainstOracle({"mla_fp32", GpuPrecision::kFp32, Recompute::kSelective, false, false, true});
}
TEST_F(GpuTransformerTest, MlaFp32FullRecomputeMatchesTorch) {
  CheckAgainstOracle({"mla_fp32_full", GpuPrecision::kFp32, Recompute::kFull, false, false, true});
}
TEST_F(GpuTransformerTest, MlaBf16MatchesTorch) {
  CheckAgainstOracle({"mla_bf16", GpuPrecision::kBf16, Recompute::kSelective, false, false, true});
}

// Gradient accumulation: two backward passes with loss_scale 1/2 over the same batch give the
// gradients of one pass (up to the order of the fp32 sums).
TEST_F(GpuTransformerTest, AccumulationAddsScaledGradients) {
  const ModelConfig cfg = Parse(SmallConfig());
  const int batch = 2, seq = 8, n = batch * seq;
  std::vector<int32_t> tokens(n), targets(n);
  for (int i = 0; i < n; ++i) tokens[i] = (i * 37 + 5) % cfg.vocab_size;
  for (int i = 0; i < n; ++i) targets[i] = i % 5 == 0 ? -1 : (i * 11 + 3) % cfg.vocab_size;
  CudaTransformerF32 m(cfg, batch, seq, Recompute::kNone);
  m.zero_grads();
  m.forward(tokens.data(), targets.data());
  m.backward(1.0f);
  Weights once = ToHost(m.grads(), cfg);
  m.zero_grads();
  for (int r = 0; r < 2; ++r) {
    m.forward(tokens.data(), targets.data());
    m.backward(0.5f, r == 1);
  }
  Weights twice = ToHost(m.grads(), cfg);
  std::vector<NamedTensor> a = twice.named(), b = once.named();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(testing::compare(a[i].name, a[i].tensor.data<float>(), b[i].tensor.data<float>(),
                                 a[i].tensor.numel(), 1e-5));
}

TEST_F(GpuTransformerTest, ParamsRoundTripAndBadWeightsAreRejected) {
  const ModelConfig cfg = Parse(SmallConfig());
  CudaTransformerBf16 made(cfg, 1, 8, Recompute::kSelective);
  Weights init = Weights::Init(cfg), back = Weights::Zeros(cfg);
  made.store_params(&back);
  std::vector<NamedTensor> a = back.named(), b = init.named();
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_EQ(0, std::memcmp(a[i].tensor.raw(), b[i].tensor.raw(), a[i].tensor.bytes()))
        << a[i].name;
  ModelConfig other = cfg;
  other.d_model = 32;
  Status st = made.load_params(Weights::Zeros(other));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("wte"), std::string::npos) << st.message();
}

// ---- host only: runs without a device
// ------------------------------------------------------------

TEST(GpuTransformerLayout, FlatLayoutFollowsWeightsNamed) {
  for (int experts : {0, 4}) {
    nlohmann::json j = SmallConfig();
    if (experts) j["moe"] = {{"num_experts", experts}, {"top_k", 2}, {"every", 2}};
    const ModelConfig cfg = Parse(j);
    const std::vector<ParamEntry> layout = ParamLayout::Of(cfg).entries;
    const std::vector<NamedTensor> named = Weights::Zeros(cfg).named();
    ASSERT_EQ(layout.size(), named.size());
    int64_t end = 0, total = 0;
    for (size_t i = 0; i < named.size(); ++i) {
      EXPECT_EQ(layout[i].name, named[i].name);
      EXPECT_EQ(layout[i].shape, named[i].tensor.shape()) << named[i].name;
      EXPECT_EQ(layout[i].numel, named[i].tensor.numel()) << named[i].name;
      EXPECT_EQ(layout[i].decay, named[i].tensor.ndim() >= 2) << named[i].name;
      EXPECT_GE(layout[i].offset, end) << "overlap at " << named[i].name;
      EXPECT_EQ(layout[i].offset % 8, 0) << "alignment of " << named[i].name;
      end = layout[i].offset + layout[i].numel;
      total += layout[i].numel;
    }
    EXPECT_EQ(total, cfg.num_parameters());
  }
}

TEST(GpuTransformerLayout, UnsupportedConfigsAreNamed) {
  nlohmann::json j = SmallConfig();
  j["moe"] = {{"num_experts", 20}, {"top_k", 17}};
  const Status st = CudaTransformerBf16::Supports(Parse(j), 1, 8, {});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("model.moe.top_k=17"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace grove
