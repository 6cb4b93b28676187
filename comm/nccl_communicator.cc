#include "comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <numeric>
#include <thread>

namespace grove::comm {
namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kF64:
      return ncclFloat64;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kU8:
      return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  return op == ReduceOp::kSum ? ncclSum : ncclMax;
}

template <typename At>
void check_nccl(ncclResult_t rc, const At& at) {
  GROVE_CHECK(rc == ncclSuccess || rc == ncclInProgress)
      << at << ": NCCL error: " << ncclGetErrorString(rc);
}

template <typename At>
void check_cuda(cudaError_t rc, const At& at) {
  GROVE_CHECK(rc == cudaSuccess) << at << ": CUDA error: " << cudaGetErrorString(rc);
}

// Device, stream and NCCL handle of one communicator; shared with its in-flight Works so they
// stay valid if the communicator is destroyed first. `mu` guards `comm` between the rank's own
// calls and the watchdog's abort (another thread); after an abort `comm` is null and every call
// fails naming the abort.
struct NcclState {
  int device = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int* scratch = nullptr;  // one int for barrier()
  std::timed_mutex mu;
  bool aborted = false;

  ~NcclState() {
    cudaSetDevice(device);
    if (stream && !aborted) cudaStreamSynchronize(stream);
    if (comm) ncclCommDestroy(comm);
    if (scratch) cudaFree(scratch);
    if (stream) cudaStreamDestroy(stream);
  }
};

template <typename At>
void check_not_aborted(const NcclState& s, const At& at) {
  GROVE_CHECK(!s.aborted) << at << ": the NCCL communicator was aborted by the watchdog";
}

// The watchdog's abort hook for one NCCL communicator: ncclCommAbort, so that the kernels and
// proxy threads of a collective that will never complete are torn down before the job ends. It
// takes the state's lock unless a call of the rank holds it for long (a blocking NCCL call that
// hangs, which is what ncclCommAbort from another thread is for).
void abort_nccl(const std::shared_ptr<NcclState>& state, const std::string& group) {
  std::unique_lock<std::timed_mutex> lock(state->mu, std::defer_lock);
  const bool locked = lock.try_lock_for(std::chrono::seconds(1));
  if (state->aborted || state->comm == nullptr) return;
  std::fprintf(stderr, "grove comm: ncclCommAbort on %s%s\n", group.c_str(),
               locked ? "" : " (while a call of this rank is still inside NCCL)");
  std::fflush(stderr);
  state->aborted = true;
  ncclComm_t comm = state->comm;
  state->comm = nullptr;
  const ncclResult_t rc = ncclCommAbort(comm);
  if (rc != ncclSuccess) {
    std::fprintf(stderr, "grove comm: ncclCommAbort on %s failed: %s\n", group.c_str(),
                 ncclGetErrorString(rc));
  }
}

// Waits for an event by polling, checking NCCL's asynchronous error state in between: an NCCL
// failure becomes an error here, a hang is left to the watchdog.
class NcclWork final : public Work::Impl {
 public:
  NcclWork(std::shared_ptr<NcclState> state, cudaEvent_t done,
           std::shared_ptr<const GroupInfo> group, OpKind kind)
      : state_(std::move(state)),
        done_(done),
        group_(std::move(group)),
        at_{kind, group_.get(), "nccl"} {}
  ~NcclWork() override { cudaEventDestroy(done_); }
  bool test() override {
    cudaError_t q = cudaEventQuery(done_);
    if (q == cudaSuccess) return true;
    GROVE_CHECK(q == cudaErrorNotReady) << at_ << ": CUDA error: " << cudaGetErrorString(q);
    std::lock_guard<std::timed_mutex> lock(state_->mu);
    check_not_aborted(*state_, at_);
    ncclResult_t async = ncclSuccess;
    check_nccl(ncclCommGetAsyncError(state_->comm, &async), at_);
    check_nccl(async, at_);
    return false;
  }
  void wait() override {
    int spins = 0;
    while (!test()) {
      if (++spins > 1000) std::this_thread::yield();
    }
  }

 private:
  std::shared_ptr<NcclState> state_;
  cudaEvent_t done_;
  std::shared_ptr<const GroupInfo> group_;  // keeps at_ valid
  Where at_;
};

