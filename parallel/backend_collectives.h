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
#include <span>
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

// Asynchronous all_gather (as all_gather above): on a group that works on B's memory the Work of
// the group's own async call; staged through host memory it completes before returning (an
// empty Work). Buffers must not be touched until the Work is waited for.
template <class B>
comm::Work all_gather_async(comm::Communicator* group, const void* in, void* out, int64_t count,
                            DType dtype) {
  if (active(group) && group->device() == B::kDevice)
    return group->all_gather_async(in, out, count, dtype);
  all_gather<B>(group, in, out, count, dtype);
  return {};
}

// One hop of a ring: `send_count` elements of `send` go to rank r+1, `recv_count` elements from
// rank r-1 arrive in `recv` (modulo the group size; rank r's send_count is rank r+1's
// recv_count). An all_to_all_v with one non-zero count each way, so that NCCL groups the send and
// the receive (a ring of ungrouped NCCL sends can deadlock) and hops issued in the same order on
// every rank match in that order. Asynchronous as all_gather_async; a null group or a group of one
// copies send to recv.
template <class B>
comm::Work ring_exchange_async(comm::Communicator* group, const void* send, int64_t send_count,
                               void* recv, int64_t recv_count, DType dtype) {
  const size_t es = dtype_size(dtype);
  if (!active(group)) {
    B::copy(recv, send, size_t(send_count) * es);
    return {};
  }
  const int n = group->size(), r = group->rank();
  std::vector<int64_t> send_counts(n, 0), recv_counts(n, 0);
  send_counts[(r + 1) % n] = send_count;
  recv_counts[(r + n - 1) % n] = recv_count;
  if (group->device() == B::kDevice)
    return group->all_to_all_v_async(send, send_counts, recv, recv_counts, dtype);
  const size_t sb = size_t(send_count) * es, rb = size_t(recv_count) * es;
  std::byte* host = backend_collectives_detail::staging(sb + rb).data();
  B::download(host, send, sb);
  group->all_to_all_v(host, send_counts, host + sb, recv_counts, dtype);
  B::upload(recv, host + sb, rb);
  return {};
}
// The same with equal counts.
template <class B>
comm::Work ring_exchange_async(comm::Communicator* group, const void* send, void* recv,
                               int64_t count, DType dtype) {
  return ring_exchange_async<B>(group, send, count, recv, count, dtype);
}

// root's `count` elements of buf are copied to every rank's buf (direct on a group that works on
// B's memory, else staged through host memory).
template <class B>
void broadcast(comm::Communicator* group, void* buf, int64_t count, DType dtype, int root) {
  if (!active(group)) return;
  if (group->device() == B::kDevice) {
    group->broadcast(buf, count, dtype, root);
    return;
  }
  const size_t bytes = size_t(count) * dtype_size(dtype);
  std::byte* host = backend_collectives_detail::staging(bytes).data();
  B::download(host, buf, bytes);
  group->broadcast(host, count, dtype, root);
  B::upload(buf, host, bytes);
}

// all_to_all_v on B's buffers (comm/communicator.h's semantics, counts in elements): direct on a
// group that works on B's memory, else staged through host memory. A null group or a group of
// one copies its own block.
template <class B>
void all_to_all_v(comm::Communicator* group, const void* in, std::span<const int64_t> send_counts,
                  void* out, std::span<const int64_t> recv_counts, DType dtype) {
  const size_t es = dtype_size(dtype);
  if (!active(group)) {
    B::copy(out, in, size_t(send_counts.empty() ? 0 : send_counts[0]) * es);
    return;
  }
  if (group->device() == B::kDevice) {
    group->all_to_all_v(in, send_counts, out, recv_counts, dtype);
    return;
  }
  int64_t sent = 0, received = 0;
  for (int64_t c : send_counts) sent += c;
  for (int64_t c : recv_counts) received += c;
  std::byte* host = backend_collectives_detail::staging(size_t(sent + received) * es).data();
  B::download(host, in, size_t(sent) * es);
  group->all_to_all_v(host, send_counts, host + size_t(sent) * es, recv_counts, dtype);
  B::upload(out, host + size_t(sent) * es, size_t(received) * es);
}

}  // namespace grove::parallel
