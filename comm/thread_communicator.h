// Thread transport: a TEST-ONLY Communicator whose ranks are threads of one process sharing one
// CUDA device. Library grove_comm_thread, linked by tests only; no product binary links it, and
// production GPU runs use NCCL (comm/nccl_communicator.h).
//
// Why: NCCL refuses two ranks on one GPU, so without this a multi-rank GPU test needs as many GPUs
// as ranks. Here every rank is a thread with its own communicator (device() == kCUDA, backend
// "thread"), its own CUDA stream and its own watchdog, and collectives are device-to-device copies
// between the ranks' buffers plus a host-side rendezvous; reductions run a small kernel
// (comm/thread_reduce.cu) combining the ranks' buffers in rank order ((x0 op x1) op x2 ...), so
// every rank gets bit-identical results, run after run. The same code runs on a GPU and under the
// CUDA emulator (tests/cuda_emu), where device memory is host memory and work runs when issued.
//
// Semantics are comm/communicator.h's, with these specifics:
//  - A collective is matched by its position in each rank's sequence of collectives on the group;
//    it executes once every rank has started it (sync or async), by the last rank to start it, on
//    that rank's stream, after each rank's inputs were ready (an event recorded on the legacy
//    default stream when the rank started it). Ranks whose calls disagree (kind, count, dtype, op,
//    root, all_to_all_v counts) all get a grove::Error naming both calls, instead of the silent
//    corruption or hang a real backend might show.
//  - send / recv are matched by (source, destination, tag) in order (tags work, as on MPI); a
//    blocking send returns once the message is delivered (the receiver has posted and the copy
//    completed). A receive of another size fails naming both sizes; the send completes.
//  - Async forms are asynchronous: start returns at once, Work::wait() waits for the copies.
//  - If a rank fails, ThreadTransport::abort() (run_thread_ranks calls it) makes every pending
//    and later operation of the transport throw, so the other ranks do not wait forever.
//  - Watchdog: one per rank, as one per MPI process. On a timeout its abort hook aborts the
//    transport, then it prints the message naming the operation and the group and ends the
//    process with kWatchdogExitCode, as MPI's watchdog ends the job.
//
// What it does not show: NCCL's own algorithms, protocols and kernels, inter-GPU bandwidth, and
// contention of several devices; every rank shares one device's memory and compute.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace grove::comm {

namespace detail {
struct ThreadWorld;
struct ThreadGroup;
}  // namespace detail

struct ThreadTransportOptions {
  // The CUDA device every rank uses.
  int cuda_device = 0;
  // Each rank's watchdog; zero disables it.
  CommOptions comm;
};

class ThreadTransport {
 public:
  explicit ThreadTransport(int size, ThreadTransportOptions options = {});
  ~ThreadTransport();
  ThreadTransport(const ThreadTransport&) = delete;
  ThreadTransport& operator=(const ThreadTransport&) = delete;

  int size() const;
  // Rank `rank`'s world communicator (group "world", ranks 0..size-1). Call it once per rank, on
  // the thread that will use it: it makes options.cuda_device that thread's current device.
  std::unique_ptr<Communicator> world(int rank);
  // Every operation of this transport in flight, and every one started later, fails with a
  // grove::Error carrying `reason`; ranks waiting in one are woken.
  void abort(const std::string& reason);

 private:
  std::shared_ptr<detail::ThreadWorld> world_;
  std::shared_ptr<detail::ThreadGroup> world_group_;
};

// Runs fn(world) on `size` threads, thread r with rank r's world communicator, and joins them. If a
// rank throws, the transport is aborted (so that no rank waits for it forever), every thread is
// joined, and the exception of the rank that failed first is rethrown (not the aborts it caused).
void run_thread_ranks(int size, const std::function<void(Communicator& world)>& fn,
                      ThreadTransportOptions options = {});

}  // namespace grove::comm
