#include "comm/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>

namespace grove::comm {
namespace detail {

namespace {
// bf16 has no MPI type: it travels as uint16 and is reduced by these user ops (in fp32, rounded
// to nearest even on the way back, as the NCCL backend does).
float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);  // stay a (quiet) NaN
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}
void bf16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    float x = bf16_to_f32(a[i]), y = bf16_to_f32(b[i]);
    if (std::isnan(x) || x > y) b[i] = a[i];
  }
}
}  // namespace

struct MpiContext {
  bool owns_mpi = false;
  int thread_level = MPI_THREAD_SINGLE;
  MPI_Op bf16_sum_op = MPI_OP_NULL;
  MPI_Op bf16_max_op = MPI_OP_NULL;

  MpiContext(int* argc, char*** argv) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    GROVE_CHECK(!finalized) << "MPI was already finalised in this process; it cannot restart";
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &thread_level);
      GROVE_CHECK(rc == MPI_SUCCESS) << "MPI_Init_thread failed (" << rc << ")";
      owns_mpi = true;
    } else {
      MPI_Query_thread(&thread_level);
    }
    MPI_Op_create(&bf16_sum, /*commute=*/1, &bf16_sum_op);
    MPI_Op_create(&bf16_max, /*commute=*/1, &bf16_max_op);
  }
  ~MpiContext() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    MPI_Op_free(&bf16_sum_op);
    MPI_Op_free(&bf16_max_op);
    if (owns_mpi) MPI_Finalize();
  }
};

}  // namespace detail

namespace {

using detail::MpiContext;

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kF64:
      return MPI_DOUBLE;
    case DType::kBF16:
      return MPI_UINT16_T;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    case DType::kU8:
      return MPI_UINT8_T;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(const MpiContext& ctx, ReduceOp op, DType dtype) {
  if (dtype == DType::kBF16) return op == ReduceOp::kSum ? ctx.bf16_sum_op : ctx.bf16_max_op;
  return op == ReduceOp::kSum ? MPI_SUM : MPI_MAX;
}

template <typename At>
void check_mpi(int rc, const At& at) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  GROVE_CHECK(false) << at << ": MPI error: " << std::string(text, len);
}

int to_int(int64_t v, const Where& at) {
  GROVE_CHECK(v <= INT_MAX) << at << ": " << v
                            << " elements exceed MPI's int count limit; split the buffer";
  return static_cast<int>(v);
}

// One in-flight non-blocking MPI operation.
class MpiWork final : public Work::Impl {
 public:
  MpiWork(std::shared_ptr<MpiContext> ctx, std::shared_ptr<const GroupInfo> group, OpKind kind)
      : ctx_(std::move(ctx)), group_(std::move(group)), at_{kind, group_.get(), "mpi"} {}
  MPI_Request* request() { return &req_; }
  // a2a-v counts and displacements must stay untouched until completion.
  std::vector<int>& counts() { return counts_; }
  void expect_recv(int64_t count, MPI_Datatype type) {
    check_recv_ = true;
    expect_ = count;
    type_ = type;
  }

  bool test() override {
    int flag = 0;
    MPI_Status st;
    check_mpi(MPI_Test(&req_, &flag, &st), at_);
    if (flag) after(st);
    return flag != 0;
  }
  void wait() override {
    MPI_Status st;
    check_mpi(MPI_Wait(&req_, &st), at_);
    after(st);
  }

 private:
  void after(const MPI_Status& st) {
    if (!check_recv_) return;
    check_recv_ = false;
    int got = 0;
    MPI_Get_count(&st, type_, &got);
    GROVE_CHECK(got == expect_) << at_ << ": received " << got << " elements, expected " << expect_
                                << " (sender and receiver sizes differ)";
  }

