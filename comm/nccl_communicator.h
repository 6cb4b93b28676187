// NCCL backend: device-memory collectives, one CUDA device per rank.
//
// A world is bootstrapped over any host communicator (normally the MPI world): rank 0 creates
// the NCCL unique id and broadcasts it, then every rank joins with ncclCommInitRank. Sub-groups
// come from ncclCommSplit. A world of one rank needs no bootstrap (create_single), so a GPU
// test binary can run without MPI.
//
// Every operation is enqueued on the communicator's own stream after the work already queued on
// the legacy default stream (so it sees the results of kernels launched there), and the host
// waits for it: a sync call returns once the result is in device memory, an async Work once
// wait() returns. Waiting polls the stream and ncclCommGetAsyncError, so an NCCL failure is an
// error and a hang is the watchdog's (the watchdog is the bootstrap communicator's: on timeout
// it aborts the whole MPI job). NCCL has no message tags: send/recv accept tag 0 only.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace grove::comm {

class NcclCommunicator {
 public:
  // Collective over `bootstrap` (a host communicator): one NCCL rank per bootstrap rank, same
  // order, each on CUDA device `cuda_device`. Shares the bootstrap's watchdog.
  static std::unique_ptr<Communicator> create(Communicator& bootstrap, int cuda_device,
                                              std::string name = "world");
  // A world of one rank on `cuda_device`, with its own watchdog (which exits the process).
  static std::unique_ptr<Communicator> create_single(int cuda_device, CommOptions options = {});
  // "2.28.3": the NCCL library this build links.
  static std::string version();
};

}  // namespace grove::comm
