#include "worker/coordinator_link.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

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
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CoordinatorLink::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { HeartbeatLoop(); });
}

std::string CoordinatorLink::stop_reason() const {
  std::lock_guard<std::mutex> l(const_cast<std::mutex&>(mu_));
  return stop_reason_;
}

void CoordinatorLink::RecordStep(const StepMetrics& m) {
  last_step_.store(m.step);
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
  // group) and this rank's all-to-all bytes, sent and without LSH compression (the trainer
  // leaves the latter 0 when no layer compresses: then the plain all-to-all sent them all).
  // StepMetrics does not carry mfu yet (nor the heartbeat device_memory_bytes): left empty.
  for (size_t layer = 0; layer < m.expert_load.size(); ++layer) {
    v1::ExpertLoad* load = sm.add_expert_load();
    load->set_layer(int(layer));
    load->mutable_tokens()->Add(m.expert_load[layer].begin(), m.expert_load[layer].end());
  }
  if (!m.expert_load.empty()) {
    sm.set_a2a_bytes_sent(uint64_t(m.a2a_bytes));
    sm.set_a2a_bytes_uncompressed(
        uint64_t(m.a2a_bytes_uncompressed > 0 ? m.a2a_bytes_uncompressed : m.a2a_bytes));
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
  // Cut off: the coordinator unreachable for a whole heartbeat timeout (by then it has failed the
  // job for this rank's silence) while no step finished either (the peers are gone too, e.g. a
  // network partition): exit rather than spin in a collective until the comm watchdog fires.
  const auto cut_off_after =
      std::chrono::milliseconds(std::max<int64_t>(5000, assignment_.heartbeat_timeout_ms()));
  std::optional<std::chrono::steady_clock::time_point> unreachable_since;
  int64_t step_when_unreachable = 0;
  std::unique_lock<std::mutex> l(mu_);
  while (!stopping_) {
    if (unreachable_since && last_step_.load() == step_when_unreachable &&
        std::chrono::steady_clock::now() - *unreachable_since > cut_off_after) {
      std::fprintf(stderr,
                   "grove-worker: rank %d: cut off: coordinator %s unreachable and no step "
                   "finished for %.1f s (a network partition?); exiting\n",
                   options_.rank, options_.client.address.c_str(), cut_off_after.count() / 1000.0);
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
    l.unlock();
    bool more = false;
    const bool sent = SendHeartbeat(&more);
    l.lock();
    if (sent) {
      unreachable_since.reset();
    } else if (!unreachable_since || last_step_.load() != step_when_unreachable) {
      unreachable_since = std::chrono::steady_clock::now();  // (again) since the last progress
      step_when_unreachable = last_step_.load();
    }
    if (sent && more) continue;  // a backlog goes out in consecutive heartbeats
    cv_.wait_for(l, interval, [this] { return stopping_; });
  }
}

StatusOr<v1::JobState> CoordinatorLink::ReportExit(int exit_code, const std::string& message,
                                                   int stop_signal) {
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

}  // namespace grove