  std::shared_ptr<MpiContext> ctx_;         // keeps MPI initialised while in flight
  std::shared_ptr<const GroupInfo> group_;  // keeps at_ valid
  Where at_;
  MPI_Request req_ = MPI_REQUEST_NULL;
  std::vector<int> counts_;
  bool check_recv_ = false;
  int64_t expect_ = 0;
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(std::shared_ptr<MpiContext> ctx, MPI_Comm comm,
                  std::shared_ptr<const GroupInfo> info, std::shared_ptr<Watchdog> watchdog,
                  Device device = Device::kCPU)
      : Communicator(std::move(info), std::move(watchdog)),
        ctx_(std::move(ctx)),
        comm_(comm),
        device_(device) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    int r = -1, n = -1;
    MPI_Comm_rank(comm_, &r);
    MPI_Comm_size(comm_, &n);
    GROVE_CHECK(r == rank() && n == size())
        << where(OpKind::kInit) << ": MPI says rank " << r << " of " << n;
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  Device device() const override { return device_; }
  const char* backend_name() const override { return "mpi"; }
  // A duplicate over the same ranks whose buffers live on `device` (collective).
  std::unique_ptr<Communicator> duplicate(Device device) {
    MPI_Comm dup = MPI_COMM_NULL;
    Watchdog::Guard guard = arm(OpKind::kInit);
    check_mpi(MPI_Comm_dup(comm_, &dup), where(OpKind::kInit));
    return std::make_unique<MpiCommunicator>(ctx_, dup, group_ptr(), watchdog(), device);
  }

 protected:
  std::unique_ptr<Work::Impl> start(const Call& c, bool blocking) override;
  std::unique_ptr<Communicator> split_backend(int color, int key,
                                              std::shared_ptr<const GroupInfo> info) override;

 private:
  std::shared_ptr<MpiContext> ctx_;
  MPI_Comm comm_;
  Device device_;
};

std::unique_ptr<Work::Impl> MpiCommunicator::start(const Call& c, bool blocking) {
  const Where at = where(c.kind);
  const MPI_Datatype type = mpi_type(c.dtype);
  const int count = to_int(c.count, at);
  std::unique_ptr<MpiWork> work;
  MPI_Request* req = nullptr;
  if (!blocking) {
    work = std::make_unique<MpiWork>(ctx_, group_ptr(), c.kind);
    req = work->request();
  }
  int rc = MPI_SUCCESS;
  switch (c.kind) {
    case OpKind::kAllReduce: {
      MPI_Op op = mpi_op(*ctx_, c.op, c.dtype);
      rc = blocking ? MPI_Allreduce(MPI_IN_PLACE, c.out, count, type, op, comm_)
                    : MPI_Iallreduce(MPI_IN_PLACE, c.out, count, type, op, comm_, req);
      break;
    }
    case OpKind::kAllGather: {
      const size_t block = static_cast<size_t>(c.count) * dtype_size(c.dtype);
      const void* in = c.in;
      if (c.count > 0 && in == static_cast<const char*>(c.out) + rank() * block) in = MPI_IN_PLACE;
      rc = blocking ? MPI_Allgather(in, count, type, c.out, count, type, comm_)
                    : MPI_Iallgather(in, count, type, c.out, count, type, comm_, req);
      break;
    }
    case OpKind::kReduceScatter: {
      MPI_Op op = mpi_op(*ctx_, c.op, c.dtype);
      rc = blocking ? MPI_Reduce_scatter_block(c.in, c.out, count, type, op, comm_)
                    : MPI_Ireduce_scatter_block(c.in, c.out, count, type, op, comm_, req);
      break;
    }
    case OpKind::kAllToAll:
      rc = blocking ? MPI_Alltoall(c.in, count, type, c.out, count, type, comm_)
                    : MPI_Ialltoall(c.in, count, type, c.out, count, type, comm_, req);
      break;
    case OpKind::kAllToAllV: {
      const int n = size();
      std::vector<int> local;
      std::vector<int>& v = blocking ? local : work->counts();
      v.resize(4 * static_cast<size_t>(n));
      int* sc = v.data();
      int* sd = sc + n;
      int* rcnt = sd + n;
      int* rd = rcnt + n;
      int64_t soff = 0, roff = 0;
      for (int j = 0; j < n; ++j) {
        sc[j] = to_int(c.send_counts[j], at);
        rcnt[j] = to_int(c.recv_counts[j], at);
        sd[j] = to_int(soff, at);
        rd[j] = to_int(roff, at);
        soff += c.send_counts[j];
        roff += c.recv_counts[j];
      }
      to_int(soff, at);
      to_int(roff, at);
      rc = blocking ? MPI_Alltoallv(c.in, sc, sd, type, c.out, rcnt, rd, type, comm_)
                    : MPI_Ialltoallv(c.in, sc, sd, type, c.out, rcnt, rd, type, comm_, req);
      break;
    }
    case OpKind::kBroadcast:
      rc = blocking ? MPI_Bcast(c.out, count, type, c.peer, comm_)
                    : MPI_Ibcast(c.out, count, type, c.peer, comm_, req);
      break;
    case OpKind::kSend:
      rc = blocking ? MPI_Send(c.in, count, type, c.peer, c.tag, comm_)
                    : MPI_Isend(c.in, count, type, c.peer, c.tag, comm_, req);
      break;
    case OpKind::kRecv:
      if (blocking) {
        MPI_Status st;
        rc = MPI_Recv(c.out, count, type, c.peer, c.tag, comm_, &st);
        check_mpi(rc, at);
        int got = 0;
        MPI_Get_count(&st, type, &got);
        GROVE_CHECK(got == count) << at << ": received " << got << " elements, expected " << count
                                  << " (sender and receiver sizes differ)";
      } else {
        rc = MPI_Irecv(c.out, count, type, c.peer, c.tag, comm_, req);
        work->expect_recv(count, type);
      }
      break;
    case OpKind::kBarrier:
      rc = blocking ? MPI_Barrier(comm_) : MPI_Ibarrier(comm_, req);
      break;
    case OpKind::kSplit:
    case OpKind::kInit:
      GROVE_CHECK(false) << at << ": not an operation";
  }
  check_mpi(rc, at);
  return work;
}

