#include "worker/coordinator_link.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace grove {

namespace v1 = grove::v1;

namespace {

uint64_t ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(in >> size >> resident)) return 0;
  return resident * uint64_t(sysconf(_SC_PAGESIZE));
}

bool Transient(const grpc::Status& st) {
  return st.error_code() == grpc::StatusCode::UNAVAILABLE ||
         st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

CoordinatorLink::CoordinatorLink(CoordinatorLinkOptions options) : options_(std::move(options)) {}

StatusOr<std::unique_ptr<CoordinatorLink>> CoordinatorLink::Register(
    CoordinatorLinkOptions options) {
  if (options.job_id.empty()) return Status::Error("--job is empty: name the job to join");
  auto worker_token = rpc::ResolveWorkerToken();
  if (!worker_token.ok()) return worker_token.status();
  if (!worker_token.value().empty()) options.client.token = worker_token.value();
  if (options.host.empty()) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    options.host = host;
  }
  std::unique_ptr<CoordinatorLink> link(new CoordinatorLink(std::move(options)));
  const CoordinatorLinkOptions& o = link->options_;
  auto channel = rpc::MakeChannel(o.client);
  if (!channel.ok()) return channel.status();
  link->channel_ = channel.value();
  link->stub_ = v1::Coordinator::NewStub(link->channel_);

  v1::RegisterWorkerRequest req;
  req.set_job_id(o.job_id);
  req.set_rank(o.rank);
  req.set_world_size(o.world_size);
  req.set_host(o.host);
  req.set_pid(int(getpid()));
  req.set_devices(o.devices);
  const auto give_up = std::chrono::steady_clock::now() + o.register_timeout;
  while (true) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, o.client.token, o.client.deadline);
    grpc::Status st = link->stub_->RegisterWorker(&ctx, req, &link->assignment_);
    if (st.ok()) break;
    if (!Transient(st) || std::chrono::steady_clock::now() > give_up)
      return Status::Error("coordinator " + o.client.address + " refused rank " +
                           std::to_string(o.rank) + " of job " + o.job_id + ": " +
                           rpc::DescribeStatus(st));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return link;
}

CoordinatorLink::~CoordinatorLink() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    watch_stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (watch_thread_.joinable()) watch_thread_.join();
}

void CoordinatorLink::Start() {
  if (thread_.joinable()) return;
  last_contact_ns_.store(SteadyNs());  // the registration was answered just now
  thread_ = std::thread([this] { HeartbeatLoop(); });
  watch_thread_ = std::thread([this] { WatchLoop(); });
}

std::string CoordinatorLink::stop_reason() const {
  std::lock_guard<std::mutex> l(const_cast<std::mutex&>(mu_));
  return stop_reason_;
}

void CoordinatorLink::RecordStep(const StepMetrics& m) {
  last_step_.store(m.step);
  last_step_ns_.store(SteadyNs());
  if (options_.rank != 0) return;
  v1::StepMetric sm;
  sm.set_step(m.step);
  sm.set_loss(m.loss);
  sm.set_lr(m.lr);
  sm.set_grad_norm(m.grad_norm);
  sm.set_step_ms(m.ms);
  sm.set_tokens_per_s(m.tokens_per_s);
  if (!std::isnan(m.val_loss)) {
    sm.set_has_val_loss(true);
    sm.set_val_loss(m.val_loss);
  }
  // MoE figures, when the model has MoE layers: tokens per expert (over the router's stats
  // group) and the job's all-to-all bytes (summed over its ranks), sent and without LSH
  // compression (the trainer leaves the latter 0 when no layer compresses: then the plain
  // all-to-all sent them all).
  // MFU when the device's peak is known (the coordinator takes 0..1 only; a peak measured under
  // more contention than the step ran with could put it above).
  if (m.mfu > 0 && m.mfu <= 1) sm.set_mfu(m.mfu);
  for (size_t layer = 0; layer < m.expert_load.size(); ++layer) {
    v1::ExpertLoad* load = sm.add_expert_load();
    load->set_layer(int(layer));
    load->mutable_tokens()->Add(m.expert_load[layer].begin(), m.expert_load[layer].end());
  }
  if (!m.expert_load.empty()) {
    sm.set_a2a_bytes_sent(uint64_t(m.job_a2a_bytes));
    sm.set_a2a_bytes_uncompressed(uint64_t(
        m.job_a2a_bytes_uncompressed > 0 ? m.job_a2a_bytes_uncompressed : m.job_a2a_bytes));
  }
  sm.set_time_unix_ms(NowMs());
  std::lock_guard<std::mutex> l(mu_);
  if (pending_.size() >= options_.max_buffered_metrics) pending_.erase(pending_.begin());
  pending_.push_back(std::move(sm));
}

