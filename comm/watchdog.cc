#include "comm/watchdog.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <sstream>
#include <vector>

namespace grove::comm {

const char* reduce_op_name(ReduceOp op) {
  return op == ReduceOp::kSum ? "sum" : "max";
}

const char* op_kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::kAllReduce:
      return "all_reduce";
    case OpKind::kAllGather:
      return "all_gather";
    case OpKind::kReduceScatter:
      return "reduce_scatter";
    case OpKind::kAllToAll:
      return "all_to_all";
    case OpKind::kAllToAllV:
      return "all_to_all_v";
    case OpKind::kBroadcast:
      return "broadcast";
    case OpKind::kSend:
      return "send";
    case OpKind::kRecv:
      return "recv";
    case OpKind::kBarrier:
      return "barrier";
    case OpKind::kSplit:
      return "split";
    case OpKind::kInit:
      return "init";
  }
  return "?";
}

std::string GroupInfo::describe() const {
  std::ostringstream os;
  os << "group '" << name << "' (rank " << rank << " of " << size();
  if (rank >= 0 && rank < size()) os << ", world rank " << world_ranks[rank];
  os << "; members ";
  // Long member lists are abbreviated: the head and the tail say enough.
  const int n = size();
  for (int i = 0; i < n; ++i) {
    if (n > 16 && i == 8) {
      os << ",...";
      i = n - 4;
    }
    os << (i ? "," : "") << world_ranks[i];
  }
  os << ")";
  return os.str();
}

std::string OpRecord::describe() const {
  std::ostringstream os;
  os << op_kind_name(kind) << "(";
  switch (kind) {
    case OpKind::kAllReduce:
    case OpKind::kReduceScatter:
      os << reduce_op_name(op) << ", " << count << " x " << dtype_name(dtype);
      break;
    case OpKind::kBroadcast:
      os << "root " << peer << ", " << count << " x " << dtype_name(dtype);
      break;
    case OpKind::kSend:
      os << "to " << peer << ", " << count << " x " << dtype_name(dtype);
      break;
    case OpKind::kRecv:
      os << "from " << peer << ", " << count << " x " << dtype_name(dtype);
      break;
    case OpKind::kAllGather:
    case OpKind::kAllToAll:
    case OpKind::kAllToAllV:
      os << count << " x " << dtype_name(dtype);
      break;
    case OpKind::kBarrier:
    case OpKind::kSplit:
    case OpKind::kInit:
      break;
  }
  os << ") on " << (group ? group->describe() : std::string("an unnamed group"));
  return os.str();
}

Watchdog::Guard& Watchdog::Guard::operator=(Guard&& other) noexcept {
  if (this != &other) {
    release();
    dog_ = std::move(other.dog_);
    id_ = other.id_;
  }
  return *this;
}

void Watchdog::Guard::release() {
  if (dog_) {
    dog_->disarm(id_);
    dog_.reset();
  }
}

std::shared_ptr<Watchdog> Watchdog::create(std::chrono::milliseconds timeout, AbortFn abort) {
  return std::shared_ptr<Watchdog>(new Watchdog(timeout, std::move(abort)));
}

Watchdog::Watchdog(std::chrono::milliseconds timeout, AbortFn abort)
    : timeout_(timeout), abort_(std::move(abort)) {
  if (enabled()) thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Watchdog::Guard Watchdog::arm(OpRecord op) {
  if (!enabled()) return Guard();
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = next_id_++;
    entries_.emplace(id, Entry{std::move(op), Clock::now() + timeout_});
  }
  // No notify (a wake-up per collective would cost a context switch): the idle thread looks
  // again every timeout / 2, always before this entry's deadline, and then sleeps until it.
  return Guard(shared_from_this(), id);
}

void Watchdog::disarm(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase(id);
}

uint64_t Watchdog::add_abort_hook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(hooks_mu_);
  const uint64_t id = next_hook_id_++;
  hooks_.emplace(id, std::move(hook));
  return id;
}

void Watchdog::remove_abort_hook(uint64_t id) {
  std::lock_guard<std::mutex> lock(hooks_mu_);
  hooks_.erase(id);
}

void Watchdog::run_abort_hooks() {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard<std::mutex> lock(hooks_mu_);
    for (auto& [id, hook] : hooks_) hooks.push_back(hook);
  }
  if (hooks.empty()) return;
  // On a thread of their own, so that a hook that blocks (a backend stuck inside its abort) cannot
  // keep the job alive: after the budget the job is aborted without waiting for it.
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  std::thread([hooks = std::move(hooks), done] {
    for (const auto& hook : hooks) {
      try {
        hook();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "grove comm watchdog: an abort hook failed: %s\n", e.what());
      }
    }
    done->set_value();
  }).detach();
  if (finished.wait_for(kAbortHooksBudget) != std::future_status::ready) {
    std::fprintf(stderr,
                 "grove comm watchdog: the abort hooks did not finish within %lld s; "
                 "aborting the job without them\n",
                 static_cast<long long>(kAbortHooksBudget.count()));
  }
  std::fflush(stderr);
}

size_t Watchdog::armed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

std::string Watchdog::message(const OpRecord& op, std::chrono::milliseconds timeout) {
  std::ostringstream os;
  os << "grove comm watchdog: " << op.describe() << " did not complete within " << timeout.count()
     << " ms; aborting the job (a rank skipped or reordered this collective, "
     << "or is stuck before it)";
  return os.str();
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (entries_.empty()) {
      cv_.wait_for(lock, std::max(timeout_ / 2, std::chrono::milliseconds(1)));
      continue;
    }
    const auto oldest = entries_.begin();
    const uint64_t id = oldest->first;
    const Clock::time_point deadline = oldest->second.deadline;
    if (Clock::now() < deadline) {
      cv_.wait_until(lock, deadline);
      continue;  // re-examine: the entry may have completed, or we were asked to stop
    }
    const std::string msg = message(entries_.at(id).op, timeout_);
    lock.unlock();
    std::fprintf(stderr, "%s\n", msg.c_str());
    std::fflush(stderr);
    run_abort_hooks();
    if (abort_) abort_(msg);
    // The abort function was expected to end the job; make sure the process does not linger.
    std::_Exit(kWatchdogExitCode);
  }
}

}  // namespace grove::comm