class NcclComm final : public Communicator {
 public:
  NcclComm(std::shared_ptr<NcclState> state, std::shared_ptr<const GroupInfo> info,
           std::shared_ptr<Watchdog> watchdog)
      : Communicator(std::move(info), std::move(watchdog)), state_(std::move(state)) {
    int r = -1, n = -1;
    check_nccl(ncclCommUserRank(state_->comm, &r), where(OpKind::kInit));
    check_nccl(ncclCommCount(state_->comm, &n), where(OpKind::kInit));
    GROVE_CHECK(r == rank() && n == size())
        << where(OpKind::kInit) << ": NCCL says rank " << r << " of " << n;
    // On a timeout of any operation of this rank the watchdog aborts this communicator first.
    std::weak_ptr<NcclState> weak = state_;
    const std::string group = this->info().describe();
    hook_id_ = this->watchdog()->add_abort_hook([weak, group] {
      if (auto s = weak.lock()) abort_nccl(s, group);
    });
  }
  ~NcclComm() override { watchdog()->remove_abort_hook(hook_id_); }
  Device device() const override { return Device::kCUDA; }
  const char* backend_name() const override { return "nccl"; }

  // Creates stream and scratch for a freshly initialised comm.
  template <typename At>
  static std::shared_ptr<NcclState> make_state(int device, ncclComm_t comm, const At& at) {
    auto s = std::make_shared<NcclState>();
    s->device = device;
    s->comm = comm;
    check_cuda(cudaSetDevice(device), at);
    check_cuda(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), at);
    check_cuda(cudaMalloc(&s->scratch, sizeof(int)), at);
    return s;
  }

 protected:
  std::unique_ptr<Work::Impl> start(const Call& c, bool blocking) override;
  std::unique_ptr<Communicator> split_backend(int color, int key,
                                              std::shared_ptr<const GroupInfo> info) override;

 private:
  std::shared_ptr<NcclState> state_;
  uint64_t hook_id_ = 0;
};

std::unique_ptr<Work::Impl> NcclComm::start(const Call& c, bool blocking) {
  const Where at = where(c.kind);
  check_cuda(cudaSetDevice(state_->device), at);
  std::unique_lock<std::timed_mutex> lock(state_->mu);
  check_not_aborted(*state_, at);
  ncclComm_t comm = state_->comm;
  cudaStream_t s = state_->stream;
  const ncclDataType_t type = nccl_type(c.dtype);
  const size_t esize = dtype_size(c.dtype);
  const size_t count = static_cast<size_t>(c.count);

  // Order after work already queued on the legacy default stream.
  cudaEvent_t before = nullptr;
  check_cuda(cudaEventCreateWithFlags(&before, cudaEventDisableTiming), at);
  check_cuda(cudaEventRecord(before, cudaStreamLegacy), at);
  check_cuda(cudaStreamWaitEvent(s, before, 0), at);
  cudaEventDestroy(before);

  switch (c.kind) {
    case OpKind::kAllReduce:
      check_nccl(ncclAllReduce(c.out, c.out, count, type, nccl_op(c.op), comm, s), at);
      break;
    case OpKind::kAllGather:
      check_nccl(ncclAllGather(c.in, c.out, count, type, comm, s), at);
      break;
    case OpKind::kReduceScatter:
      check_nccl(ncclReduceScatter(c.in, c.out, count, type, nccl_op(c.op), comm, s), at);
      break;
    case OpKind::kAllToAll:
    case OpKind::kAllToAllV: {
      const int n = size();
      const char* in = static_cast<const char*>(c.in);
      char* out = static_cast<char*>(c.out);
      size_t soff = 0, roff = 0;
      check_nccl(ncclGroupStart(), at);
      for (int j = 0; j < n; ++j) {
        const size_t sn = c.kind == OpKind::kAllToAll ? count : size_t(c.send_counts[j]);
        const size_t rn = c.kind == OpKind::kAllToAll ? count : size_t(c.recv_counts[j]);
        if (sn > 0) check_nccl(ncclSend(in + soff * esize, sn, type, j, comm, s), at);
        if (rn > 0) check_nccl(ncclRecv(out + roff * esize, rn, type, j, comm, s), at);
        soff += sn;
        roff += rn;
      }
      check_nccl(ncclGroupEnd(), at);
      break;
    }
    case OpKind::kBroadcast:
      check_nccl(ncclBroadcast(c.out, c.out, count, type, c.peer, comm, s), at);
      break;
    case OpKind::kSend:
      GROVE_CHECK(c.tag == 0) << at << ": NCCL has no message tags (got tag " << c.tag << ")";
      check_nccl(ncclSend(c.in, count, type, c.peer, comm, s), at);
      break;
    case OpKind::kRecv:
      GROVE_CHECK(c.tag == 0) << at << ": NCCL has no message tags (got tag " << c.tag << ")";
      check_nccl(ncclRecv(c.out, count, type, c.peer, comm, s), at);
      break;
    case OpKind::kBarrier:
      check_nccl(ncclAllReduce(state_->scratch, state_->scratch, 1, ncclInt32, ncclSum, comm, s),
                 at);
      break;
    case OpKind::kSplit:
    case OpKind::kInit:
      GROVE_CHECK(false) << at << ": not an operation";
  }

  cudaEvent_t done = nullptr;
  check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), at);
  check_cuda(cudaEventRecord(done, s), at);
  auto work = std::make_unique<NcclWork>(state_, done, group_ptr(), c.kind);
  lock.unlock();
  if (!blocking) return work;
  work->wait();
  return nullptr;
}

