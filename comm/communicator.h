// Communicator: collectives over one fixed group of ranks, on host (MPI) or device (NCCL) buffers.
//
// Semantics, identical for every backend:
//  - Every member calls the same operations in the same order with matching sizes. A rank with
//    nothing to contribute still calls, with count 0 (zero-length calls are valid everywhere).
//  - Buffers are contiguous. In all_gather, reduce_scatter and all_to_all, block r of a buffer
//    (elements [r*n, (r+1)*n)) belongs to group rank r. all_to_all_v packs blocks in rank order
//    with explicit per-rank counts (elements, some may be zero).
//  - Sums of integer-valued data are exact (bit-exact for integers and for floats whose partial
//    sums stay exactly representable); other float sums follow the backend's reduction order.
//  - Sync forms return when the local buffers may be reused. Async forms return a Work; the
//    buffers must not be read or written until Work::wait() returns (Tensor forms keep their
//    storage alive inside the Work). A Work destroyed un-waited is waited for by its destructor.
//  - Every operation runs under the watchdog (comm/watchdog.h): one that has not completed
//    `timeout` after it started aborts the job with a message naming it, the group and the rank.
//  - Misuse (wrong device, sizes that do not fit, a rank out of range) throws grove::Error naming
//    the operation and the group, before anything is sent.
//
// Communicators are RAII objects: destroying one frees the backend handle (MPI_Comm_free,
// ncclCommDestroy). They are not copyable; split() returns a new owned communicator.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "comm/types.h"
#include "comm/watchdog.h"
#include "core/tensor.h"

namespace grove::comm {

struct CommOptions {
  // Watchdog timeout per operation; zero disables the watchdog.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

// Handle on an asynchronous operation. Move-only. A default-constructed Work is complete.
class Work {
 public:
  // What a backend implements for one in-flight operation.
  class Impl {
   public:
    virtual ~Impl() = default;
    // Non-blocking completion check (also drives progress, e.g. MPI_Test).
    virtual bool test() = 0;
    // Blocks until complete; throws grove::Error if the operation failed.
    virtual void wait() = 0;
  };

  Work() = default;
  Work(std::unique_ptr<Impl> impl, Watchdog::Guard guard, std::vector<Tensor> keep_alive);
  Work(Work&&) noexcept = default;
  Work& operator=(Work&& other) noexcept;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;
  ~Work();

  // Blocks until the operation completed; after it the buffers may be used. Idempotent.
  void wait();
  // True once complete (then wait() returns at once). Never blocks.
  bool test();
  bool done() const { return impl_ == nullptr; }

 private:
  void finish();

  std::unique_ptr<Impl> impl_;
  Watchdog::Guard guard_;
  std::vector<Tensor> keep_alive_;
};

// Names an operation on a group in error messages, e.g. "all_reduce on group 'tp' (rank 1 of 2,
// world rank 3; members 2,3) [mpi]". Cheap to pass around: the text is only built when printed.
// Valid while the communicator that made it lives.
struct Where {
  OpKind kind;
  const GroupInfo* group;
  const char* backend;
  std::string str() const;
};
std::ostream& operator<<(std::ostream& os, const Where& w);

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return info_->rank; }
  int size() const { return info_->size(); }
  const std::string& name() const { return info_->name; }
  const GroupInfo& info() const { return *info_; }
  // Where this communicator's buffers live: kCPU for MPI, kCUDA for NCCL.
  virtual Device device() const = 0;
  virtual const char* backend_name() const = 0;
  std::chrono::milliseconds timeout() const { return watchdog_->timeout(); }
  // The watchdog this communicator and every communicator split from it report to.
  const std::shared_ptr<Watchdog>& watchdog() const { return watchdog_; }

