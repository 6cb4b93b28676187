// The host-memory policy of an MPI training process: glibc malloc's thresholds
// (docs/training.md#host-memory). grove-worker and comm_bench set it first thing in main.
//
// A training step frees and allocates the same large host buffers again every step: OpenMPI's
// collectives (the data-parallel gradient sums among them) take a temporary buffer the size of
// the message on every call (perf: page faults under ompi_datatype_sndrcv). glibc serves a block
// above its mmap threshold (dynamic, at most 32 MiB) with a fresh mmap and returns it on free, and
// trims the heap's top above its trim threshold, so every step page-faults those pages in again
// and zeroes them in the kernel. On a 2-vCPU VM that cost a 2-rank dp2 step of configs/demo.json
// 14% (305 ms, against 262 ms with the policy below).
//
// KeepFreedHostMemory() serves every block below kMmapThreshold from the heap and never trims
// it, so freed pages are reused by the next step (what a caching allocator does; the process's
// resident size stays at its high-water mark). It changes nothing and says so when the user chose
// the malloc thresholds (GLIBC_TUNABLES glibc.malloc.mmap_threshold / trim_threshold, or
// MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_). Call it first in main, before MPI and threads.
#pragma once

#include <cstddef>
#include <string>

namespace grove::comm {

struct HostAllocatorPolicy {
  bool applied = false;  // false: the environment's choice was kept (or mallopt refused)
  std::string reason;    // one line: what was set, or why not
};

inline constexpr std::size_t kMmapThreshold = std::size_t(1) << 30;  // 1 GiB

HostAllocatorPolicy KeepFreedHostMemory();

}  // namespace grove::comm
