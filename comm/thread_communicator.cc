#include "comm/thread_communicator.h"

#include <cuda_runtime_api.h>

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>
#include <thread>
#include <tuple>

#include "comm/thread_reduce.h"

namespace grove::comm {
namespace detail {

// Shared by every rank and group of one transport. One lock and one condition variable guard all
// of it (a test transport: simplicity over contention).
struct ThreadWorld {
  int size = 0;
  ThreadTransportOptions options;
  std::mutex mu;
  std::condition_variable cv;
  bool aborted = false;
  std::string abort_reason;

  void abort(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!aborted) {
        aborted = true;
        abort_reason = reason;
      }
    }
    cv.notify_all();
  }
};

// The device and stream of one rank's communicator; shared with the operations that rank executes,
// so that the stream outlives them even if the communicator goes first.
struct RankStream {
  int device = 0;
  cudaStream_t stream = nullptr;
  ~RankStream() {
    if (stream == nullptr) return;
    cudaSetDevice(device);
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
  }
};

// Recorded after an operation's device work, on its executor's stream.
struct DoneEvent {
  cudaEvent_t event = nullptr;
  std::shared_ptr<RankStream> stream;
  ~DoneEvent() {
    if (event) cudaEventDestroy(event);
  }
};

// Completion of one rank's part of an operation. `done`, `error` and `event` are written by the
// executor before it sets done under ThreadWorld::mu, and read after done was seen under it.
struct OpState {
  bool done = false;
  std::string error;  // non-empty: this rank's wait throws it
  std::shared_ptr<DoneEvent> event;
};

struct ThreadGroup;

// One rank's call, as the executor needs it (the count spans copied: they die with start()).
struct Post {
  Communicator::Call call;
  std::vector<int64_t> send_counts, recv_counts;
  int rank = 0;                 // in the group
  int color = -1;               // split
  cudaEvent_t ready = nullptr;  // the rank's inputs are ready (legacy default stream)
  Post() = default;
  Post(const Post&) = delete;
  Post& operator=(const Post&) = delete;
  ~Post() {
    if (ready) cudaEventDestroy(ready);
  }
};

struct Collective {
  explicit Collective(int n) : posts(n) {}
  std::vector<std::unique_ptr<Post>> posts;  // by group rank
  int posted = 0;
  std::shared_ptr<OpState> state = std::make_shared<OpState>();
  std::map<int, std::shared_ptr<ThreadGroup>> children;  // split: the new groups, by color
};

struct Message {
  std::unique_ptr<Post> post;
  std::shared_ptr<OpState> state;
};

// One group's matching state, shared by its members' communicators.
struct ThreadGroup {
  ThreadGroup(std::shared_ptr<ThreadWorld> w, int n) : world(std::move(w)), size(n), issued(n, 0) {}
  std::shared_ptr<ThreadWorld> world;
  int size;
  std::vector<uint64_t> issued;                             // collectives started, per rank
  std::map<uint64_t, std::shared_ptr<Collective>> pending;  // by sequence number
  std::map<std::tuple<int, int, int>, std::deque<Message>> sends, recvs;  // (src, dst, tag)
};

}  // namespace detail

