// NCCL bootstrapped over MPI: the unique id travels over the MPI world, ranks join with
// ncclCommInitRank. Needs one GPU per rank (np=1 on a one-GPU machine); skips without a device.
#include <gtest/gtest.h>

#include <vector>

#include "comm/nccl_communicator.h"
#include "tests/comm/mpi_test_env.h"

namespace grove::comm {
namespace {

TEST(NcclOverMpi, BootstrapAndAllReduce) {
  if (!cuda_device_available()) {
    GTEST_SKIP() << "no CUDA device: the NCCL backend (" << NcclCommunicator::version()
                 << ") is built but its tests need a GPU";
  }
  Communicator& w = test::world();
  auto nccl = NcclCommunicator::create(w, /*cuda_device=*/0, "nccl-world");
  EXPECT_EQ(nccl->size(), w.size());
  EXPECT_EQ(nccl->rank(), w.rank());
  EXPECT_EQ(nccl->watchdog(), w.watchdog());
  Tensor h = Tensor::empty({2}, DType::kI32);
  h.data<int32_t>()[0] = w.rank() + 1;
  h.data<int32_t>()[1] = 7;
  Tensor d = h.to(Device::kCUDA);
  nccl->all_reduce(d, ReduceOp::kSum);
  Tensor back = d.to(Device::kCPU);
  const int n = w.size();
  EXPECT_EQ(back.data<int32_t>()[0], n * (n + 1) / 2);
  EXPECT_EQ(back.data<int32_t>()[1], 7 * n);
  auto sub = nccl->split(w.rank() % 2, w.rank(), "nccl-parity");
  ASSERT_TRUE(sub);
  sub->barrier();
}

// The host groups mirrored as NCCL communicators (ncclCommSplit): same names, members, order.
TEST(NcclOverMpi, CreateGroupsMirrorsTheHostGroups) {
  if (!cuda_device_available()) {
    GTEST_SKIP() << "no CUDA device: the NCCL backend (" << NcclCommunicator::version()
                 << ") is built but its tests need a GPU";
  }
  Communicator& w = test::world();
  auto pairs = w.split(w.rank() / 2, w.rank(), "tp");
  auto parity = w.split(w.rank() % 2, -w.rank(), "dp");
  std::vector<Communicator*> host = {pairs.get(), parity.get()};
  NcclCommunicator::Groups nccl = NcclCommunicator::create_groups(w, host, /*cuda_device=*/0);
  ASSERT_EQ(nccl.groups.size(), 2u);
  for (size_t g = 0; g < host.size(); ++g) {
    EXPECT_STREQ(nccl.groups[g]->backend_name(), "nccl");
    EXPECT_EQ(nccl.groups[g]->name(), host[g]->name());
    EXPECT_EQ(nccl.groups[g]->info().world_ranks, host[g]->info().world_ranks);
    Tensor h = Tensor::empty({1}, DType::kI32);
    h.data<int32_t>()[0] = w.rank();
    Tensor d = h.to(Device::kCUDA);
    Tensor all = Tensor::zeros({nccl.groups[g]->size()}, DType::kI32, Device::kCUDA);
    nccl.groups[g]->all_gather(d, all);
    Tensor back = all.to(Device::kCPU);
    for (int q = 0; q < nccl.groups[g]->size(); ++q)
      EXPECT_EQ(back.data<int32_t>()[q], host[g]->info().world_ranks[q]);
  }
}

}  // namespace
}  // namespace grove::comm
