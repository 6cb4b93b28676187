// MPI backend: host-memory collectives over OpenMPI.
//
// MpiSession owns MPI's lifetime in a process: it initialises MPI with MPI_THREAD_MULTIPLE
// (the watchdog thread calls MPI_Abort while the main thread may be blocked inside MPI), and
// MPI_Finalize runs when the session and every communicator created from it are gone, whatever
// the order of destruction. If MPI was already initialised by someone else, the session uses it
// and leaves finalisation to them.
//
// Sync operations call MPI's blocking collectives (the tuned algorithms); async ones the
// non-blocking MPI_I* forms. Without an MPI progress thread, a non-blocking operation advances
// only inside MPI calls — Work::test() or wait() — so overlap with compute needs the occasional
// test(). The world communicator is a duplicate of MPI_COMM_WORLD, so Grove's messages never
// match other code's.
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace grove::comm {

namespace detail {
struct MpiContext;
}

class MpiSession {
 public:
  // argc/argv may be null.
  MpiSession(int* argc = nullptr, char*** argv = nullptr);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int world_rank() const;
  int world_size() const;
  // A new communicator over all ranks (collective: every rank calls it). Its watchdog, shared
  // with every communicator split from it, aborts the MPI job on timeout.
  std::unique_ptr<Communicator> world(CommOptions options = {}) const;

 private:
  std::shared_ptr<detail::MpiContext> ctx_;
};

// MPI on device memory: a communicator over the same ranks as `host` (an MPI communicator from
// this file, which keeps its name and watchdog), whose collectives take device buffers
// (device() == kCUDA) and hand them to MPI as they are. Collective over `host` (MPI_Comm_dup);
// its splits take device buffers too. Only where MPI can address device memory:
// mpi_device_buffers_supported() is true in the CUDA emulator's build (tests/cuda_emu compiles
// this file with GROVE_EMU_DEVICE_MEMORY_IS_HOST, device memory being host memory there), so that
// code written for device communicators (NCCL on GPUs, the thread transport on one GPU) runs
// under the emulator with several MPI ranks. Elsewhere it throws grove::Error saying so: GPU runs
// use NCCL (comm/nccl_communicator.h).
bool mpi_device_buffers_supported();
std::unique_ptr<Communicator> mpi_device_communicator(Communicator& host);

}  // namespace grove::comm