  // ---- Tensor forms: sizes come from the tensors and are checked. --------------------------
  // In place: every rank ends with the elementwise reduction over the group.
  void all_reduce(Tensor& buf, ReduceOp op);
  Work all_reduce_async(Tensor& buf, ReduceOp op);
  // out.numel() == size() * in.numel(); block r of out is rank r's in.
  void all_gather(const Tensor& in, Tensor& out);
  Work all_gather_async(const Tensor& in, Tensor& out);
  // in.numel() == size() * out.numel(); out on rank r = reduction over ranks of block r of in.
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op);
  Work reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op);
  // in.numel() == out.numel() == size() * n; block j of in goes to rank j, arriving there as
  // block (this rank) of out.
  void all_to_all(const Tensor& in, Tensor& out);
  Work all_to_all_async(const Tensor& in, Tensor& out);
  // send_counts[j] elements go to rank j, taken from in in rank order; recv_counts[j] elements
  // arrive from rank j, packed into out in rank order. send_counts[j] on rank i must equal
  // recv_counts[i] on rank j. The counts may sum to less than the tensors' numel (the tail is
  // untouched), never more.
  void all_to_all_v(const Tensor& in, std::span<const int64_t> send_counts, Tensor& out,
                    std::span<const int64_t> recv_counts);
  Work all_to_all_v_async(const Tensor& in, std::span<const int64_t> send_counts, Tensor& out,
                          std::span<const int64_t> recv_counts);
  // root's buf is copied to every rank's buf.
  void broadcast(Tensor& buf, int root);
  Work broadcast_async(Tensor& buf, int root);
  // Point to point. The receiver's tensor must have exactly the sent numel and dtype. Tags
  // separate concurrent messages between the same pair (MPI); NCCL accepts tag 0 only.
  void send(const Tensor& buf, int dst, int tag = 0);
  Work send_async(const Tensor& buf, int dst, int tag = 0);
  void recv(Tensor& buf, int src, int tag = 0);
  Work recv_async(Tensor& buf, int src, int tag = 0);

  void barrier();
  Work barrier_async();

  // ---- Raw forms: pointers into this communicator's device() memory, counts in elements. ---
  void all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op);
  Work all_reduce_async(void* buf, int64_t count, DType dtype, ReduceOp op);
  // `in` may alias its own block of `out` (in == out + rank() * count): in-place all_gather.
  void all_gather(const void* in, void* out, int64_t count, DType dtype);
  Work all_gather_async(const void* in, void* out, int64_t count, DType dtype);
  void reduce_scatter(const void* in, void* out, int64_t count, DType dtype, ReduceOp op);
  Work reduce_scatter_async(const void* in, void* out, int64_t count, DType dtype, ReduceOp op);
  void all_to_all(const void* in, void* out, int64_t count, DType dtype);
  Work all_to_all_async(const void* in, void* out, int64_t count, DType dtype);
  void all_to_all_v(const void* in, std::span<const int64_t> send_counts, void* out,
                    std::span<const int64_t> recv_counts, DType dtype);
  Work all_to_all_v_async(const void* in, std::span<const int64_t> send_counts, void* out,
                          std::span<const int64_t> recv_counts, DType dtype);
  void broadcast(void* buf, int64_t count, DType dtype, int root);
  Work broadcast_async(void* buf, int64_t count, DType dtype, int root);
  void send(const void* buf, int64_t count, DType dtype, int dst, int tag = 0);
  Work send_async(const void* buf, int64_t count, DType dtype, int dst, int tag = 0);
  void recv(void* buf, int64_t count, DType dtype, int src, int tag = 0);
  Work recv_async(void* buf, int64_t count, DType dtype, int src, int tag = 0);

  // Collective over this group: ranks passing the same color form one new communicator, ordered
  // by (key, rank here). A negative color joins no group and returns nullptr. The new group is
  // named `name` in messages. Runs under the watchdog like any collective.
  std::unique_ptr<Communicator> split(int color, int key, std::string name);

 public:
  // One operation, as the backends see it. Fields unused by a kind are left at their defaults.
  struct Call {
    OpKind kind = OpKind::kBarrier;
    const void* in = nullptr;  // all_gather, reduce_scatter, all_to_all(_v), send
    void* out = nullptr;       // all_reduce / broadcast (in place), the others' output, recv
    int64_t count = 0;         // elements; per rank for all_gather, reduce_scatter, all_to_all
    DType dtype = DType::kU8;
    ReduceOp op = ReduceOp::kSum;
    int peer = -1;  // root / destination / source
    int tag = 0;
    std::span<const int64_t> send_counts;  // all_to_all_v
    std::span<const int64_t> recv_counts;
  };

 protected:
  Communicator(std::shared_ptr<const GroupInfo> info, std::shared_ptr<Watchdog> watchdog);

  // Starts `call`. blocking: completes it before returning and returns nullptr. Otherwise
  // returns the in-flight operation; it must copy whatever of `call` it needs later (the
  // counts spans are only valid during this call).
  virtual std::unique_ptr<Work::Impl> start(const Call& call, bool blocking) = 0;
  // Creates the sub-communicator for this rank's color (color >= 0). `info` already holds the
  // new group's members in order; the backend checks its own rank/size against it.
  virtual std::unique_ptr<Communicator> split_backend(int color, int key,
                                                      std::shared_ptr<const GroupInfo> info) = 0;

  const std::shared_ptr<const GroupInfo>& group_ptr() const { return info_; }
  // Arms the watchdog for an operation that is not a Call (init, split).
  Watchdog::Guard arm(OpKind kind) const;
  // The prefix of every error message about `kind` on this communicator.
  Where where(OpKind kind) const { return Where{kind, info_.get(), backend_name()}; }

 private:
  Work run(const Call& call, bool blocking, std::vector<Tensor> keep_alive);
  void check_call(const Call& call) const;
  void check_tensor(OpKind kind, const char* what, const Tensor& t) const;
  // Checks the tensors of a Tensor-form call (either may be null) and describes the call.
  Call tensor_call(OpKind kind, const Tensor* in, Tensor* out) const;

  std::shared_ptr<const GroupInfo> info_;
  std::shared_ptr<Watchdog> watchdog_;
};

// Mirrors groups of one world onto another world of the same ranks: for each of `groups` (the
// GroupInfo of a communicator over ranks of `world`'s world, e.g. the MPI grid's tp, cp, dp, dp_cp,
// ep and edp), a communicator split from `world` with the same name, members and member order.
// `world` is typically a device world over the host world's ranks (NCCL: the groups come from
// ncclCommSplit). Collective over `world`: every rank passes its own groups, the same number of
// them in the same order. A group with a member outside `world` throws grove::Error naming both.
std::vector<std::unique_ptr<Communicator>> split_like(Communicator& world,
                                                      std::span<const GroupInfo* const> groups);
std::vector<std::unique_ptr<Communicator>> split_like(Communicator& world,
                                                      std::span<Communicator* const> groups);

// Sums n host doubles over `group` (no-op when null or of size 1), staging them through the
// group's device memory when its collectives run there (NCCL): e.g. loss sums and router
// statistics of a model whose buffers live on a GPU.
void all_reduce_host_f64(Communicator* group, double* values, int64_t n);

}  // namespace grove::comm
