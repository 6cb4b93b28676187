#include "comm/communicator.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <sstream>

namespace grove::comm {

// ---- Work ------------------------------------------------------------------------------------

Work::Work(std::unique_ptr<Impl> impl, Watchdog::Guard guard, std::vector<Tensor> keep_alive)
    : impl_(std::move(impl)), guard_(std::move(guard)), keep_alive_(std::move(keep_alive)) {
  if (!impl_) finish();
}

Work& Work::operator=(Work&& other) noexcept {
  if (this != &other) {
    if (impl_) impl_->wait();  // the buffers of the replaced operation must not be left in flight
    impl_ = std::move(other.impl_);
    guard_ = std::move(other.guard_);
    keep_alive_ = std::move(other.keep_alive_);
  }
  return *this;
}

Work::~Work() {
  if (!impl_) return;
  try {
    impl_->wait();
  } catch (const std::exception& e) {
    // A destructor cannot throw; the failure is still reported.
    std::fprintf(stderr, "grove comm: un-waited operation failed: %s\n", e.what());
  }
}

void Work::finish() {
  impl_.reset();
  guard_.release();
  keep_alive_.clear();
}

void Work::wait() {
  if (!impl_) return;
  impl_->wait();
  finish();
}

bool Work::test() {
  if (!impl_) return true;
  if (!impl_->test()) return false;
  finish();
  return true;
}

// ---- Communicator ----------------------------------------------------------------------------

Communicator::Communicator(std::shared_ptr<const GroupInfo> info,
                           std::shared_ptr<Watchdog> watchdog)
    : info_(std::move(info)), watchdog_(std::move(watchdog)) {
  GROVE_CHECK(info_ && info_->size() > 0 && info_->rank >= 0 && info_->rank < info_->size())
      << "communicator needs a non-empty group that contains this rank";
  GROVE_CHECK(watchdog_) << "communicator needs a watchdog (use a zero timeout to disable it)";
}

std::string Where::str() const {
  return std::string(op_kind_name(kind)) + " on " + group->describe() + " [" + backend + "]";
}

std::ostream& operator<<(std::ostream& os, const Where& w) {
  return os << w.str();
}

Watchdog::Guard Communicator::arm(OpKind kind) const {
  OpRecord rec;
  rec.kind = kind;
  rec.group = info_;
  return watchdog_->arm(std::move(rec));
}

void Communicator::check_call(const Call& c) const {
  const Where at = where(c.kind);
  GROVE_CHECK(c.count >= 0) << at << ": negative count " << c.count;
  const int n = size();
  switch (c.kind) {
    case OpKind::kAllReduce:
    case OpKind::kBroadcast:
    case OpKind::kRecv:
      GROVE_CHECK(c.count == 0 || c.out) << at << ": null buffer for " << c.count << " elements";
      break;
    case OpKind::kSend:
      GROVE_CHECK(c.count == 0 || c.in) << at << ": null buffer for " << c.count << " elements";
      break;
    case OpKind::kAllGather:
    case OpKind::kReduceScatter:
    case OpKind::kAllToAll:
      GROVE_CHECK(c.count == 0 || (c.in && c.out))
          << at << ": null buffer for " << c.count << " elements per rank";
      break;
    case OpKind::kAllToAllV: {
      GROVE_CHECK(static_cast<int>(c.send_counts.size()) == n &&
                  static_cast<int>(c.recv_counts.size()) == n)
          << at << ": need one send and one receive count per rank (" << n << "), got "
          << c.send_counts.size() << " and " << c.recv_counts.size();
      int64_t send_total = 0, recv_total = 0;
      for (int j = 0; j < n; ++j) {
        GROVE_CHECK(c.send_counts[j] >= 0 && c.recv_counts[j] >= 0)
            << at << ": negative count for rank " << j << " (send " << c.send_counts[j] << ", recv "
            << c.recv_counts[j] << ")";
        send_total += c.send_counts[j];
        recv_total += c.recv_counts[j];
      }
      GROVE_CHECK(send_total == 0 || c.in) << at << ": null send buffer";
      GROVE_CHECK(recv_total == 0 || c.out) << at << ": null receive buffer";
      break;
    }
    case OpKind::kBarrier:
    case OpKind::kSplit:
    case OpKind::kInit:
      break;
  }
  if (c.kind == OpKind::kBroadcast || c.kind == OpKind::kSend || c.kind == OpKind::kRecv) {
    GROVE_CHECK(c.peer >= 0 && c.peer < n)
        << at << ": " << (c.kind == OpKind::kBroadcast ? "root " : "peer ") << c.peer
        << " is not a rank of this group of " << n;
    GROVE_CHECK(c.tag >= 0) << at << ": negative tag " << c.tag;
  }
  if (c.kind == OpKind::kReduceScatter && c.count > 0) {
    // Overlap would let one rank's output clobber input still to be sent.
    const char* in = static_cast<const char*>(c.in);
    const char* out = static_cast<const char*>(c.out);
    const size_t in_bytes = static_cast<size_t>(c.count) * n * dtype_size(c.dtype);
    const size_t out_bytes = static_cast<size_t>(c.count) * dtype_size(c.dtype);
    GROVE_CHECK(out + out_bytes <= in || in + in_bytes <= out)
        << at << ": input and output buffers overlap";
  }
}

Work Communicator::run(const Call& call, bool blocking, std::vector<Tensor> keep_alive) {
  check_call(call);
  OpRecord rec;
  rec.kind = call.kind;
  rec.count = call.count;
  rec.dtype = call.dtype;
  rec.op = call.op;
  rec.peer = call.peer;
  rec.group = info_;
  if (call.kind == OpKind::kAllToAllV) {
    rec.count = std::accumulate(call.send_counts.begin(), call.send_counts.end(), int64_t{0});
  }
  Watchdog::Guard guard = watchdog_->arm(std::move(rec));
  std::unique_ptr<Work::Impl> impl = start(call, blocking);
  if (blocking) {
    GROVE_CHECK(!impl) << where(call.kind) << ": backend returned an in-flight blocking call";
    return Work();  // the guard disarms here
  }
  return Work(std::move(impl), std::move(guard), std::move(keep_alive));
}

void Communicator::check_tensor(OpKind kind, const char* what, const Tensor& t) const {
  GROVE_CHECK(t.device() == device())
      << where(kind) << ": " << what << " is a " << device_name(t.device()) << " tensor, but "
      << backend_name() << " communicators take " << device_name(device()) << " tensors";
  GROVE_CHECK(t.numel() == 0 || t.defined()) << where(kind) << ": " << what << " has no storage";
}

// ---- Tensor forms ----------------------------------------------------------------------------
// Each builder checks the tensors and describes the call; the sync and async forms share it.

namespace {
Communicator::Call make_call(OpKind kind, const void* in, void* out, int64_t count, DType dtype) {
  Communicator::Call c;
  c.kind = kind;
  c.in = in;
  c.out = out;
  c.count = count;
  c.dtype = dtype;
  return c;
}

// Checks the in/out pair of a block-structured collective and returns the per-rank count.
int64_t block_count(const Where& at, const Tensor& in, const Tensor& out, int64_t in_blocks,
                    int64_t out_blocks) {
  GROVE_CHECK(in.dtype() == out.dtype())
      << at << ": input is " << dtype_name(in.dtype()) << ", output is " << dtype_name(out.dtype());
  // in.numel() / in_blocks == out.numel() / out_blocks, checked without division.
  GROVE_CHECK(in.numel() * out_blocks == out.numel() * in_blocks && in.numel() % in_blocks == 0)
      << at << ": input " << shape_str(in.shape()) << " (" << in.numel() << " elements) and output "
      << shape_str(out.shape()) << " (" << out.numel() << " elements) do not fit: need "
      << (in_blocks == 1    ? "output = group size x input"
          : out_blocks == 1 ? "input = group size x output"
                            : "input = output, a multiple of the group size");
  return in.numel() / in_blocks;
}
}  // namespace

Communicator::Call Communicator::tensor_call(OpKind kind, const Tensor* in, Tensor* out) const {
  if (in) check_tensor(kind, out ? "input" : "buffer", *in);
  if (out) check_tensor(kind, in ? "output" : "buffer", *out);
  const int n = size();
  switch (kind) {
    case OpKind::kAllGather:
      return make_call(kind, in->raw(), out->raw(), block_count(where(kind), *in, *out, 1, n),
                       in->dtype());
    case OpKind::kReduceScatter:
      return make_call(kind, in->raw(), out->raw(), block_count(where(kind), *in, *out, n, 1),
                       in->dtype());
    case OpKind::kAllToAll:
      return make_call(kind, in->raw(), out->raw(), block_count(where(kind), *in, *out, n, n),
                       in->dtype());
    case OpKind::kAllToAllV:
      GROVE_CHECK(in->dtype() == out->dtype())
          << where(kind) << ": input is " << dtype_name(in->dtype()) << ", output is "
          << dtype_name(out->dtype());
      return make_call(kind, in->raw(), out->raw(), 0, in->dtype());
    case OpKind::kSend:
      return make_call(kind, in->raw(), nullptr, in->numel(), in->dtype());
    default:  // in place: all_reduce, broadcast; and recv
      return make_call(kind, nullptr, out->raw(), out->numel(), out->dtype());
  }
}

namespace {
Communicator::Call with_op(Communicator::Call c, ReduceOp op) {
  c.op = op;
  return c;
}
Communicator::Call with_peer(Communicator::Call c, int peer, int tag) {
  c.peer = peer;
  c.tag = tag;
  return c;
}
Communicator::Call with_counts(Communicator::Call c, std::span<const int64_t> send,
                               std::span<const int64_t> recv) {
  c.send_counts = send;
  c.recv_counts = recv;
  return c;
}
}  // namespace

Work Communicator::all_reduce_async(Tensor& buf, ReduceOp op) {
  return run(with_op(tensor_call(OpKind::kAllReduce, nullptr, &buf), op), false, {buf});
}
void Communicator::all_reduce(Tensor& buf, ReduceOp op) {
  run(with_op(tensor_call(OpKind::kAllReduce, nullptr, &buf), op), true, {});
}
Work Communicator::all_gather_async(const Tensor& in, Tensor& out) {
  return run(tensor_call(OpKind::kAllGather, &in, &out), false, {in, out});
}
void Communicator::all_gather(const Tensor& in, Tensor& out) {
  run(tensor_call(OpKind::kAllGather, &in, &out), true, {});
}
Work Communicator::reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  return run(with_op(tensor_call(OpKind::kReduceScatter, &in, &out), op), false, {in, out});
}
void Communicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  run(with_op(tensor_call(OpKind::kReduceScatter, &in, &out), op), true, {});
}
Work Communicator::all_to_all_async(const Tensor& in, Tensor& out) {
  return run(tensor_call(OpKind::kAllToAll, &in, &out), false, {in, out});
}
void Communicator::all_to_all(const Tensor& in, Tensor& out) {
  run(tensor_call(OpKind::kAllToAll, &in, &out), true, {});
}

