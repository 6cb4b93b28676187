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
//
// Overlap: each communicator has its own stream (non-blocking with respect to the legacy default
// stream), so an async operation (e.g. a data-parallel gradient bucket on 'dp_cp', the expert
// all-to-all on 'ep') runs while the kernels the rank launches after starting it run on the
// default stream; only Work::wait() makes the host wait. all_to_all and all_to_all_v are grouped
// ncclSend / ncclRecv (ncclGroupStart / ncclGroupEnd), zero counts skipped.
//
// Watchdog: every NCCL communicator registers an abort hook with its watchdog: when any operation
// of the rank times out, each of the rank's NCCL communicators is aborted (ncclCommAbort, printed
// as "grove comm: ncclCommAbort on group ..."), then the job ends with the watchdog's message
// naming the operation and the group (MPI_Abort through the bootstrap's watchdog). Later calls on
// an aborted communicator throw. (Not yet run on a GPU: see docs/comm.md.)
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

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
  // The NCCL world over `host_world` and one NCCL communicator per host group (e.g. the
  // ParallelGrid's tp, cp, dp, dp_cp, ep, edp), each with the host group's name, members and
  // order, made by ncclCommSplit from the world (split_like, comm/communicator.h). Collective
  // over host_world: every rank passes its groups in the same order.
  struct Groups {
    std::unique_ptr<Communicator> world;
    std::vector<std::unique_ptr<Communicator>> groups;  // in the order of host_groups
  };
  static Groups create_groups(Communicator& host_world, std::span<Communicator* const> host_groups,
                              int cuda_device);
  // "2.28.3": the NCCL library this build links.
  static std::string version();
};

}  // namespace grove::comm
