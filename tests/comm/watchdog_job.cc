// An MPI job in which one rank skips a collective. Run under mpirun; the expected outcome is the
// watchdog's abort, with its message, within the 1.5 s timeout (ctest matches the message).
//   world:    np=2; rank 1 never joins an all_reduce on the world communicator.
//   subgroup: np=4 split into pairs {0,1} {2,3}; rank 3 never joins the pairs' all_gather, so
//             rank 2 of the world (rank 0 of its pair) is the one that reports.
// Ranks that are not expected to report stay busy elsewhere (sleeping), as a stuck rank would.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "comm/mpi_communicator.h"

using namespace grove;

int main(int argc, char** argv) {
  comm::MpiSession session(&argc, &argv);
  const bool subgroup = argc > 1 && std::strcmp(argv[1], "subgroup") == 0;
  comm::CommOptions options;
  options.timeout = std::chrono::milliseconds(1500);
  auto world = session.world(options);
  const int rank = world->rank();
  const auto stuck = [] { std::this_thread::sleep_for(std::chrono::seconds(25)); };

  if (!subgroup) {
    if (rank == 1) {
      stuck();
    } else {
      Tensor t = Tensor::zeros({4});
      world->all_reduce(t, comm::ReduceOp::kSum);
    }
  } else {
    auto pair = world->split(rank / 2, rank, "pair");
    if (rank == 3) {
      stuck();
    } else {
      Tensor in = Tensor::zeros({2}, DType::kI32), out = Tensor::zeros({4}, DType::kI32);
      pair->all_gather(in, out);
      if (rank != 2) stuck();  // the {0,1} pair completed; do not race rank 2's report
    }
  }
  std::printf("rank %d: reached the end; the watchdog did not fire\n", rank);
  return 0;
}