namespace {
void check_a2av_fit(const Where& at, const Tensor& in, std::span<const int64_t> send_counts,
                    const Tensor& out, std::span<const int64_t> recv_counts) {
  int64_t s = 0, r = 0;
  for (int64_t v : send_counts) s += v;
  for (int64_t v : recv_counts) r += v;
  GROVE_CHECK(s <= in.numel()) << at << ": send counts sum to " << s << " but the input holds "
                               << in.numel() << " elements";
  GROVE_CHECK(r <= out.numel()) << at << ": receive counts sum to " << r << " but the output holds "
                                << out.numel() << " elements";
}
}  // namespace

Work Communicator::all_to_all_v_async(const Tensor& in, std::span<const int64_t> send_counts,
                                      Tensor& out, std::span<const int64_t> recv_counts) {
  Call c = with_counts(tensor_call(OpKind::kAllToAllV, &in, &out), send_counts, recv_counts);
  check_call(c);  // counts well-formed before they are summed
  check_a2av_fit(where(OpKind::kAllToAllV), in, send_counts, out, recv_counts);
  return run(c, false, {in, out});
}
void Communicator::all_to_all_v(const Tensor& in, std::span<const int64_t> send_counts, Tensor& out,
                                std::span<const int64_t> recv_counts) {
  Call c = with_counts(tensor_call(OpKind::kAllToAllV, &in, &out), send_counts, recv_counts);
  check_call(c);
  check_a2av_fit(where(OpKind::kAllToAllV), in, send_counts, out, recv_counts);
  run(c, true, {});
}
Work Communicator::broadcast_async(Tensor& buf, int root) {
  return run(with_peer(tensor_call(OpKind::kBroadcast, nullptr, &buf), root, 0), false, {buf});
}
void Communicator::broadcast(Tensor& buf, int root) {
  run(with_peer(tensor_call(OpKind::kBroadcast, nullptr, &buf), root, 0), true, {});
}
Work Communicator::send_async(const Tensor& buf, int dst, int tag) {
  return run(with_peer(tensor_call(OpKind::kSend, &buf, nullptr), dst, tag), false, {buf});
}
void Communicator::send(const Tensor& buf, int dst, int tag) {
  run(with_peer(tensor_call(OpKind::kSend, &buf, nullptr), dst, tag), true, {});
}
Work Communicator::recv_async(Tensor& buf, int src, int tag) {
  return run(with_peer(tensor_call(OpKind::kRecv, nullptr, &buf), src, tag), false, {buf});
}
void Communicator::recv(Tensor& buf, int src, int tag) {
  run(with_peer(tensor_call(OpKind::kRecv, nullptr, &buf), src, tag), true, {});
}
Work Communicator::barrier_async() {
  return run(make_call(OpKind::kBarrier, nullptr, nullptr, 0, DType::kU8), false, {});
}
void Communicator::barrier() {
  run(make_call(OpKind::kBarrier, nullptr, nullptr, 0, DType::kU8), true, {});
}

