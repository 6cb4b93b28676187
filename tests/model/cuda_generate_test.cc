// Decoding on the CUDA backend with the KV cache sharded over the context-parallel group
// (model/cuda/cuda_generate.h), the ranks as threads of one process on one device (the test-only
// thread transport, comm/thread_communicator.h), at cp = 1, 2 and 4, tree and ring, for a GQA, a
// multi-head, an MoE and an MLA model:
//  - the logits of every position of a token sequence equal the reference's (kLogitTol);
//  - the greedy tokens equal the reference's, token for token (an eos stop included).
// The reference: with GROVE_GENERATE_CPU_REFERENCE (the emulator build, which links the host
// model) the CPU Generator (model/generate.h) on one process, and the CUDA decode kernel against
// its CPU reference (CpuBackend::decode_attention); without it (the GPU build, CUDA libraries only)
// the CUDA Generator on one rank without a group.
//
// Tolerances (measured on the emulator, docs/testing.md#tolerances): the decode kernel's o against
// the CPU attention ≤ 9.2e-7 relative at the shapes below (kKernelTol 5e-6); the logits of the CUDA
// Generator against the CPU Generator ≤ 1.14e-6 relative at cp = 1, 2 and 4, tree and ring (the
// GEMMs and the attention sum in different orders; kLogitTol = 1e-5 leaves ~9x). The model's
// init_std is large so that logits are well separated and greedy choices do not hinge on the last
// bits.
#include "model/cuda/cuda_generate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "comm/thread_communicator.h"
#include "core/rng.h"
#include "core/status.h"
#include "tests/common/tensor_compare.h"
#include "tests/model/cuda_generate_cases.h"
#ifdef GROVE_GENERATE_CPU_REFERENCE
#include "kernels/cpu/backend.h"
#endif