void CoordinatorLink::RecordCheckpoint(int step, const std::string& path) {
  if (options_.rank != 0) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    v1::CheckpointRecord rec;
    rec.set_step(step);
    rec.set_path(std::filesystem::absolute(path).string());
    rec.set_time_unix_ms(NowMs());
    pending_checkpoints_.push_back(std::move(rec));
  }
  SendHeartbeat();  // report it now; on failure it stays pending for the heartbeat thread
}

StepControl CoordinatorLink::Decide(comm::Communicator* world) {
  int64_t votes[2] = {stop_level_.load(), checkpoint_seq_.load()};
  if (world != nullptr && world->size() > 1)
    world->all_reduce(votes, 2, DType::kI64, comm::ReduceOp::kMax);
  if (votes[0] > 0) return StepControl::kStop;
  if (votes[1] > checkpoint_done_) {
    checkpoint_done_ = votes[1];
    return StepControl::kCheckpoint;
  }
  return StepControl::kContinue;
}

std::function<StepControl(const StepMetrics&)> CoordinatorLink::StepHook(
    comm::Communicator* world) {
  return [this, world](const StepMetrics& m) {
    RecordStep(m);
    return Decide(world);
  };
}

void CoordinatorLink::Abort(const std::string& reason) {
  // Called with mu_ held.
  if (stop_level_.load() < 2) {
    stop_reason_ = reason;
    abort_deadline_ = std::chrono::steady_clock::now() + options_.abort_grace;
    std::fprintf(stderr, "grove-worker: rank %d: coordinator says stop now: %s\n", options_.rank,
                 reason.c_str());
  }
  stop_level_.store(2);
}

void CoordinatorLink::HandleReply(const v1::HeartbeatResponse& reply) {
  // Called with mu_ held.
  switch (reply.action()) {
    case v1::ACTION_ABORT:
      Abort(reply.reason());
      break;
    case v1::ACTION_STOP:
      if (stop_level_.load() == 0) {
        stop_reason_ = reply.reason();
        stop_level_.store(1);
      }
      break;
    default:
      break;
  }
  int64_t seen = checkpoint_seq_.load();
  while (reply.checkpoint_seq() > seen &&
         !checkpoint_seq_.compare_exchange_weak(seen, reply.checkpoint_seq())) {
  }
}

