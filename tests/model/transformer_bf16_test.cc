// train.precision=bf16 on the CPU (CpuBf16Backend, kernels/cpu/bf16_backend.h):
//  - the conversion and the oneDNN bf16 GEMM against double references of the rounded operands;
//  - the whole model against the float64 PyTorch oracle (tests/oracle/transformer_reference.py)
//    with the GPU bf16 path's tolerances (tests/cuda/cuda_transformer_test.cc: loss to 1%, each
//    gradient to 5% in norm), and proof that its GEMMs did round (fp32 would sit near 1e-6);
//  - a CPU without AVX512_BF16 / AMX-BF16 (oneDNN capped by ONEDNN_MAX_CPU_ISA) is refused with
//    an error naming train.precision and the fix.
// Skipped where this CPU has no bf16 GEMMs (the refusal is still tested).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/bf16_backend.h"
#include "model/transformer.h"
#include "tests/common/tensor_compare.h"
#include "tests/common/torch_oracle.h"

namespace grove {
namespace {

#define SKIP_WITHOUT_BF16()        \
  if (!cpu::bf16_gemm_supported()) \
  GTEST_SKIP() << "this CPU has no bf16 GEMMs (" << cpu::bf16_gemm_describe() << ")"

TEST(CpuBf16, ConversionRoundsToNearestEven) {
  // Ties: 1 + 2^-8 lies halfway between bf16 1 and 1 + 2^-7 -> even (1); 1 + 3·2^-8 -> 1 + 2^-6.
  EXPECT_EQ(cpu::to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(cpu::to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(cpu::to_bf16(-2.0f), 0xc000);
  EXPECT_TRUE(std::isnan(cpu::from_bf16(cpu::to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isinf(cpu::from_bf16(cpu::to_bf16(INFINITY))));
  // The vector path (AVX512_BF16 where present, 32 at a time, OpenMP chunks) equals the scalar
  // rule on normal numbers, ties included, for lengths that leave tails.
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-100, 100);
  for (int64_t n : {int64_t{1}, int64_t{31}, int64_t{1000}, int64_t{300001}}) {
    std::vector<float> x(n);
    for (float& v : x) v = u(rng);
    for (int64_t i = 0; i < n; i += 7) x[i] = 1.0f + std::ldexp(float(i % 4 * 2 + 1), -8);
    std::vector<cpu::bf16_bits> y(n);
    cpu::convert_to_bf16(y.data(), x.data(), n);
    std::vector<float> back(n);
    cpu::convert_from_bf16(back.data(), y.data(), n);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      bad += y[i] != cpu::to_bf16(x[i]);
      bad += back[i] != cpu::from_bf16(y[i]);
    }
    EXPECT_EQ(bad, 0) << "n=" << n;
  }
}

TEST(CpuBf16, GemmMatchesDoubleOfRoundedOperands) {
  SKIP_WITHOUT_BF16();
  const int M = 67, N = 45, K = 300;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (float beta : {0.0f, 1.0f}) {
        // Padded leading dimensions: the strides are honoured.
        const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
        std::vector<float> A(int64_t{ta ? K : M} * lda), B(int64_t{tb ? N : K} * ldb);
        std::vector<float> C(int64_t{M} * ldc);
        for (float& v : A) v = u(rng);
        for (float& v : B) v = u(rng);
        for (float& v : C) v = u(rng);
        std::vector<cpu::bf16_bits> a(A.size()), b(B.size());
        cpu::convert_to_bf16(a.data(), A.data(), int64_t(A.size()));
        cpu::convert_to_bf16(b.data(), B.data(), int64_t(B.size()));
        std::vector<float> out = C;
        cpu::gemm_bf16(ta, tb, M, N, K, a.data(), lda, b.data(), ldb, beta, out.data(), ldc);
        double worst = 0;
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < N; ++n) {
            double want = beta * double(C[int64_t(m) * ldc + n]), mag = std::abs(want);
            for (int k = 0; k < K; ++k) {
              const double x =
                  cpu::from_bf16(ta ? a[int64_t(k) * lda + m] : a[int64_t(m) * lda + k]);
              const double y =
                  cpu::from_bf16(tb ? b[int64_t(n) * ldb + k] : b[int64_t(k) * ldb + n]);
              want += x * y;
              mag += std::abs(x * y);
            }
            // Products of bf16 are exact in fp32; only the fp32 accumulation rounds.
            worst = std::max(worst, std::abs(out[int64_t(m) * ldc + n] - want) / mag);
          }
        EXPECT_LT(worst, 1e-6) << "ta=" << ta << " tb=" << tb << " beta=" << beta;
      }
}

nlohmann::json SmallConfig() {
  return {{"vocab_size", 96}, {"d_model", 64},    {"n_layers", 2},     {"n_heads", 4},
          {"n_kv_heads", 2},  {"ffn_hidden", 96}, {"max_seq_len", 32}, {"seed", 11}};
}

TEST(CpuBf16, ModelMatchesTorchWithinBf16Tolerance) {
  SKIP_WITHOUT_BF16();
  const int batch = 3, seq = 16;
  const nlohmann::json cfg_json = SmallConfig();
  std::string args = "'";
  args += cfg_json.dump();
  args += "' " + std::to_string(batch) + " " + std::to_string(seq) + " 7";
  SafetensorsFile ref =
      testing::RunTorchOracle("tests/oracle/transformer_reference.py", "cpu_bf16", args);
  ASSERT_FALSE(ref.tensors.empty());
  ModelConfig cfg;
  ASSERT_TRUE(ModelConfigFromJson(cfg_json, &cfg).ok());
  using Model = TransformerT<CpuBf16Backend>;
  const Status ok = Model::Supports(cfg, batch, seq, {});
  ASSERT_TRUE(ok.ok()) << ok.message();
  for (Recompute mode : {Recompute::kSelective, Recompute::kFull}) {
    Model m(cfg, batch, seq, mode);
    ASSERT_TRUE(m.load_params([&] {
                   Weights w = Weights::Zeros(cfg);
                   GROVE_CHECK(w.CopyFrom(ref.tensors, "oracle", "model.").ok());
                   return w;
                 }())
                    .ok());
    const float loss =
        m.forward(ref.tensors["tokens"].data<int32_t>(), ref.tensors["targets"].data<int32_t>());
    m.zero_grads();
    m.backward();
    const double want = ref.tensors["loss"].data<double>()[0];
    // The GPU bf16 path's bounds: the loss to 1%, each gradient to 5% in norm.
    EXPECT_NEAR(loss, want, 1e-2 * std::abs(want));
    double worst = 0;
    std::string worst_name;
    for (const NamedTensor& nt : m.grads().named()) {
      const Tensor& r = ref.tensors.at("grad." + nt.name);
      ASSERT_EQ(r.numel(), nt.tensor.numel()) << nt.name;
      const double rel =
          testing::norm_rel(nt.tensor.data<float>(), r.data<double>(), nt.tensor.numel());
      EXPECT_LT(rel, 5e-2) << nt.name;
      if (rel > worst) worst = rel, worst_name = nt.name;
    }
    // The GEMMs really rounded their operands: the fp32 model sits ~1e-6 from the oracle.
    EXPECT_GT(worst, 1e-4) << "no bf16 rounding seen";
    std::printf(
        "[cpu bf16, recompute %s] loss %.7f (torch %.7f, rel %.2g), worst gradient error "
        "%.3g in %s\n",
        recompute_name(mode), loss, want, std::abs(loss - want) / std::abs(want), worst,
        worst_name.c_str());
  }
}

// A GEMM weight outside every registered copy (a kernel called directly) is rounded on the fly:
// the same result as from the model's copy.
TEST(CpuBf16, UnregisteredWeightsGiveTheSameNumbers) {
  SKIP_WITHOUT_BF16();
  const int N = 20, C = 48, OC = 40;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> x(N * C), w(OC * C), y1(N * OC), y2(N * OC);
  for (float& v : x) v = u(rng);
  for (float& v : w) v = u(rng);
  CpuBf16Backend::linear_forward(y1.data(), x.data(), w.data(), nullptr, N, C, OC);
  {
    cpu::Bf16WeightCopy copy(w.data(), int64_t(w.size()));
    EXPECT_NE(cpu::bf16_copy_of(w.data() + C, C), nullptr);
    CpuBf16Backend::linear_forward(y2.data(), x.data(), w.data(), nullptr, N, C, OC);
  }
  EXPECT_EQ(cpu::bf16_copy_of(w.data(), 1), nullptr);  // unregistered when the copy dies
  EXPECT_EQ(y1, y2);
}

TEST(CpuBf16DeathTest, CpuWithoutBf16IsRefusedNamingTheField) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process: oneDNN reads its cap once
  EXPECT_EXIT(
      {
        setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE", 1);
        const Status st = TransformerT<CpuBf16Backend>::Supports(
            [] {
              ModelConfig c;
              GROVE_CHECK(ModelConfigFromJson(SmallConfig(), &c).ok());
              return c;
            }(),
            2, 16, {});
        std::fprintf(stderr, "%s\n", st.message().c_str());
        std::exit(st.ok() ? 0 : 3);
      },
      ::testing::ExitedWithCode(3), "train.precision=bf16.*AVX512_BF16.*set train.precision=fp32");
}

}  // namespace
}  // namespace grove