namespace grove {
namespace {

using namespace std::chrono_literals;
using namespace generate_cases;

constexpr double kKernelTol = 5e-6;

class CudaGenerate : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(CudaGenerate, OverCpEqualsReference) {
  // GQA, multi-head, an MoE model (top-2 in every other block) and multi-head latent attention
  // (decoded with the cache of its padded keys and values).
  std::vector<ModelConfig> configs = {tiny_config(2), tiny_config(4), tiny_config(2),
                                      tiny_config(0)};
  configs[2].moe.num_experts = 4;
  configs[2].moe.top_k = 2;
  configs[2].moe.every = 2;
  configs[2].moe.expert_ffn = 48;
  configs[3].attention = Attention::kMla;
  configs[3].mla = MlaOptions{16, 16, 8, 8, 12};
  for (const ModelConfig& c : configs) {
    const std::string model = std::string(attention_name(c.attention)) +
                              " kv_heads=" + std::to_string(c.kv_heads()) +
                              " experts=" + std::to_string(c.moe.num_experts);
    const Weights w = Weights::Init(c);
    const std::vector<int32_t> tokens = random_tokens(kT, c.vocab_size, 5);
    const std::vector<int32_t> prompt = random_tokens(4, c.vocab_size, 9);
    const Decoded want = reference(c, w, tokens, prompt);
    ASSERT_EQ(int(want.greedy.size()), kMaxNew);
    // Not a degenerate sequence: greedy decoding of this model visits several tokens.
    EXPECT_GE(std::set<int32_t>(want.greedy.begin(), want.greedy.end()).size(), 4u);
    const int32_t eos = want.greedy[3];
    const std::vector<int32_t> want_eos = until_eos(want.greedy, eos);
    for (int n : {1, 2, 4}) {
      for (auto algo : {CpAttention::kTree, CpAttention::kRing}) {
        const std::string what =
            std::string(cp_attention_name(algo)) + " over cp=" + std::to_string(n) + " " + model;
        comm::ThreadTransportOptions options;
        options.comm.timeout = 120s;
        try {
          comm::run_thread_ranks(
              n,
              [&](comm::Communicator& world) {
                CudaGenerator gen(c, w, &world, kCapacity, algo);
                const Decoded got = decode_cuda(gen, c, tokens, prompt, kMaxNew, eos);
                const std::string rank = " (rank " + std::to_string(world.rank()) + ")";
                const auto st = testing::compare_stats(got.logits.data(), want.logits.data(),
                                                       int64_t(got.logits.size()));
                if (world.rank() == 0)
                  std::printf("[cuda generate] %s: logits max rel err %.3g\n", what.c_str(),
                              st.rel());
                EXPECT_TRUE(testing::compare("logits, " + what + rank, got.logits.data(),
                                             want.logits.data(), int64_t(got.logits.size()),
                                             kLogitTol));
                EXPECT_EQ(got.greedy, want.greedy) << what << rank;
                EXPECT_EQ(got.greedy_eos, want_eos) << what << rank;
                if (n > 1) {
                  EXPECT_GT(gen.attention_stats().bytes, 0) << what;
                }
              },
              options);
        } catch (const std::exception& e) {
          ADD_FAILURE() << what << ": " << e.what();
        }
      }
    }
  }
}

// The CP-sharded cache on the device: token t is kept by rank t % p only, and the attention over
// an empty shard (fewer tokens than ranks) is the neutral partial, no NaN.
TEST_F(CudaGenerate, CacheShardsAndFewTokens) {
  const int p = 4, B = 1, NKV = 2, HD = 8, NH = 4;
  comm::run_thread_ranks(p, [&](comm::Communicator& world) {
    parallel::CudaShardedKvCache cache(p, world.rank(), 1, B, NKV, HD, 9);
    parallel::CudaDecodeAttention attn(CpAttention::kTree, &world, cache, NH);
    Tensor k = Tensor::zeros({B, NKV, HD}, DType::kF32, Device::kCUDA);
    Tensor q = Tensor::zeros({B, NH, HD}, DType::kF32, Device::kCUDA);
    Tensor out = Tensor::zeros({B, NH, HD}, DType::kF32, Device::kCUDA);
    std::vector<float> host(size_t(B) * NKV * HD, 1.0f);
    Cuda::upload(k.raw(), host.data(), sizeof(float) * host.size());
    for (int t = 0; t < 2; ++t) {  // two tokens over four ranks: ranks 2, 3 hold none
      const int pos = cache.begin_token();
      cache.store(0, pos, k.data<float>(), k.data<float>());
      attn.forward(out.data<float>(), q.data<float>(), cache, 0);
    }
    EXPECT_EQ(cache.local_length(), world.rank() < 2 ? 1 : 0);
    std::vector<float> o(size_t(B) * NH * HD), lse(size_t(B) * NH);
    Cuda::download(o.data(), out.data<float>(), sizeof(float) * o.size());
    Cuda::download(lse.data(), attn.lse(), sizeof(float) * lse.size());
    for (float x : o) EXPECT_FLOAT_EQ(x, 1.0f);                // v = 1 everywhere
    for (float x : lse) EXPECT_NEAR(x, std::log(2.0f), 1e-6);  // two zero scores
  });
}

#ifdef GROVE_GENERATE_CPU_REFERENCE
// The decode kernel against its CPU reference (cpu::attention_forward with one query row), GQA
// and MHA, head widths under / over a warp, shards of 0 to a few hundred rows.
TEST_F(CudaGenerate, DecodeKernelEqualsCpu) {
  struct Case {
    int rows, B, NH, NKV, HD;
  };
  double worst = 0;
  for (Case s : {Case{0, 1, 4, 2, 16}, Case{1, 1, 4, 2, 16}, Case{7, 2, 4, 4, 40},
                 Case{33, 1, 8, 2, 64}, Case{300, 2, 2, 1, 24}}) {
    const int64_t nq = int64_t(s.B) * s.NH * s.HD, nk = int64_t(s.rows) * s.B * s.NKV * s.HD;
    Rng rng(uint64_t(s.rows) * 31 + s.HD);
    std::vector<float> q(nq), k(nk), v(nk);
    for (auto* x : {&q, &k, &v})
      for (float& e : *x) e = static_cast<float>(rng.normal() * 1.5);
    std::vector<float> want_o(nq), want_l(size_t(s.B) * s.NH);
    CpuBackend::decode_attention(want_o.data(), want_l.data(), q.data(), k.data(), v.data(), s.rows,
                                 s.B, s.NH, s.NKV, s.HD);
    Tensor dq = Tensor::zeros({nq}, DType::kF32, Device::kCUDA);
    Tensor dk = Tensor::zeros({std::max<int64_t>(nk, 1)}, DType::kF32, Device::kCUDA);
    Tensor dv = Tensor::zeros({std::max<int64_t>(nk, 1)}, DType::kF32, Device::kCUDA);
    Tensor dout = Tensor::zeros({nq}, DType::kF32, Device::kCUDA);
    Tensor dl = Tensor::zeros({int64_t(s.B) * s.NH}, DType::kF32, Device::kCUDA);
    Cuda::upload(dq.raw(), q.data(), sizeof(float) * nq);
    Cuda::upload(dk.raw(), k.data(), sizeof(float) * nk);
    Cuda::upload(dv.raw(), v.data(), sizeof(float) * nk);
    Cuda::decode_attention(dout.data<float>(), dl.data<float>(), dq.data<float>(), dk.data<float>(),
                           dv.data<float>(), s.rows, s.B, s.NH, s.NKV, s.HD);
    std::vector<float> got_o(nq), got_l(want_l.size());
    Cuda::download(got_o.data(), dout.data<float>(), sizeof(float) * nq);
    Cuda::download(got_l.data(), dl.data<float>(), sizeof(float) * got_l.size());
    const std::string what = "rows=" + std::to_string(s.rows) + " HD=" + std::to_string(s.HD);
    EXPECT_TRUE(testing::compare("o " + what, got_o.data(), want_o.data(), nq, kKernelTol));
    EXPECT_TRUE(testing::compare("lse " + what, got_l.data(), want_l.data(), int64_t(got_l.size()),
                                 kKernelTol));
    worst = std::max(worst, testing::compare_stats(got_o.data(), want_o.data(), nq).rel());
  }
  std::printf("[decode kernel] worst rel err of o against the CPU: %.3g\n", worst);
}
#endif

}  // namespace
}  // namespace grove