namespace {

using namespace detail;

template <typename At>
void check_cuda(cudaError_t rc, const At& at) {
  if (rc != cudaSuccess) {
    std::ostringstream os;
    os << at << ": CUDA error: " << cudaGetErrorString(rc);
    throw Error(os.str());
  }
}

[[noreturn]] void throw_aborted(const Where& at, const std::string& reason) {
  throw Error(at.str() + ": the thread transport was aborted: " + reason);
}

// "all_reduce(sum, 4 x f32)"
std::string describe_call(const Post& p) {
  const Communicator::Call& c = p.call;
  std::ostringstream os;
  os << op_kind_name(c.kind) << "(";
  switch (c.kind) {
    case OpKind::kAllReduce:
    case OpKind::kReduceScatter:
      os << reduce_op_name(c.op) << ", " << c.count << " x " << dtype_name(c.dtype);
      break;
    case OpKind::kBroadcast:
      os << "root " << c.peer << ", " << c.count << " x " << dtype_name(c.dtype);
      break;
    case OpKind::kAllGather:
    case OpKind::kAllToAll:
      os << c.count << " x " << dtype_name(c.dtype);
      break;
    case OpKind::kAllToAllV:
      os << std::accumulate(p.send_counts.begin(), p.send_counts.end(), int64_t{0}) << " x "
         << dtype_name(c.dtype);
      break;
    default:
      break;
  }
  os << ")";
  return os.str();
}

// Empty when every rank's call matches rank 0's; otherwise says how they differ.
std::string mismatch(const Collective& coll) {
  const Post& p0 = *coll.posts[0];
  const int n = static_cast<int>(coll.posts.size());
  for (int r = 1; r < n; ++r) {
    const Post& p = *coll.posts[r];
    const Communicator::Call &a = p0.call, &b = p.call;
    bool same = a.kind == b.kind;
    if (same) {
      switch (a.kind) {
        case OpKind::kAllReduce:
        case OpKind::kReduceScatter:
          same = a.count == b.count && a.dtype == b.dtype && a.op == b.op;
          break;
        case OpKind::kAllGather:
        case OpKind::kAllToAll:
          same = a.count == b.count && a.dtype == b.dtype;
          break;
        case OpKind::kBroadcast:
          same = a.count == b.count && a.dtype == b.dtype && a.peer == b.peer;
          break;
        case OpKind::kAllToAllV:
          same = a.dtype == b.dtype;
          break;
        default:
          break;
      }
    }
    if (!same) {
      return "the ranks' calls do not match: rank 0 called " + describe_call(p0) + ", rank " +
             std::to_string(r) + " called " + describe_call(p);
    }
  }
  if (p0.call.kind == OpKind::kAllToAllV) {
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j)
        if (coll.posts[i]->send_counts[j] != coll.posts[j]->recv_counts[i]) {
          std::ostringstream os;
          os << "rank " << i << " sends " << coll.posts[i]->send_counts[j] << " elements to rank "
             << j << ", which expects " << coll.posts[j]->recv_counts[i] << " from it";
          return os.str();
        }
  }
  return "";
}

// Enqueues device work on `s` and records the done event.
class Enqueuer {
 public:
  Enqueuer(const Where& at, std::shared_ptr<RankStream> stream) : at_(at), rs_(std::move(stream)) {}

  void wait_for(cudaEvent_t ready) {
    if (ready) check_cuda(cudaStreamWaitEvent(rs_->stream, ready, 0), at_);
  }
  void copy(void* dst, const void* src, size_t bytes) {
    if (bytes == 0 || dst == src) return;
    check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, rs_->stream), at_);
  }
  void combine(void* acc, const void* x, int64_t count, DType dtype, ReduceOp op) {
    check_cuda(detail::combine_on_device(acc, x, count, dtype, op, rs_->stream), at_);
  }
  void* scratch(size_t bytes) {
    void* p = nullptr;
    check_cuda(cudaMallocAsync(&p, bytes, rs_->stream), at_);
    scratch_.push_back(p);
    return p;
  }
  std::shared_ptr<DoneEvent> finish() {
    for (void* p : scratch_) check_cuda(cudaFreeAsync(p, rs_->stream), at_);
    scratch_.clear();
    auto done = std::make_shared<DoneEvent>();
    done->stream = rs_;
    check_cuda(cudaEventCreateWithFlags(&done->event, cudaEventDisableTiming), at_);
    check_cuda(cudaEventRecord(done->event, rs_->stream), at_);
    return done;
  }

 private:
  const Where& at_;
  std::shared_ptr<RankStream> rs_;
  std::vector<void*> scratch_;
};