// ---- Raw forms -------------------------------------------------------------------------------

Work Communicator::all_reduce_async(void* buf, int64_t count, DType dtype, ReduceOp op) {
  return run(with_op(make_call(OpKind::kAllReduce, nullptr, buf, count, dtype), op), false, {});
}
void Communicator::all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) {
  run(with_op(make_call(OpKind::kAllReduce, nullptr, buf, count, dtype), op), true, {});
}
Work Communicator::all_gather_async(const void* in, void* out, int64_t count, DType dtype) {
  return run(make_call(OpKind::kAllGather, in, out, count, dtype), false, {});
}
void Communicator::all_gather(const void* in, void* out, int64_t count, DType dtype) {
  run(make_call(OpKind::kAllGather, in, out, count, dtype), true, {});
}
Work Communicator::reduce_scatter_async(const void* in, void* out, int64_t count, DType dtype,
                                        ReduceOp op) {
  return run(with_op(make_call(OpKind::kReduceScatter, in, out, count, dtype), op), false, {});
}
void Communicator::reduce_scatter(const void* in, void* out, int64_t count, DType dtype,
                                  ReduceOp op) {
  run(with_op(make_call(OpKind::kReduceScatter, in, out, count, dtype), op), true, {});
}
Work Communicator::all_to_all_async(const void* in, void* out, int64_t count, DType dtype) {
  return run(make_call(OpKind::kAllToAll, in, out, count, dtype), false, {});
}
void Communicator::all_to_all(const void* in, void* out, int64_t count, DType dtype) {
  run(make_call(OpKind::kAllToAll, in, out, count, dtype), true, {});
}
Work Communicator::all_to_all_v_async(const void* in, std::span<const int64_t> send_counts,
                                      void* out, std::span<const int64_t> recv_counts,
                                      DType dtype) {
  return run(
      with_counts(make_call(OpKind::kAllToAllV, in, out, 0, dtype), send_counts, recv_counts),
      false, {});
}
void Communicator::all_to_all_v(const void* in, std::span<const int64_t> send_counts, void* out,
                                std::span<const int64_t> recv_counts, DType dtype) {
  run(with_counts(make_call(OpKind::kAllToAllV, in, out, 0, dtype), send_counts, recv_counts), true,
      {});
}
Work Communicator::broadcast_async(void* buf, int64_t count, DType dtype, int root) {
  return run(with_peer(make_call(OpKind::kBroadcast, nullptr, buf, count, dtype), root, 0), false,
             {});
}
void Communicator::broadcast(void* buf, int64_t count, DType dtype, int root) {
  run(with_peer(make_call(OpKind::kBroadcast, nullptr, buf, count, dtype), root, 0), true, {});
}
Work Communicator::send_async(const void* buf, int64_t count, DType dtype, int dst, int tag) {
  return run(with_peer(make_call(OpKind::kSend, buf, nullptr, count, dtype), dst, tag), false, {});
}
void Communicator::send(const void* buf, int64_t count, DType dtype, int dst, int tag) {
  run(with_peer(make_call(OpKind::kSend, buf, nullptr, count, dtype), dst, tag), true, {});
}
Work Communicator::recv_async(void* buf, int64_t count, DType dtype, int src, int tag) {
  return run(with_peer(make_call(OpKind::kRecv, nullptr, buf, count, dtype), src, tag), false, {});
}
void Communicator::recv(void* buf, int64_t count, DType dtype, int src, int tag) {
  run(with_peer(make_call(OpKind::kRecv, nullptr, buf, count, dtype), src, tag), true, {});
}

