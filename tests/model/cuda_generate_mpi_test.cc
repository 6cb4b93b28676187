// Decoding on the CUDA backend over MPI ranks on the CUDA emulator, under mpirun (np 1, 2, 4): the
// CUDA generator with the KV cache sharded over the world (cp = np), tree and ring, over
//  - a device group (MPI on the emulator's device memory, comm::mpi_device_communicator: what
//    grove-generate --device cuda builds, NCCL's stand-in), and
//  - the host MPI group (every collective and ring hop staged through host memory,
//    parallel/backend_collectives.h),
// produces the CPU generator's greedy tokens and its logits within kLogitTol (cases and
// tolerances: tests/model/cuda_generate_cases.h, cuda_generate_test.cc).
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <string>

#include "comm/mpi_communicator.h"
#include "tests/comm/mpi_test_env.h"
#include "tests/common/tensor_compare.h"
#include "tests/model/cuda_generate_cases.h"

namespace grove {
namespace {

using namespace generate_cases;

TEST(CudaGenerateMpi, DeviceAndHostGroupsEqualCpu) {
  comm::Communicator& world = test::world();
  std::unique_ptr<comm::Communicator> device;
  if (comm::mpi_device_buffers_supported()) device = comm::mpi_device_communicator(world);
  const ModelConfig c = tiny_config(2);
  const Weights w = Weights::Init(c);
  const std::vector<int32_t> tokens = random_tokens(kT, c.vocab_size, 5);
  const std::vector<int32_t> prompt = random_tokens(4, c.vocab_size, 9);
  const Decoded want = reference(c, w, tokens, prompt);
  const int32_t eos = want.greedy[3];
  for (comm::Communicator* group : {device.get(), &world}) {
    if (group == nullptr) continue;
    for (auto algo : {CpAttention::kTree, CpAttention::kRing}) {
      const std::string what = std::string(cp_attention_name(algo)) +
                               " over cp=" + std::to_string(group->size()) + " on " +
                               (group->device() == Device::kCUDA ? "device" : "host") +
                               " group (rank " + std::to_string(world.rank()) + ")";
      CudaGenerator gen(c, w, group, kCapacity, algo);
      const Decoded got = decode_cuda(gen, c, tokens, prompt, kMaxNew, eos);
      const auto st =
          testing::compare_stats(got.logits.data(), want.logits.data(), int64_t(got.logits.size()));
      if (world.rank() == 0)
        std::printf("[cuda generate mpi] %s: logits max rel err %.3g\n", what.c_str(), st.rel());
      EXPECT_TRUE(testing::compare("logits, " + what, got.logits.data(), want.logits.data(),
                                   int64_t(got.logits.size()), kLogitTol));
      EXPECT_EQ(got.greedy, want.greedy) << what;
      EXPECT_EQ(got.greedy_eos, until_eos(want.greedy, eos)) << what;
    }
  }
}

}  // namespace
}  // namespace grove
