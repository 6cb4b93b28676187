// Every collective of the MPI backend (host buffers), run under mpirun at np = 1, 2, 3, 4: the
// shared cases of collectives_cases.h on the MPI world.
#include <gtest/gtest.h>

#include <string>

#include "tests/comm/collectives_cases.h"
#include "tests/comm/mpi_test_env.h"

namespace grove::comm {
namespace {

TEST(Comm, WorldIsMpiOnHostMemory) {
  EXPECT_EQ(test::world().device(), Device::kCPU);
  EXPECT_STREQ(test::world().backend_name(), "mpi");
}

// Device buffers over MPI exist only in the CUDA emulator's build (mpi_device_communicator).
TEST(Comm, DeviceBuffersOverMpiAreRefusedHere) {
  EXPECT_FALSE(mpi_device_buffers_supported());
  try {
    mpi_device_communicator(test::world());
    ADD_FAILURE() << "an MPI communicator on device memory outside the emulator";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("on GPUs use NCCL"), std::string::npos) << e.what();
  }
}

#define GROVE_COMM_MPI_CASE(name) \
  TEST(Comm, name) {              \
    cases::name(test::world());   \
  }
GROVE_COMM_CASES(GROVE_COMM_MPI_CASE)
#undef GROVE_COMM_MPI_CASE

}  // namespace
}  // namespace grove::comm