// The device work of a matched collective, every rank's part, in rank order.
void enqueue_collective(Collective& coll, Enqueuer& q) {
  const int n = static_cast<int>(coll.posts.size());
  for (const auto& p : coll.posts) q.wait_for(p->ready);
  const Communicator::Call& c0 = coll.posts[0]->call;
  const size_t esize = dtype_size(c0.dtype);
  const size_t block = static_cast<size_t>(c0.count) * esize;
  auto in = [&](int r) { return static_cast<const char*>(coll.posts[r]->call.in); };
  auto out = [&](int r) { return static_cast<char*>(coll.posts[r]->call.out); };
  switch (c0.kind) {
    case OpKind::kAllReduce: {
      if (n == 1 || c0.count == 0) break;
      // One sum over the ranks in rank order, copied to every rank: all get the same bits.
      char* acc = static_cast<char*>(q.scratch(block));
      q.copy(acc, out(0), block);
      for (int r = 1; r < n; ++r) q.combine(acc, out(r), c0.count, c0.dtype, c0.op);
      for (int r = 0; r < n; ++r) q.copy(out(r), acc, block);
      break;
    }
    case OpKind::kReduceScatter:
      for (int r = 0; r < n; ++r) {
        q.copy(out(r), in(0) + r * block, block);
        for (int s = 1; s < n; ++s) q.combine(out(r), in(s) + r * block, c0.count, c0.dtype, c0.op);
      }
      break;
    case OpKind::kAllGather:
      // An in-place call (in == its own block of out) skips its own copy: src == dst.
      for (int r = 0; r < n; ++r)
        for (int s = 0; s < n; ++s) q.copy(out(r) + s * block, in(s), block);
      break;
    case OpKind::kAllToAll:
      for (int r = 0; r < n; ++r)
        for (int s = 0; s < n; ++s) q.copy(out(r) + s * block, in(s) + r * block, block);
      break;
    case OpKind::kAllToAllV:
      for (int r = 0; r < n; ++r) {
        int64_t roff = 0;
        for (int s = 0; s < n; ++s) {
          const Post& src = *coll.posts[s];
          const int64_t soff =
              std::accumulate(src.send_counts.begin(), src.send_counts.begin() + r, int64_t{0});
          const int64_t cnt = coll.posts[r]->recv_counts[s];
          q.copy(out(r) + roff * esize, in(s) + soff * esize, static_cast<size_t>(cnt) * esize);
          roff += cnt;
        }
      }
      break;
    case OpKind::kBroadcast:
      for (int r = 0; r < n; ++r)
        if (r != c0.peer) q.copy(out(r), out(c0.peer), block);
      break;
    default:  // barrier, split: no device work
      break;
  }
}

class ThreadWork final : public Work::Impl {
 public:
  ThreadWork(std::shared_ptr<ThreadWorld> world, std::shared_ptr<OpState> state,
             std::shared_ptr<const GroupInfo> group, OpKind kind)
      : world_(std::move(world)),
        state_(std::move(state)),
        group_(std::move(group)),
        at_{kind, group_.get(), "thread"} {}

  bool test() override {
    {
      std::lock_guard<std::mutex> lock(world_->mu);
      if (!state_->done) {
        if (world_->aborted) throw_aborted(at_, world_->abort_reason);
        return false;
      }
    }
    check_error();
    if (!state_->event) return true;
    const cudaError_t q = cudaEventQuery(state_->event->event);
    if (q == cudaErrorNotReady) return false;
    check_cuda(q, at_);
    return true;
  }

  void wait() override {
    {
      std::unique_lock<std::mutex> lock(world_->mu);
      world_->cv.wait(lock, [&] { return state_->done || world_->aborted; });
      if (!state_->done) throw_aborted(at_, world_->abort_reason);
    }
    check_error();
    if (state_->event) check_cuda(cudaEventSynchronize(state_->event->event), at_);
  }