std::unique_ptr<Communicator> MpiCommunicator::split_backend(
    int color, int key, std::shared_ptr<const GroupInfo> info) {
  MPI_Comm child = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &child),
            where(OpKind::kSplit));
  if (color < 0) return nullptr;
  return std::make_unique<MpiCommunicator>(ctx_, child, std::move(info), watchdog(), device_);
}

}  // namespace

bool mpi_device_buffers_supported() {
#ifdef GROVE_EMU_DEVICE_MEMORY_IS_HOST
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Communicator> mpi_device_communicator(Communicator& host) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&host);
  GROVE_CHECK(mpi != nullptr) << "mpi_device_communicator: group '" << host.name() << "' is a "
                              << host.backend_name() << " communicator, not an MPI one";
  if (!mpi_device_buffers_supported()) {
    throw Error(
        "mpi_device_communicator: this build's MPI communicators take host memory only "
        "(device buffers over MPI exist in the CUDA emulator's build); on GPUs use NCCL "
        "(comm/nccl_communicator.h) for group '" +
        host.name() + "'");
  }
  return mpi->duplicate(Device::kCUDA);
}

MpiSession::MpiSession(int* argc, char*** argv)
    : ctx_(std::make_shared<detail::MpiContext>(argc, argv)) {}

MpiSession::~MpiSession() = default;

int MpiSession::world_rank() const {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int MpiSession::world_size() const {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

std::unique_ptr<Communicator> MpiSession::world(CommOptions options) const {
  std::shared_ptr<MpiContext> ctx = ctx_;
  auto watchdog = Watchdog::create(options.timeout, [ctx](const std::string&) {
    // The watchdog already printed the message. MPI_Abort from this (non-main) thread is only
    // defined with MPI_THREAD_MULTIPLE; otherwise the watchdog exits the process, and mpirun
    // ends the job because a rank exited with a non-zero status.
    if (ctx->thread_level == MPI_THREAD_MULTIPLE) MPI_Abort(MPI_COMM_WORLD, kWatchdogExitCode);
  });
  auto info = std::make_shared<GroupInfo>();
  info->name = "world";
  info->rank = world_rank();
  info->world_ranks.resize(world_size());
  std::iota(info->world_ranks.begin(), info->world_ranks.end(), 0);

  OpRecord rec;
  rec.kind = OpKind::kInit;
  rec.group = info;
  Watchdog::Guard guard = watchdog->arm(rec);
  MPI_Comm comm = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  GROVE_CHECK(rc == MPI_SUCCESS) << "MPI_Comm_dup(MPI_COMM_WORLD) failed (" << rc << ")";
  return std::make_unique<MpiCommunicator>(ctx, comm, std::move(info), std::move(watchdog));
}

}  // namespace grove::comm