// ---- split -----------------------------------------------------------------------------------

std::unique_ptr<Communicator> Communicator::split(int color, int key, std::string name) {
  // Every rank learns every (color, key) so that the new group's members (world ranks, in
  // order) are known for messages before the backend creates it. Runs on this communicator's
  // own device, so it works unchanged for host and device backends.
  const int n = size();
  Tensor mine = Tensor::empty({2}, DType::kI64);
  mine.data<int64_t>()[0] = color < 0 ? -1 : color;
  mine.data<int64_t>()[1] = key;
  Tensor all_dev = Tensor::empty({2 * n}, DType::kI64, device());
  Tensor mine_dev = mine.to(device());
  all_gather(mine_dev, all_dev);
  Tensor all = all_dev.to(Device::kCPU);
  const int64_t* ck = all.data<int64_t>();

  std::shared_ptr<const GroupInfo> child;
  if (color >= 0) {
    std::vector<int> members;  // ranks here with our color, ordered by (key, rank here)
    for (int r = 0; r < n; ++r)
      if (ck[2 * r] == color) members.push_back(r);
    std::stable_sort(members.begin(), members.end(),
                     [&](int a, int b) { return ck[2 * a + 1] < ck[2 * b + 1]; });
    auto info = std::make_shared<GroupInfo>();
    info->name = std::move(name);
    for (size_t i = 0; i < members.size(); ++i) {
      if (members[i] == rank()) info->rank = static_cast<int>(i);
      info->world_ranks.push_back(info_->world_ranks[members[i]]);
    }
    child = std::move(info);
  }

  Watchdog::Guard guard = arm(OpKind::kSplit);
  std::unique_ptr<Communicator> out = split_backend(color < 0 ? -1 : color, key, child);
  if (color < 0) {
    GROVE_CHECK(!out) << where(OpKind::kSplit) << ": backend returned a group for color < 0";
    return nullptr;
  }
  GROVE_CHECK(out && out->rank() == child->rank && out->size() == child->size())
      << where(OpKind::kSplit) << ": backend group disagrees with the exchanged colors and keys";
  return out;
}

