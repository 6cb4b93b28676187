// What a GPU rank of the trainer and of grove-generate sets up
// (worker/cuda/training_model_cuda.cc).
#pragma once

#include <memory>

#include "parallel/grid.h"

namespace grove {

// The rank's index on its node, from the launcher's environment (OpenMPI, Slurm, torchrun-style);
// 0 when none says.
int CudaLocalRank();

// The grid's groups as communicators on device memory, over the same ranks, names and member
// order as the host grid's (collective over the host world): NCCL in the product (the world
// from ncclCommInitRank, each group an ncclCommSplit of it); under the CUDA emulator MPI on its
// device memory (comm::mpi_device_communicator). Null when neither exists (a build without
// NCCL): collectives on device buffers are then staged through host memory over the host groups.
std::unique_ptr<parallel::ParallelGrid> CudaDeviceGroups(const parallel::ParallelGrid& host,
                                                         int device);

}  // namespace grove