 private:
  void check_error() const {
    if (!state_->error.empty()) throw Error(at_.str() + ": " + state_->error);
  }

  std::shared_ptr<ThreadWorld> world_;
  std::shared_ptr<OpState> state_;
  std::shared_ptr<const GroupInfo> group_;  // keeps at_ valid
  Where at_;
};

class ThreadComm final : public Communicator {
 public:
  ThreadComm(std::shared_ptr<ThreadGroup> group, std::shared_ptr<const GroupInfo> info,
             std::shared_ptr<Watchdog> watchdog, int device)
      : Communicator(std::move(info), std::move(watchdog)), group_(std::move(group)) {
    GROVE_CHECK(group_->size == size())
        << where(OpKind::kInit) << ": group state of " << group_->size << " ranks";
    stream_ = std::make_shared<RankStream>();
    stream_->device = group_->world->options.cuda_device;
    check_cuda(cudaSetDevice(stream_->device), where(OpKind::kInit));
    check_cuda(cudaStreamCreateWithFlags(&stream_->stream, cudaStreamNonBlocking),
               where(OpKind::kInit));
  }
  ~ThreadComm() override {
    if (hook_id_ != 0) watchdog()->remove_abort_hook(hook_id_);
  }
  Device device() const override { return Device::kCUDA; }
  const char* backend_name() const override { return "thread"; }

  // The world communicator of a rank: on a timeout its watchdog aborts the whole transport.
  void add_transport_abort_hook() {
    std::weak_ptr<ThreadWorld> weak = group_->world;
    const std::string group = info().describe();
    hook_id_ = watchdog()->add_abort_hook([weak, group] {
      if (auto w = weak.lock()) {
        std::fprintf(stderr, "grove comm: aborting the thread transport of %s\n", group.c_str());
        w->abort("the watchdog of " + group + " fired");
      }
    });
  }

 protected:
  std::unique_ptr<Work::Impl> start(const Call& c, bool blocking) override;
  std::unique_ptr<Communicator> split_backend(int color, int key,
                                              std::shared_ptr<const GroupInfo> info) override;

 private:
  std::unique_ptr<Post> make_post(const Call& c, const Where& at) const;
  // Posts a collective (or split); executes it when this rank is the last to post.
  std::shared_ptr<Collective> post_collective(std::unique_ptr<Post> post, const Where& at);
  std::shared_ptr<OpState> post_p2p(std::unique_ptr<Post> post, const Where& at);
  void execute(Collective& coll, const Where& at);
  void deliver(Message& send, Message& recv, const Where& at);

  std::shared_ptr<ThreadGroup> group_;
  std::shared_ptr<RankStream> stream_;
  uint64_t hook_id_ = 0;
};

std::unique_ptr<Post> ThreadComm::make_post(const Call& c, const Where& at) const {
  auto p = std::make_unique<Post>();
  p->call = c;
  p->call.send_counts = {};
  p->call.recv_counts = {};
  p->send_counts.assign(c.send_counts.begin(), c.send_counts.end());
  p->recv_counts.assign(c.recv_counts.begin(), c.recv_counts.end());
  p->rank = rank();
  // The inputs are whatever the rank queued on the legacy default stream before this call.
  check_cuda(cudaEventCreateWithFlags(&p->ready, cudaEventDisableTiming), at);
  check_cuda(cudaEventRecord(p->ready, cudaStreamLegacy), at);
  return p;
}

std::shared_ptr<Collective> ThreadComm::post_collective(std::unique_ptr<Post> post,
                                                        const Where& at) {
  std::shared_ptr<Collective> coll;
  bool last = false;
  {
    std::lock_guard<std::mutex> lock(group_->world->mu);
    if (group_->world->aborted) throw_aborted(at, group_->world->abort_reason);
    const uint64_t seq = group_->issued[rank()]++;
    std::shared_ptr<Collective>& slot = group_->pending[seq];
    if (!slot) slot = std::make_shared<Collective>(size());
    coll = slot;
    coll->posts[rank()] = std::move(post);
    last = ++coll->posted == size();
    if (last) group_->pending.erase(seq);
  }
  if (last) execute(*coll, at);
  return coll;
}

