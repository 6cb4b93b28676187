// NCCL itself at world size one (NCCL refuses two ranks on one device, so one GPU checks no more):
// the one-rank layout cases of tests/model/cuda_equivalence_cases.h (recompute none / selective /
// full, a dropless MoE block, capacity dropping and the LSH-compressed all-to-all) with every
// group of the grid an NCCL communicator split from a world of one rank, against the model built
// without a grid. Its own binary so that the thread-transport test needs no libnccl. Label gpu:
// exit 77 without a device.
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "comm/nccl_communicator.h"
#include "tests/model/cuda_equivalence_cases.h"

namespace grove {
namespace {

using equivalence::CompressedLayout;
using equivalence::Layout;

TEST(CudaNcclEquivalence, OneRankLayoutsOverNccl) {
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device: NCCL needs one";
  std::shared_ptr<comm::Communicator> world(comm::NcclCommunicator::create_single(0));
  const equivalence::Env env{world.get(), [world](bool) { return world; }};
  std::vector<Layout> layouts = equivalence::tensor_sequence_layouts(1);
  for (const Layout& l : equivalence::moe_tensor_layouts(1)) layouts.push_back(l);
  for (Layout l : layouts) {
    l.device_groups = true;
    equivalence::run_layout(env, l);
  }
  for (CompressedLayout l : equivalence::compressed_layouts(1, /*device=*/true)) {
    l.device_groups = true;
    equivalence::run_compressed_layout(env, l);
  }
  std::printf("[nccl 1/1] one-rank layouts: worst gradient error %.3g\n",
              equivalence::take_worst());
}

}  // namespace
}  // namespace grove
