// MPI over emulated device memory (mpi_device_communicator, comm/mpi_communicator.h), run under
// mpirun in the CUDA emulator's build: the shared collective cases (collectives_cases.h) on
// device tensors, and split_like mirroring the host world's groups onto the device world as the
// worker mirrors its grid's groups. Built only with the emulator (tests/cuda_emu), label emu.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "comm/mpi_communicator.h"
#include "tests/comm/collectives_cases.h"
#include "tests/comm/mpi_test_env.h"

namespace grove::comm {
namespace {

// Created by the first test that needs it; every rank runs the tests in the same order, so every
// rank creates it at the same point (it is collective).
Communicator& device_world() {
  static std::unique_ptr<Communicator> world = mpi_device_communicator(test::world());
  return *world;
}

TEST(MpiDeviceComm, WorldIsMpiOnDeviceMemory) {
  ASSERT_TRUE(mpi_device_buffers_supported());
  Communicator& w = device_world();
  EXPECT_EQ(w.device(), Device::kCUDA);
  EXPECT_STREQ(w.backend_name(), "mpi");
  EXPECT_EQ(w.info().world_ranks, test::world().info().world_ranks);
  EXPECT_EQ(w.watchdog(), test::world().watchdog());
  // Host tensors are refused, naming the group.
  Tensor host = Tensor::zeros({2});
  EXPECT_THROW(w.all_reduce(host, ReduceOp::kSum), Error);
}

#define GROVE_COMM_MPI_DEVICE_CASE(name) \
  TEST(MpiDeviceComm, name) {            \
    cases::name(device_world());         \
  }
GROVE_COMM_CASES(GROVE_COMM_MPI_DEVICE_CASE)
#undef GROVE_COMM_MPI_DEVICE_CASE

// The host world's groups (pairs, and the even / odd ranks in reverse) mirrored on the device
// world: same names, members and order; a device all_gather of the world ranks shows it.
TEST(MpiDeviceComm, SplitLikeMirrorsTheHostGroups) {
  Communicator& host = test::world();
  const int r = host.rank();
  auto pairs = host.split(r / 2, r, "tp");
  auto parity = host.split(r % 2, -r, "dp");
  std::vector<Communicator*> groups = {pairs.get(), parity.get()};
  std::vector<std::unique_ptr<Communicator>> mirrored = split_like(device_world(), groups);
  ASSERT_EQ(mirrored.size(), 2u);
  for (size_t g = 0; g < groups.size(); ++g) {
    EXPECT_EQ(mirrored[g]->device(), Device::kCUDA);
    EXPECT_EQ(mirrored[g]->name(), groups[g]->name());
    EXPECT_EQ(mirrored[g]->info().world_ranks, groups[g]->info().world_ranks);
    Tensor mine = Tensor::empty({1}, DType::kI32);
    mine.data<int32_t>()[0] = r;
    Tensor all = Tensor::zeros({mirrored[g]->size()}, DType::kI32, Device::kCUDA);
    mirrored[g]->all_gather(mine.to(Device::kCUDA), all);
    Tensor h = all.to(Device::kCPU);
    for (int q = 0; q < mirrored[g]->size(); ++q)
      EXPECT_EQ(h.data<int32_t>()[q], groups[g]->info().world_ranks[q]);
  }
}

}  // namespace
}  // namespace grove::comm