std::vector<std::unique_ptr<Communicator>> split_like(Communicator& world,
                                                      std::span<const GroupInfo* const> groups) {
  const std::vector<int>& ranks = world.info().world_ranks;
  std::vector<std::unique_ptr<Communicator>> out;
  for (const GroupInfo* g : groups) {
    GROVE_CHECK(g != nullptr && g->size() > 0) << "split_like: an empty group";
    // Colour: the group's lowest member; key: the position in it (keeps the member order).
    int color = -1;
    for (int m : g->world_ranks) {
      const auto it = std::find(ranks.begin(), ranks.end(), m);
      if (it == ranks.end()) {
        throw Error("split_like: " + g->describe() + ": world rank " + std::to_string(m) +
                    " is not a member of " + world.info().describe());
      }
      const int here = static_cast<int>(it - ranks.begin());
      color = color < 0 ? here : std::min(color, here);
    }
    GROVE_CHECK(g->world_rank() == world.info().world_rank())
        << "split_like: " << g->describe() << " is not a group of this rank ("
        << world.info().describe() << ")";
    std::unique_ptr<Communicator> c = world.split(color, g->rank, g->name);
    GROVE_CHECK(c && c->info().world_ranks == g->world_ranks)
        << "split_like: " << g->describe() << " came out as "
        << (c ? c->info().describe() : std::string("no group"));
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<std::unique_ptr<Communicator>> split_like(Communicator& world,
                                                      std::span<Communicator* const> groups) {
  std::vector<const GroupInfo*> infos;
  for (Communicator* c : groups) {
    GROVE_CHECK(c != nullptr) << "split_like: a null group";
    infos.push_back(&c->info());
  }
  return split_like(world, infos);
}

void all_reduce_host_f64(Communicator* group, double* values, int64_t n) {
  if (group == nullptr || group->size() == 1 || n == 0) return;
  if (group->device() == Device::kCPU) {
    group->all_reduce(values, n, DType::kF64, ReduceOp::kSum);
    return;
  }
  Tensor host = Tensor::empty({n}, DType::kF64);
  std::memcpy(host.raw(), values, sizeof(double) * n);
  Tensor dev = host.to(group->device());
  group->all_reduce(dev.raw(), n, DType::kF64, ReduceOp::kSum);
  host.copy_from(dev);
  std::memcpy(values, host.raw(), sizeof(double) * n);
}

}  // namespace grove::comm