bool CoordinatorLink::SendHeartbeat(bool* more) {
  v1::HeartbeatRequest req;
  {
    std::lock_guard<std::mutex> l(mu_);
    size_t n = 0, counts = 0;
    for (; n < pending_.size() && n < kMetricsPerHeartbeat; ++n) {
      size_t c = 0;
      for (const auto& layer : pending_[n].expert_load()) c += size_t(layer.tokens_size());
      if (n > 0 && counts + c > kExpertCountsPerHeartbeat) break;
      counts += c;
    }
    for (size_t i = 0; i < n; ++i) *req.add_metrics() = std::move(pending_[i]);
    pending_.erase(pending_.begin(), pending_.begin() + ptrdiff_t(n));
    const size_t k = std::min(pending_checkpoints_.size(), kCheckpointsPerHeartbeat);
    for (size_t i = 0; i < k; ++i) *req.add_checkpoints() = std::move(pending_checkpoints_[i]);
    pending_checkpoints_.erase(pending_checkpoints_.begin(),
                               pending_checkpoints_.begin() + ptrdiff_t(k));
    if (more != nullptr) *more = !pending_.empty() || !pending_checkpoints_.empty();
  }
  req.set_job_id(options_.job_id);
  req.set_rank(options_.rank);
  req.set_attempt(assignment_.attempt());
  req.set_step(last_step_.load());
  req.set_memory_bytes(ResidentBytes());
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, options_.client.token, options_.client.deadline);
  v1::HeartbeatResponse reply;
  grpc::Status st = stub_->Heartbeat(&ctx, req, &reply);
  std::lock_guard<std::mutex> l(mu_);
  if (st.ok()) {
    last_contact_ns_.store(SteadyNs());
    if (unreachable_logged_)
      std::fprintf(stderr, "grove-worker: rank %d: coordinator reachable again\n", options_.rank);
    unreachable_logged_ = false;
    HandleReply(reply);
    return true;
  }
  // Keep the metrics and checkpoint records for the next try (oldest first, bounded).
  pending_checkpoints_.insert(pending_checkpoints_.begin(), req.checkpoints().begin(),
                              req.checkpoints().end());
  std::vector<v1::StepMetric> back(req.metrics().begin(), req.metrics().end());
  back.insert(back.end(), std::make_move_iterator(pending_.begin()),
              std::make_move_iterator(pending_.end()));
  if (back.size() > options_.max_buffered_metrics)
    back.erase(back.begin(), back.end() - options_.max_buffered_metrics);
  pending_ = std::move(back);
  if (Transient(st)) {
    if (!unreachable_logged_)
      std::fprintf(stderr,
                   "grove-worker: rank %d: coordinator %s unreachable (%s); training goes on, "
                   "retrying\n",
                   options_.rank, options_.client.address.c_str(), rpc::DescribeStatus(st).c_str());
    unreachable_logged_ = true;
    return false;
  }
  // The coordinator no longer accepts this worker (job forgotten, rank unknown, bad token).
  Abort("heartbeat refused: " + rpc::DescribeStatus(st));
  return true;
}

void CoordinatorLink::HeartbeatLoop() {
  const auto interval =
      std::chrono::milliseconds(std::max<int64_t>(50, assignment_.heartbeat_interval_ms()));
  std::unique_lock<std::mutex> l(mu_);
  while (!stopping_) {
    l.unlock();
    bool more = false;
    const bool sent = SendHeartbeat(&more);
    l.lock();
    if (sent && more) continue;  // a backlog goes out in consecutive heartbeats
    cv_.wait_for(l, interval, [this] { return stopping_; });
  }
}

void CoordinatorLink::WatchLoop() {
  // Cut off: no heartbeat answered for a whole heartbeat timeout (by then the coordinator has
  // failed the job for this rank's silence) while no step finished either (the peers are gone
  // too). Judged here, not in the heartbeat thread, which may be stuck in its RPC.
  const int64_t cut_off_ns =
      std::max<int64_t>(5000, assignment_.heartbeat_timeout_ms()) * int64_t(1000000);
  const auto tick = std::chrono::milliseconds(
      std::clamp<int64_t>(assignment_.heartbeat_interval_ms() / 2, 20, 500));
  std::unique_lock<std::mutex> l(mu_);
  while (!watch_stopping_) {
    const int64_t now = SteadyNs();
    const int64_t report_deadline = exit_report_deadline_ns_.load();
    if (report_deadline != 0) {
      if (now > report_deadline) {
        std::fprintf(stderr,
                     "grove-worker: rank %d: could not report this rank's exit to coordinator %s "
                     "in time; exiting with code %d\n",
                     options_.rank, options_.client.address.c_str(), exit_code_.load());
        std::fflush(stderr);
        std::_Exit(exit_code_.load());
      }
    } else {
      const int64_t progress = std::max(last_contact_ns_.load(), last_step_ns_.load());
      if (now - progress > cut_off_ns) {
        std::fprintf(stderr,
                     "grove-worker: rank %d: cut off: coordinator %s unreachable and no step "
                     "finished for %.1f s (a network partition?); exiting\n",
                     options_.rank, options_.client.address.c_str(), double(cut_off_ns) * 1e-9);
        std::fflush(stderr);
        std::_Exit(kAbortExitCode);
      }
      if (stop_level_.load() > 1 && std::chrono::steady_clock::now() > abort_deadline_) {
        std::fprintf(stderr,
                     "grove-worker: rank %d: still running %.1f s after the coordinator's stop "
                     "(%s); exiting\n",
                     options_.rank, options_.abort_grace.count() / 1000.0, stop_reason_.c_str());
        std::fflush(stderr);
        std::_Exit(kAbortExitCode);
      }
    }
    cv_.wait_for(l, tick, [this] { return watch_stopping_; });
  }
}