std::unique_ptr<Communicator> NcclComm::split_backend(int color, int key,
                                                      std::shared_ptr<const GroupInfo> info) {
  const Where at = where(OpKind::kSplit);
  check_cuda(cudaSetDevice(state_->device), at);
  check_cuda(cudaStreamSynchronize(state_->stream), at);
  ncclComm_t child = nullptr;
  {
    std::lock_guard<std::timed_mutex> lock(state_->mu);
    check_not_aborted(*state_, at);
    check_nccl(
        ncclCommSplit(state_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child, nullptr),
        at);
  }
  if (color < 0) return nullptr;
  GROVE_CHECK(child) << at << ": ncclCommSplit returned no communicator";
  return std::make_unique<NcclComm>(make_state(state_->device, child, at), std::move(info),
                                    watchdog());
}

}  // namespace

std::unique_ptr<Communicator> NcclCommunicator::create(Communicator& bootstrap, int cuda_device,
                                                       std::string name) {
  GROVE_CHECK(bootstrap.device() == Device::kCPU)
      << "NCCL bootstrap needs a host communicator, got " << bootstrap.backend_name();
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (bootstrap.rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  bootstrap.broadcast(&id, sizeof(id), DType::kU8, 0);

  auto info = std::make_shared<GroupInfo>();
  info->name = std::move(name);
  info->rank = bootstrap.rank();
  info->world_ranks = bootstrap.info().world_ranks;
  const std::string at = std::string("init on ") + info->describe() + " [nccl]";

  OpRecord rec;
  rec.kind = OpKind::kInit;
  rec.group = info;
  // Share the bootstrap's watchdog: its abort function ends the whole (MPI) job.
  std::shared_ptr<Watchdog> watchdog = bootstrap.watchdog();
  Watchdog::Guard guard = watchdog->arm(rec);
  check_cuda(cudaSetDevice(cuda_device), at);
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()), at);
  return std::make_unique<NcclComm>(NcclComm::make_state(cuda_device, comm, at), std::move(info),
                                    std::move(watchdog));
}

std::unique_ptr<Communicator> NcclCommunicator::create_single(int cuda_device,
                                                              CommOptions options) {
  auto info = std::make_shared<GroupInfo>();
  info->name = "world";
  info->rank = 0;
  info->world_ranks = {0};
  const std::string at = std::string("init on ") + info->describe() + " [nccl]";
  // No job to abort beyond this process: the watchdog prints and exits.
  auto watchdog = Watchdog::create(options.timeout, nullptr);
  OpRecord rec;
  rec.kind = OpKind::kInit;
  rec.group = info;
  Watchdog::Guard guard = watchdog->arm(rec);
  check_cuda(cudaSetDevice(cuda_device), at);
  ncclComm_t comm = nullptr;
  int devices[1] = {cuda_device};
  check_nccl(ncclCommInitAll(&comm, 1, devices), at);
  return std::make_unique<NcclComm>(NcclComm::make_state(cuda_device, comm, at), std::move(info),
                                    std::move(watchdog));
}

NcclCommunicator::Groups NcclCommunicator::create_groups(Communicator& host_world,
                                                         std::span<Communicator* const> host_groups,
                                                         int cuda_device) {
  Groups out;
  out.world = create(host_world, cuda_device, "world");
  out.groups = split_like(*out.world, host_groups);
  return out;
}

std::string NcclCommunicator::version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100);
}

}  // namespace grove::comm
