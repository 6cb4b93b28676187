// Collectives on a kernel backend's buffers (kernels/backend.h) over one group.
//
// When the group's collectives work where the backend's buffers live (comm::Communicator::
// device() == B::kDevice: MPI for CpuBackend; NCCL or a device transport for CudaBackend) the
// call goes straight to the group on the buffers themselves. Otherwise — a
// host-memory group (MPI) for device buffers, e.g. GPU ranks without a device communicator —
// the buffer is staged through host memory: downloaded, reduced by the group, uploaded. That is
// correct everywhere and costs a host round trip per call; production GPU layouts give their
// groups device communicators so that it never happens there.
//
// A null group or a group of one is no communication (all_gather / reduce_scatter then copy
// their one block). Header only: the CUDA model uses it without linking grove_parallel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace grove::parallel {

// True when `group` exchanges data (not null, more than one rank).
inline bool active(const comm::Communicator* group) {
  return group != nullptr && group->size() > 1;
}

namespace backend_collectives_detail {
// Host staging buffer of the calling thread, grown as needed and reused across calls.
inline std::vector<std::byte>& staging(size_t bytes) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer;
}
}  // namespace backend_collectives_detail

// In place: every rank ends with the reduction over the group of its `count` elements.
template <class B>
void all_reduce(comm::Communicator* group, void* buf, int64_t count, DType dtype,
                comm::ReduceOp op) {
  if (!active(group)) return;
  if (group->device() == B::kDevice) {
    group->all_reduce(buf, count, dtype, op);
    return;
  }
  const size_t bytes = size_t(count) * dtype_size(dtype);
  std::byte* host = backend_collectives_detail::staging(bytes).data();
  B::download(host, buf, bytes);
  group->all_reduce(host, count, dtype, op);
  B::upload(buf, host, bytes);
}

// out [size·count]: block r is rank r's `in` [count].
template <class B>
void all_gather(comm::Communicator* group, const void* in, void* out, int64_t count, DType dtype) {
  const size_t block = size_t(count) * dtype_size(dtype);
  if (!active(group)) {
    B::copy(out, in, block);
    return;
  }
  if (group->device() == B::kDevice) {
    group->all_gather(in, out, count, dtype);
    return;
  }
  const size_t n = size_t(group->size());
  std::byte* host = backend_collectives_detail::staging(block * (n + 1)).data();
  B::download(host + block * n, in, block);
  group->all_gather(host + block * n, host, count, dtype);
  B::upload(out, host, block * n);
}

// in [size·count]; out [count] on rank r = the reduction over the ranks of block r of `in`.
template <class B>
void reduce_scatter(comm::Communicator* group, const void* in, void* out, int64_t count,
                    DType dtype, comm::ReduceOp op) {
  const size_t block = size_t(count) * dtype_size(dtype);
  if (!active(group)) {
    B::copy(out, in, block);
    return;
  }
  if (group->device() == B::kDevice) {
    group->reduce_scatter(in, out, count, dtype, op);
    return;
  }
  const size_t n = size_t(group->size());
  std::byte* host = backend_collectives_detail::staging(block * (n + 1)).data();
  B::download(host, in, block * n);
  group->reduce_scatter(host, host + block * n, count, dtype, op);
  B::upload(out, host + block * n, block);
}

}  // namespace grove::parallel