StatusOr<v1::JobState> CoordinatorLink::ReportExit(int exit_code, const std::string& message,
                                                   int stop_signal) {
  exit_reporting_.store(true);
  struct Reported {
    std::atomic<bool>& flag;
    ~Reported() { flag.store(true); }
  } reported{exit_reported_};
  // From here the watch thread no longer judges a cut-off (no steps follow) but bounds this
  // report, which may wait on a coordinator that does not answer.
  exit_code_.store(exit_code);
  exit_report_deadline_ns_.store(
      SteadyNs() +
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          options_.exit_report_timeout + options_.client.deadline + std::chrono::seconds(2))
          .count());
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  const auto give_up = std::chrono::steady_clock::now() + options_.exit_report_timeout;
  // The metrics not yet sent go first, so the job's record is complete when it ends.
  if (!abort_requested()) {
    bool more = true;
    while (more && std::chrono::steady_clock::now() < give_up && !abort_requested()) {
      if (!SendHeartbeat(&more)) {
        more = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
      }
    }
  }
  v1::ReportExitRequest req;
  req.set_job_id(options_.job_id);
  req.set_rank(options_.rank);
  req.set_attempt(assignment_.attempt());
  req.set_exit_code(exit_code);
  req.set_message(message.substr(0, 4000));
  req.set_final_step(last_step_.load());
  req.set_stop_signal(stop_signal);
  while (true) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, options_.client.token, options_.client.deadline);
    v1::ReportExitResponse resp;
    grpc::Status st = stub_->ReportExit(&ctx, req, &resp);
    if (st.ok()) return resp.state();
    if (!Transient(st) || std::chrono::steady_clock::now() > give_up)
      return Status::Error("cannot report the exit of rank " + std::to_string(options_.rank) +
                           " to " + options_.client.address + ": " + rpc::DescribeStatus(st));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

void CoordinatorLink::ReportGraceExpired(int signal, std::chrono::milliseconds timeout) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  if (exit_reporting_.exchange(true)) {
    while (!exit_reported_.load() && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return;
  }
  v1::ReportExitRequest req;
  req.set_job_id(options_.job_id);
  req.set_rank(options_.rank);
  req.set_attempt(assignment_.attempt());
  req.set_exit_code(128 + signal);
  req.set_message("no checkpoint within the stop grace after signal " + std::to_string(signal));
  req.set_final_step(last_step_.load());
  req.set_stop_signal(signal);
  req.set_checkpoint_missed(true);
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, options_.client.token, timeout);
  v1::ReportExitResponse resp;
  const grpc::Status st = stub_->ReportExit(&ctx, req, &resp);
  if (!st.ok())
    std::fprintf(stderr, "grove-worker: rank %d: cannot report the missed checkpoint to %s: %s\n",
                 options_.rank, options_.client.address.c_str(), rpc::DescribeStatus(st).c_str());
}

}  // namespace grove