void ThreadComm::execute(Collective& coll, const Where& at) {
  std::string error = mismatch(coll);
  std::shared_ptr<DoneEvent> event;
  if (error.empty()) {
    try {
      const OpKind kind = coll.posts[0]->call.kind;
      if (kind == OpKind::kSplit) {
        std::map<int, int> sizes;
        for (const auto& p : coll.posts)
          if (p->color >= 0) ++sizes[p->color];
        for (const auto& [color, n] : sizes)
          coll.children[color] = std::make_shared<ThreadGroup>(group_->world, n);
      } else {
        Enqueuer q(at, stream_);
        enqueue_collective(coll, q);
        event = q.finish();
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  {
    std::lock_guard<std::mutex> lock(group_->world->mu);
    coll.state->error = std::move(error);
    coll.state->event = std::move(event);
    coll.state->done = true;
    for (auto& p : coll.posts) p.reset();  // their ready events are no longer needed
  }
  group_->world->cv.notify_all();
}

std::shared_ptr<OpState> ThreadComm::post_p2p(std::unique_ptr<Post> post, const Where& at) {
  const bool is_send = post->call.kind == OpKind::kSend;
  const int src = is_send ? rank() : post->call.peer;
  const int dst = is_send ? post->call.peer : rank();
  const auto key = std::make_tuple(src, dst, post->call.tag);
  Message mine{std::move(post), std::make_shared<OpState>()};
  std::shared_ptr<OpState> state = mine.state;
  Message other;
  {
    std::lock_guard<std::mutex> lock(group_->world->mu);
    if (group_->world->aborted) throw_aborted(at, group_->world->abort_reason);
    auto& theirs = is_send ? group_->recvs[key] : group_->sends[key];
    if (theirs.empty()) {
      (is_send ? group_->sends[key] : group_->recvs[key]).push_back(std::move(mine));
      return state;  // the matching call delivers it
    }
    other = std::move(theirs.front());
    theirs.pop_front();
  }
  deliver(is_send ? mine : other, is_send ? other : mine, at);
  return state;
}

void ThreadComm::deliver(Message& send, Message& recv, const Where& at) {
  const Call& s = send.post->call;
  const Call& r = recv.post->call;
  std::string recv_error;
  std::shared_ptr<DoneEvent> event;
  const size_t sent = static_cast<size_t>(s.count) * dtype_size(s.dtype);
  const size_t room = static_cast<size_t>(r.count) * dtype_size(r.dtype);
  if (s.dtype != r.dtype || s.count != r.count) {
    std::ostringstream os;
    os << "received " << s.count << " elements, expected " << r.count;
    if (s.dtype != r.dtype)
      os << " (sent as " << dtype_name(s.dtype) << ", received as " << dtype_name(r.dtype) << ")";
    os << " (sender and receiver sizes differ)";
    recv_error = os.str();
  } else {
    try {
      Enqueuer q(at, stream_);
      q.wait_for(send.post->ready);
      q.wait_for(recv.post->ready);
      q.copy(r.out, s.in, std::min(sent, room));
      event = q.finish();
    } catch (const std::exception& e) {
      recv_error = e.what();
    }
  }
  {
    std::lock_guard<std::mutex> lock(group_->world->mu);
    send.state->event = event;
    recv.state->event = event;
    recv.state->error = recv_error;
    send.state->done = recv.state->done = true;
    send.post.reset();
    recv.post.reset();
  }
  group_->world->cv.notify_all();
}

std::unique_ptr<Work::Impl> ThreadComm::start(const Call& c, bool blocking) {
  const Where at = where(c.kind);
  check_cuda(cudaSetDevice(stream_->device), at);
  std::unique_ptr<Post> post = make_post(c, at);
  std::shared_ptr<OpState> state;
  if (c.kind == OpKind::kSend || c.kind == OpKind::kRecv) {
    state = post_p2p(std::move(post), at);
  } else {
    GROVE_CHECK(c.kind != OpKind::kSplit && c.kind != OpKind::kInit) << at << ": not an operation";
    state = post_collective(std::move(post), at)->state;
  }
  auto work = std::make_unique<ThreadWork>(group_->world, std::move(state), group_ptr(), c.kind);
  if (!blocking) return work;
  work->wait();
  return nullptr;
}

std::unique_ptr<Communicator> ThreadComm::split_backend(int color, int key,
                                                        std::shared_ptr<const GroupInfo> info) {
  const Where at = where(OpKind::kSplit);
  auto post = std::make_unique<Post>();
  post->call.kind = OpKind::kSplit;
  post->rank = rank();
  post->color = color;
  std::shared_ptr<Collective> coll = post_collective(std::move(post), at);
  ThreadWork(group_->world, coll->state, group_ptr(), OpKind::kSplit).wait();
  if (color < 0) return nullptr;
  std::shared_ptr<ThreadGroup> child;
  {
    std::lock_guard<std::mutex> lock(group_->world->mu);
    child = coll->children.at(color);
  }
  return std::make_unique<ThreadComm>(std::move(child), std::move(info), watchdog(),
                                      stream_->device);
}

}  // namespace

// ---- ThreadTransport -------------------------------------------------------------------------

ThreadTransport::ThreadTransport(int size, ThreadTransportOptions options)
    : world_(std::make_shared<ThreadWorld>()) {
  GROVE_CHECK(size >= 1) << "a thread transport needs at least one rank, got " << size;
  world_->size = size;
  world_->options = options;
  world_group_ = std::make_shared<detail::ThreadGroup>(world_, size);
}

ThreadTransport::~ThreadTransport() = default;

int ThreadTransport::size() const {
  return world_->size;
}

std::unique_ptr<Communicator> ThreadTransport::world(int rank) {
  GROVE_CHECK(rank >= 0 && rank < world_->size)
      << "thread transport: rank " << rank << " is not a rank of this world of " << world_->size;
  auto info = std::make_shared<GroupInfo>();
  info->name = "world";
  info->rank = rank;
  info->world_ranks.resize(world_->size);
  std::iota(info->world_ranks.begin(), info->world_ranks.end(), 0);
  // Each rank has its own watchdog, as each MPI process has; it ends the process on a timeout
  // (after its abort hook aborted the transport).
  auto watchdog = Watchdog::create(world_->options.comm.timeout, nullptr);
  auto comm = std::make_unique<ThreadComm>(world_group_, std::move(info), std::move(watchdog),
                                           world_->options.cuda_device);
  comm->add_transport_abort_hook();
  return comm;
}

void ThreadTransport::abort(const std::string& reason) {
  world_->abort(reason);
}

void run_thread_ranks(int size, const std::function<void(Communicator& world)>& fn,
                      ThreadTransportOptions options) {
  ThreadTransport transport(size, options);
  std::vector<std::exception_ptr> errors(size);
  std::vector<bool> first_hand(size, false);
  std::mutex mu;
  bool failed = false;
  std::vector<std::thread> threads;
  threads.reserve(size);
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        std::unique_ptr<Communicator> world = transport.world(r);
        fn(*world);
      } catch (...) {
        bool first;
        {
          std::lock_guard<std::mutex> lock(mu);
          first = !failed;
          failed = true;
          errors[r] = std::current_exception();
          first_hand[r] = first;
        }
        if (first) transport.abort("thread rank " + std::to_string(r) + " failed");
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < size; ++r)
    if (first_hand[r]) std::rethrow_exception(errors[r]);
}

}  // namespace grove::comm
