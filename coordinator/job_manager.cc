#include "coordinator/job_manager.h"

#include <google/protobuf/util/message_differencer.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "coordinator/planner.h"
#include "proto/client.h"
#include "spec/train_config.h"

namespace grove::coordinator {

namespace v1 = grove::v1;

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

grpc::Status Invalid(const std::string& m) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, m);
}
grpc::Status NotFound(const std::string& job_id) {
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      "no job '" + job_id + "' (list jobs with `grove jobs`)");
}
grpc::Status Precondition(const std::string& m) {
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, m);
}
grpc::Status Denied(const std::string& m) {
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, m);
}

grpc::Status CheckJobId(const std::string& job_id) {
  if (job_id.empty()) return Invalid("job_id is empty");
  if (job_id.size() > Limits::kIdBytes)
    return Invalid("job_id is longer than " + std::to_string(Limits::kIdBytes) + " bytes");
  return grpc::Status::OK;
}

// User calls that change a job need its owner or the admin; workers never make them.
grpc::Status CheckManage(const Principal& who, const v1::Job& job, const char* what) {
  if (who.MayManage(job.owner())) return grpc::Status::OK;
  if (who.role == Role::kWorker)
    return Denied(std::string("a worker credential cannot ") + what + " (use a user token)");
  return Denied("job " + job.id() + " belongs to '" +
                (job.owner().empty() ? std::string("user") : job.owner()) + "'; '" + who.name +
                "' cannot " + what + " (its owner or the admin can)");
}

int64_t JobNumber(const std::string& id) {
  const size_t dash = id.find('-');
  if (dash == std::string::npos) return 0;
  try {
    return std::stoll(id.substr(dash + 1));
  } catch (const std::exception&) {
    return 0;
  }
}

// The limits on a heartbeat, checked before anything else (docs/coordinator.md).
grpc::Status CheckHeartbeatLimits(const v1::HeartbeatRequest& req) {
  if (grpc::Status st = CheckJobId(req.job_id()); !st.ok()) return st;
  if (req.metrics_size() > Limits::kMetricsPerHeartbeat)
    return Invalid("metrics: at most " + std::to_string(Limits::kMetricsPerHeartbeat) +
                   " per heartbeat, got " + std::to_string(req.metrics_size()));
  if (req.checkpoints_size() > Limits::kCheckpointsPerHeartbeat)
    return Invalid("checkpoints: at most " + std::to_string(Limits::kCheckpointsPerHeartbeat) +
                   " per heartbeat, got " + std::to_string(req.checkpoints_size()));
  if (req.step() < 0) return Invalid("step must be >= 0");
  int64_t counts = 0;
  for (int i = 0; i < req.metrics_size(); ++i) {
    const v1::StepMetric& m = req.metrics(i);
    const std::string field = "metrics[" + std::to_string(i) + "]";
    if (m.step() < 0) return Invalid(field + ".step must be >= 0");
    if (m.loss() < 0) return Invalid(field + ".loss must be >= 0 (a cross-entropy)");
    if (m.has_mfu() && !(m.mfu() >= 0 && m.mfu() <= 1))
      return Invalid(field + ".mfu must be in [0, 1]");
    if (m.expert_load_size() > Limits::kExpertLayers)
      return Invalid(field + ".expert_load: at most " + std::to_string(Limits::kExpertLayers) +
                     " layers");
    for (const auto& layer : m.expert_load()) {
      if (layer.tokens_size() > Limits::kExpertsPerLayer)
        return Invalid(field + ".expert_load.tokens: at most " +
                       std::to_string(Limits::kExpertsPerLayer) + " experts per layer");
      counts += layer.tokens_size();
    }
    if (counts > Limits::kExpertCountsPerHeartbeat)
      return Invalid("metrics[].expert_load: at most " +
                     std::to_string(Limits::kExpertCountsPerHeartbeat) +
                     " counts per heartbeat in all");
  }
  for (int i = 0; i < req.checkpoints_size(); ++i) {
    const v1::CheckpointRecord& ck = req.checkpoints(i);
    const std::string field = "checkpoints[" + std::to_string(i) + "]";
    if (ck.path().empty() || ck.path().size() > Limits::kPathBytes)
      return Invalid(field + ".path must be 1-" + std::to_string(Limits::kPathBytes) + " bytes");
    if (ck.step() < 0) return Invalid(field + ".step must be >= 0");
  }
  return grpc::Status::OK;
}

// The out_dir of a resolved config ("" when it has none or it is not absolute).
std::string OutDirOf(const std::string& resolved_config_json) {
  auto j = nlohmann::json::parse(resolved_config_json, nullptr, false);
  if (!j.is_object() || !j.contains("out_dir") || !j["out_dir"].is_string()) return "";
  const std::string dir = j["out_dir"].get<std::string>();
  return dir.empty() || dir[0] != '/' ? "" : ResolvePath(dir);
}

std::string Seconds(std::chrono::milliseconds ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", ms.count() / 1000.0);
  return buf;
}

// SIGTERM / SIGUSR1 stop a job to be continued later; SIGINT / SIGUSR2 cancel it.
bool Preemption(int signal) {
  return signal == SIGTERM || signal == SIGUSR1;
}

std::string SignalName(int signal) {
  switch (signal) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGUSR2:
      return "SIGUSR2";
    case SIGKILL:
      return "SIGKILL";
    case SIGSEGV:
      return "SIGSEGV";
    case SIGABRT:
      return "SIGABRT";
    case SIGBUS:
      return "SIGBUS";
    case SIGHUP:
      return "SIGHUP";
    default:
      return "signal " + std::to_string(signal);
  }
}

std::string DescribeWorker(const v1::WorkerInfo& w) {
  return "rank " + std::to_string(w.rank()) + " (host " + w.host() + ", pid " +
         std::to_string(w.pid()) + ")";
}

bool Printable(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x21 && c <= 0x7e; });
}

// Validates a spec (limits, paths inside the roots) and plans its layout. Messages name the
// field. *out_dir is the resolved out_dir the workers write to.
grpc::Status PlanJob(const v1::JobSpec& spec, const PathPolicy& paths,
                     const planner::ClusterSpec* cluster, v1::Layout* layout, std::string* resolved,
                     int64_t* total_steps, std::string* out_dir) {
  if (spec.name().size() > Limits::kNameBytes)
    return Invalid("spec.name is longer than " + std::to_string(Limits::kNameBytes) + " bytes");
  if (spec.config_json().size() > Limits::kConfigBytes)
    return Invalid("spec.config_json is " + std::to_string(spec.config_json().size()) +
                   " bytes; at most " + std::to_string(Limits::kConfigBytes));
  if (spec.parallel().world_size() > Limits::kWorldSize)
    return Invalid("spec.parallel.world_size is at most " + std::to_string(Limits::kWorldSize));
  if (spec.max_restarts() < 0 || spec.max_restarts() > 100)
    return Invalid("spec.max_restarts must be in [0, 100], got " +
                   std::to_string(spec.max_restarts()));
  if (spec.config_json().empty())
    return Invalid(
        "spec.config_json is empty (a TrainConfig JSON object: model, train, data, "
        "out_dir)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(spec.config_json(), nullptr, /*allow_exceptions=*/true,
                              /*ignore_comments=*/true);
  } catch (const nlohmann::json::parse_error& e) {
    return Invalid(std::string("spec.config_json is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) return Invalid("spec.config_json must be a JSON object");
  auto config = TrainConfigFromJson(j);
  if (!config.ok()) return Invalid("spec.config_json: " + config.status().message());
  auto data_dir = paths.CheckData("spec.config_json: data.dir", config.value().data.dir);
  if (!data_dir.ok()) return Invalid(data_dir.status().message());
  auto run_dir = paths.CheckRun("spec.config_json: out_dir", config.value().out_dir);
  if (!run_dir.ok()) return Invalid(run_dir.status().message());

  const v1::ParallelSpec& p = spec.parallel();
  PlanRequest req;
  req.world_size = p.world_size();
  req.tp = p.tp();
  req.cp = p.cp();
  req.ep = p.ep();
  req.dp = p.dp();
  req.recompute = p.recompute();
  req.device_memory_gib = p.device_memory_gib();
  req.ranks_per_host = p.ranks_per_host();
  req.sequence_parallel = config.value().parallel.sequence_parallel;
  req.cluster = cluster;
  auto plan = PlanLayout(config.value(), req);
  if (!plan.ok()) return Invalid("spec." + plan.status().message());
  const Plan& pl = plan.value();
  layout->set_world_size(pl.world);
  layout->set_tp(pl.tp);
  layout->set_cp(pl.cp);
  layout->set_ep(pl.ep);
  layout->set_dp(pl.dp);
  layout->set_recompute(recompute_name(pl.recompute));
  layout->set_sequence_parallel(pl.sp);
  layout->set_bytes_per_device(pl.memory.total);
  layout->set_device_memory_bytes(pl.device_memory_bytes);
  layout->set_explanation(pl.explanation);
  if (pl.predicted_step_s > 0) layout->set_predicted_step_ms(1e3 * pl.predicted_step_s);
  layout->set_prediction_note(pl.prediction_note);
  // The workers train with exactly the planned layout.
  TrainConfig resolved_config = config.value();
  resolved_config.data.dir = data_dir.value();
  resolved_config.out_dir = run_dir.value();
  *out_dir = run_dir.value();
  resolved_config.train.recompute = pl.recompute;
  resolved_config.parallel.tp = pl.tp;
  resolved_config.parallel.cp = pl.cp;
  resolved_config.parallel.ep = pl.ep;
  resolved_config.parallel.dp = pl.dp;
  if (Status st = resolved_config.ResolveLayout(pl.world); !st.ok())
    return Invalid("spec: the planned layout " + pl.explanation + " is not valid: " + st.message());
  *resolved = resolved_config.ToJson().dump();
  *total_steps = resolved_config.train.steps;
  return grpc::Status::OK;
}

Plan PlanFromLayout(const v1::Layout& l) {
  Plan p;
  p.world = l.world_size();
  p.tp = l.tp();
  p.cp = l.cp();
  p.ep = l.ep();
  p.dp = l.dp();
  return p;
}

}  // namespace

JobManager::JobManager(std::unique_ptr<JobStore> store, ManagerOptions options)
    : store_(std::move(store)), options_(options) {}

StatusOr<std::unique_ptr<JobManager>> JobManager::Create(std::unique_ptr<JobStore> store,
                                                         ManagerOptions options) {
  if (options.heartbeat_timeout.count() <= 0)
    return Status::Error("heartbeat timeout must be positive");
  std::unique_ptr<JobManager> m(new JobManager(std::move(store), options));
  try {
    m->next_number_ = m->store_->MaxJobNumber();
    std::vector<v1::Job> jobs = m->store_->LoadJobs();
    for (auto& job : jobs) {
      Entry& e = m->jobs_[job.id()];
      e.job = std::move(job);
      e.number = JobNumber(e.job.id());
      e.out_dir = OutDirOf(e.job.resolved_config_json());
      m->by_number_[e.number] = e.job.id();
      m->creds_[e.job.id()].world_size = e.job.layout().world_size();
      if (!e.job.request_id().empty()) m->by_request_[e.job.request_id()] = e.job.id();
      const auto now = Clock::now();
      // Two timeouts to reconnect: the workers' channels back off while the coordinator is
      // down, and the clock starts here, before the server answers.
      for (const auto& w : e.job.workers())
        if (!w.exited()) e.last_seen[w.rank()] = now + options.heartbeat_timeout;
      const v1::JobState s = e.job.state();
      if ((s == v1::PENDING && e.job.workers_size() > 0) || s == v1::RESTARTING) {
        e.waiting_for_ranks = true;
        e.attempt_started = now;
      }
      for (auto& ev : m->store_->Events(
               e.job.id(), std::max<int64_t>(0, e.job.revision() - int64_t(options.event_tail)),
               true, int(options.event_tail))) {
        e.tail_bytes += ev.ByteSizeLong();
        e.tail.push_back(std::move(ev));
      }
      while (e.tail_bytes > Limits::kTailBytes && e.tail.size() > 1) {
        e.tail_bytes -= e.tail.front().ByteSizeLong();
        e.tail.pop_front();
      }
      if (!rpc::IsTerminal(s)) {
        Change c{&e, {}, {}};
        m->AddMessage(c, "coordinator restarted; waiting " +
                             Seconds(2 * options.heartbeat_timeout) +
                             " for the workers' heartbeats");
        std::vector<Waker> wake;
        grpc::Status st = m->Commit(c, e.job, &wake);
        if (!st.ok()) return Status::Error(st.error_message());
      }
    }
    for (const WorkerTokenRecord& r : m->store_->LoadWorkerTokens())
      if (auto it = m->creds_.find(r.job_id); it != m->creds_.end())
        it->second.sha256[r.attempt].push_back(r.sha256);
  } catch (const Error& e) {
    return Status::Error(e.what());
  }
  m->monitor_ = std::thread([p = m.get()] { p->Monitor(); });
  return m;
}

JobManager::~JobManager() {
  {
    std::lock_guard<std::mutex> l(monitor_mu_);
    stopping_ = true;
  }
  monitor_cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
}

void JobManager::Monitor() {
  const auto period = std::max(std::chrono::milliseconds(20), options_.heartbeat_timeout / 10);
  std::unique_lock<std::mutex> l(monitor_mu_);
  while (!monitor_cv_.wait_for(l, period, [this] { return stopping_; })) {
    l.unlock();
    CheckLiveness();
    l.lock();
  }
}

JobManager::Entry* JobManager::Find(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : &it->second;
}

v1::WorkerInfo* JobManager::FindWorker(Entry& e, int rank) {
  for (auto& w : *e.job.mutable_workers())
    if (w.rank() == rank) return &w;
  return nullptr;
}

v1::JobEvent& JobManager::AddEvent(Change& c) {
  v1::Job& job = c.entry->job;
  v1::JobEvent& ev = c.events.emplace_back();
  ev.set_job_id(job.id());
  ev.set_revision(job.revision() + 1);
  job.set_revision(job.revision() + 1);
  ev.set_time_unix_ms(NowMs());
  ev.set_state(job.state());
  return ev;
}

void JobManager::AddMessage(Change& c, const std::string& message) {
  AddEvent(c).set_message(message);
}

void JobManager::Transition(Change& c, v1::JobState to, const std::string& reason) {
  v1::Job& job = c.entry->job;
  GROVE_CHECK(!rpc::IsTerminal(job.state())) << job.id() << " is terminal";
  v1::Transition t;
  t.set_from(job.state());
  t.set_to(to);
  t.set_reason(reason);
  t.set_time_unix_ms(NowMs());
  job.set_state(to);
  job.set_reason(reason);
  v1::JobEvent& ev = AddEvent(c);
  t.set_revision(ev.revision());
  *ev.mutable_transition() = t;
  *job.add_transitions() = t;
  if (rpc::IsTerminal(to)) c.entry->waiting_for_ranks = false;
}

void JobManager::FailOrRestart(Change& c, const std::string& reason) {
  Entry& e = *c.entry;
  v1::Job& job = e.job;
  if (job.cancel_requested()) {
    Transition(c, v1::CANCELLED,
               "cancelled (" + job.cancel_reason() + "); while stopping: " + reason);
    return;
  }
  // Attempts ended by preemption are not failures: they do not use up restarts.
  const int restarts = job.attempt() - job.preemptions();
  if (job.state() == v1::RUNNING && restarts < job.spec().max_restarts()) {
    Transition(c, v1::RESTARTING,
               reason + "; restart " + std::to_string(restarts + 1) + " of " +
                   std::to_string(job.spec().max_restarts()) + " from the last checkpoint");
    job.set_attempt(job.attempt() + 1);
    job.clear_workers();
    e.last_seen.clear();
    e.waiting_for_ranks = true;
    e.attempt_started = Clock::now();
    return;
  }
  Transition(c, v1::FAILED, reason);
}

void JobManager::Stopped(Change& c, int signal, int64_t step, bool saved) {
  Entry& e = *c.entry;
  v1::Job& job = e.job;
  std::string at = " at step " + std::to_string(step) + " after a checkpoint";
  if (!saved) {
    at = " at step " + std::to_string(step) + " before its checkpoint was written (stop grace " +
         "ran out); the last checkpoint is " +
         (job.checkpoints().empty()
              ? std::string("none (the job starts over)")
              : "step " + std::to_string(job.checkpoints(job.checkpoints_size() - 1).step()));
  }
  if (!Preemption(signal)) {
    Transition(c, v1::CANCELLED,
               "cancelled by " + SignalName(signal) + at +
                   "; continue it with `grove-launch --resume " + job.id() + "`");
    return;
  }
  Transition(c, v1::PREEMPTED,
             "preempted (" + SignalName(signal) + ")" + at +
                 "; the next launch (grove-launch --resume " + job.id() +
                 ", or a requeued Slurm job) " +
                 (saved || !job.checkpoints().empty() ? "resumes from it" : "starts over"));
  // The next launch is a new attempt, like a restart, that does not count as one.
  job.set_attempt(job.attempt() + 1);
  job.set_preemptions(job.preemptions() + 1);
  job.clear_workers();
  e.last_seen.clear();
  e.waiting_for_ranks = false;  // a preempted job may wait in a scheduler's queue for long
}

void JobManager::TouchWorker(Change& c, v1::WorkerInfo* w) {
  c.entry->last_seen[w->rank()] = Clock::now();
  w->set_last_heartbeat_unix_ms(NowMs());
  c.workers.push_back(*w);
}

grpc::Status JobManager::Commit(Change& c, const v1::Job& before, std::vector<Waker>* wake) {
  Entry& e = *c.entry;
  if (!fatal_.empty()) {
    e.job = before;
    return grpc::Status(grpc::StatusCode::DATA_LOSS, fatal_);
  }
  e.job.set_updated_unix_ms(NowMs());
  try {
    store_->Commit(e.job, c.events, c.workers);
  } catch (const Error& err) {
    e.job = before;
    if (Status gone = store_->CheckFile(); !gone.ok()) {
      fatal_ = gone.message();
      return grpc::Status(grpc::StatusCode::DATA_LOSS, fatal_);
    }
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "job database " + store_->path() + ": write failed: " + err.what());
  }
  for (const auto& ev : c.events) {
    e.tail_bytes += ev.ByteSizeLong();
    e.tail.push_back(ev);
    while (e.tail.size() > 1 &&
           (e.tail.size() > options_.event_tail || e.tail_bytes > Limits::kTailBytes)) {
      e.tail_bytes -= e.tail.front().ByteSizeLong();
      e.tail.pop_front();
    }
  }
  if (!c.events.empty()) {
    auto keep = e.waiters.begin();
    for (auto it = e.waiters.begin(); it != e.waiters.end(); ++it) {
      bool ready = false;
      for (const auto& ev : c.events)
        if (ev.revision() > it->after && (it->include_metrics || !ev.has_metric())) ready = true;
      ready |= rpc::IsTerminal(e.job.state());
      if (ready)
        wake->push_back(std::move(it->wake));
      else
        *keep++ = std::move(*it);
    }
    e.waiters.erase(keep, e.waiters.end());
  }
  return grpc::Status::OK;
}

// ---- Jobs ---------------------------------------------------------------------------------------

grpc::Status JobManager::Submit(const v1::SubmitJobRequest& req, v1::SubmitJobResponse* resp,
                                const Principal& who) {
  if (who.is_worker()) return Denied("a worker credential cannot submit jobs (use a user token)");
  if (req.request_id().size() > Limits::kIdBytes || !Printable(req.request_id()))
    return Invalid("request_id must be at most 128 printable characters without spaces");
  if (!req.has_spec()) return Invalid("spec is missing");
  const std::string owner = who.unrestricted ? std::string() : who.name;
  // A retry with the same request id and spec is the same job; another spec (or another
  // owner's request id) is ALREADY_EXISTS. Checked again under the lock that inserts the job,
  // so concurrent submits with one request id get one job and one answer per spec.
  auto existing = [&](const Entry& e) -> grpc::Status {
    if (e.job.owner() != owner ||
        !google::protobuf::util::MessageDifferencer::Equals(e.job.spec(), req.spec()))
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          "request_id '" + req.request_id() + "' was used for " +
                              (e.job.owner() == owner ? e.job.id() + " " : std::string()) +
                              "with a different spec; use a new request_id");
    *resp->mutable_job() = e.job;
    resp->set_existing(true);
    return grpc::Status::OK;
  };
  if (!req.request_id().empty()) {
    std::lock_guard<std::mutex> l(mu_);
    if (auto it = by_request_.find(req.request_id()); it != by_request_.end())
      return existing(jobs_.at(it->second));
  }
  // Validation and planning run without the lock (they do not touch shared state).
  v1::Layout layout;
  std::string resolved, out_dir;
  int64_t total_steps = 0;
  if (grpc::Status st =
          PlanJob(req.spec(), options_.paths, options_.cluster ? &*options_.cluster : nullptr,
                  &layout, &resolved, &total_steps, &out_dir);
      !st.ok())
    return st;
  if (options_.submit_planned_hook) options_.submit_planned_hook();

  std::vector<Waker> wake;
  std::unique_lock<std::mutex> l(mu_);
  if (!req.request_id().empty())
    if (auto it = by_request_.find(req.request_id()); it != by_request_.end())
      return existing(jobs_.at(it->second));  // a concurrent submit with this id won
  const int64_t number = next_number_ + 1;
  char id[32];
  std::snprintf(id, sizeof id, "job-%06lld", static_cast<long long>(number));
  Entry& e = jobs_[id];
  e.number = number;
  e.out_dir = out_dir;
  v1::Job& job = e.job;
  job.set_id(id);
  job.set_request_id(req.request_id());
  job.set_owner(owner);
  *job.mutable_spec() = req.spec();
  *job.mutable_layout() = layout;
  job.set_resolved_config_json(resolved);
  job.set_total_steps(total_steps);
  job.set_created_unix_ms(NowMs());
  Change c{&e, {}, {}};
  Transition(c, v1::PENDING,
             "submitted: " + layout.explanation() + "; waiting for " +
                 std::to_string(layout.world_size()) + " ranks to register");
  // One transaction inserts the job with its request id (a UNIQUE column).
  if (grpc::Status st = Commit(c, v1::Job(), &wake); !st.ok()) {
    jobs_.erase(id);
    return st;
  }
  next_number_ = number;
  by_number_[number] = id;
  {
    std::lock_guard<std::mutex> cl(creds_mu_);
    creds_[id].world_size = layout.world_size();
  }
  if (!req.request_id().empty()) by_request_[req.request_id()] = id;
  *resp->mutable_job() = job;
  resp->set_existing(false);
  return grpc::Status::OK;
}

grpc::Status JobManager::Get(const std::string& job_id, v1::Job* job) {
  if (grpc::Status st = CheckJobId(job_id); !st.ok()) return st;
  std::lock_guard<std::mutex> l(mu_);
  Entry* e = Find(job_id);
  if (e == nullptr) return NotFound(job_id);
  *job = e->job;
  return grpc::Status::OK;
}

grpc::Status JobManager::List(const v1::ListJobsRequest& req, v1::ListJobsResponse* resp) {
  if (req.limit() < 0 || req.limit() > Limits::kListLimit)
    return Invalid("limit must be in [0, " + std::to_string(Limits::kListLimit) + "] (0 = 100)");
  if (req.states_size() > 16) return Invalid("states: at most 16");
  int64_t before = INT64_MAX;  // page token: "n<number>", the jobs older than that number
  if (!req.page_token().empty()) {
    const std::string& t = req.page_token();
    before = t.size() > 1 && t.size() < 20 && t[0] == 'n' ? JobNumber("n-" + t.substr(1)) : 0;
    if (before <= 0) return Invalid("page_token is not one this coordinator returned");
  }
  const int limit = req.limit() == 0 ? 100 : req.limit();
  std::set<int> states(req.states().begin(), req.states().end());
  std::lock_guard<std::mutex> l(mu_);
  size_t bytes = 0;
  int64_t last = 0;
  for (auto it = std::make_reverse_iterator(by_number_.lower_bound(before));
       it != by_number_.rend(); ++it) {
    const v1::Job& job = jobs_.at(it->second).job;
    if (!states.empty() && !states.count(job.state())) continue;
    if (resp->jobs_size() >= limit) {
      resp->set_next_page_token("n" + std::to_string(last));
      break;
    }
    v1::Job j = job;
    j.clear_transitions();
    j.clear_resolved_config_json();
    j.clear_checkpoints();
    j.mutable_spec()->clear_config_json();
    const size_t size = j.ByteSizeLong();
    if (resp->jobs_size() > 0 && bytes + size > Limits::kListBytes) {
      resp->set_next_page_token("n" + std::to_string(last));
      break;
    }
    bytes += size;
    last = it->first;
    *resp->add_jobs() = std::move(j);
  }
  return grpc::Status::OK;
}

grpc::Status JobManager::Cancel(const v1::CancelJobRequest& req, v1::Job* out,
                                const Principal& who) {
  if (grpc::Status st = CheckJobId(req.job_id()); !st.ok()) return st;
  if (req.reason().size() > Limits::kReasonBytes)
    return Invalid("reason is longer than " + std::to_string(Limits::kReasonBytes) + " bytes");
  std::vector<Waker> wake;
  std::unique_lock<std::mutex> l(mu_);
  Entry* e = Find(req.job_id());
  if (e == nullptr) return NotFound(req.job_id());
  v1::Job& job = e->job;
  if (grpc::Status st = CheckManage(who, job, "cancel it"); !st.ok()) return st;
  const v1::Job before = job;
  const std::string reason = req.reason().empty() ? "requested by the user" : req.reason();
  if (job.state() == v1::CANCELLED || (job.cancel_requested() && !rpc::IsTerminal(job.state()))) {
    *out = job;  // a retried cancel
    return grpc::Status::OK;
  }
  if (rpc::IsTerminal(job.state()))
    return Precondition("job " + job.id() + " is already " + rpc::StateName(job.state()) + " (" +
                        job.reason() + "); it cannot be cancelled");
  Change c{e, {}, {}};
  bool live = false;
  for (const auto& w : job.workers()) live |= !w.exited();
  if (!live) {
    Transition(c, v1::CANCELLED, "cancelled before any worker ran: " + reason);
  } else {
    job.set_cancel_requested(true);
    job.set_cancel_reason(reason);
    AddMessage(c, "cancel requested (" + reason +
                      "): workers save a checkpoint at their next step and exit");
  }
  if (grpc::Status st = Commit(c, before, &wake); !st.ok()) return st;
  *out = job;
  l.unlock();
  for (auto& w : wake) w();
  return grpc::Status::OK;
}

grpc::Status JobManager::RequestCheckpoint(const std::string& job_id, v1::Job* out,
                                           const Principal& who) {
  if (grpc::Status st = CheckJobId(job_id); !st.ok()) return st;
  std::vector<Waker> wake;
  std::unique_lock<std::mutex> l(mu_);
  Entry* e = Find(job_id);
  if (e == nullptr) return NotFound(job_id);
  if (grpc::Status st = CheckManage(who, e->job, "request its checkpoints"); !st.ok()) return st;
  if (e->job.state() != v1::RUNNING)
    return Precondition("job " + job_id + " is " + rpc::StateName(e->job.state()) +
                        "; only a RUNNING job can checkpoint");
  const v1::Job before = e->job;
  Change c{e, {}, {}};
  e->job.set_checkpoint_seq(e->job.checkpoint_seq() + 1);
  AddMessage(c, "checkpoint #" + std::to_string(e->job.checkpoint_seq()) + " requested");
  if (grpc::Status st = Commit(c, before, &wake); !st.ok()) return st;
  *out = e->job;
  l.unlock();
  for (auto& w : wake) w();
  return grpc::Status::OK;
}

grpc::Status JobManager::Metrics(const v1::GetMetricsRequest& req, v1::GetMetricsResponse* resp) {
  if (grpc::Status st = CheckJobId(req.job_id()); !st.ok()) return st;
  if (req.limit() < 0 || req.limit() > Limits::kMetricsLimit)
    return Invalid("limit must be in [0, " + std::to_string(Limits::kMetricsLimit) +
                   "] (0 = 1000)");
  std::lock_guard<std::mutex> l(mu_);
  if (Find(req.job_id()) == nullptr) return NotFound(req.job_id());
  try {
    size_t bytes = 0;
    for (auto& m :
         store_->Metrics(req.job_id(), req.after_step(), req.limit() == 0 ? 1000 : req.limit())) {
      bytes += m.ByteSizeLong();
      if (resp->metrics_size() > 0 && bytes > Limits::kMetricsBytes) break;  // ask again after
      *resp->add_metrics() = std::move(m);
    }
  } catch (const Error& err) {
    return grpc::Status(grpc::StatusCode::INTERNAL, err.what());
  }
  return grpc::Status::OK;
}

// ---- Worker credentials -------------------------------------------------------------------------

grpc::Status JobManager::IssueWorkerToken(const v1::IssueWorkerTokenRequest& req,
                                          v1::IssueWorkerTokenResponse* resp,
                                          const Principal& who) {
  if (grpc::Status st = CheckJobId(req.job_id()); !st.ok()) return st;
  std::unique_lock<std::mutex> l(mu_);
  Entry* e = Find(req.job_id());
  if (e == nullptr) return NotFound(req.job_id());
  const v1::Job& job = e->job;
  if (grpc::Status st = CheckManage(who, job, "launch its workers"); !st.ok()) return st;
  if (rpc::IsTerminal(job.state()))
    return Precondition("job " + job.id() + " is " + rpc::StateName(job.state()) + " (" +
                        job.reason() + "); it takes no more workers");
  if (!fatal_.empty()) return grpc::Status(grpc::StatusCode::DATA_LOSS, fatal_);
  const int attempt = job.attempt();
  {
    std::lock_guard<std::mutex> cl(creds_mu_);
    if (creds_[job.id()].sha256[attempt].size() >= size_t(Limits::kWorkerTokensPerAttempt))
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "job " + job.id() + " attempt " + std::to_string(attempt) +
                              " already has " + std::to_string(Limits::kWorkerTokensPerAttempt) +
                              " worker credentials");
  }
  const std::string token = NewWorkerToken(job.id(), attempt);
  const std::string hash = Sha256Hex(token);
  try {
    store_->AddWorkerToken(WorkerTokenRecord{job.id(), attempt, hash});
  } catch (const Error& err) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "job database " + store_->path() + ": write failed: " + err.what());
  }
  {
    std::lock_guard<std::mutex> cl(creds_mu_);
    creds_[job.id()].sha256[attempt].push_back(hash);
  }
  resp->set_job_id(job.id());
  resp->set_attempt(attempt);
  resp->set_worker_token(token);
  return grpc::Status::OK;
}

grpc::Status JobManager::AuthorizeWorker(const Principal& who, const std::string& job_id,
                                         int attempt) {
  if (who.unrestricted) return grpc::Status::OK;
  if (who.role != Role::kWorker)
    return Denied("'" + who.name +
                  "' holds a user token; worker calls need the job's worker credential "
                  "(GROVE_WORKER_TOKEN, issued to the launcher by IssueWorkerToken / `grove "
                  "worker-token JOB`)");
  if (who.job_id != job_id)
    return Denied("this worker credential is for job " + who.job_id + ", not " + job_id);
  if (attempt >= 0 && attempt != who.attempt)
    return Denied("this worker credential is for attempt " + std::to_string(who.attempt) +
                  " of job " + job_id + ", not attempt " + std::to_string(attempt));
  const std::string hash = Sha256Hex(who.token);
  std::lock_guard<std::mutex> cl(creds_mu_);
  auto it = creds_.find(job_id);
  bool known = false;
  if (it != creds_.end())
    if (auto a = it->second.sha256.find(who.attempt); a != it->second.sha256.end())
      for (const auto& h : a->second) known |= SecretEquals(hash, h);
  if (!known)
    return Denied("this worker credential was not issued by this coordinator for job " + job_id +
                  " attempt " + std::to_string(who.attempt));
  return grpc::Status::OK;
}

JobManager::HeartbeatInFlight::HeartbeatInFlight(JobManager* m, std::string job_id, int attempt,
                                                 int rank)
    : m_(m), job_id_(std::move(job_id)), attempt_(attempt), rank_(rank) {
  std::lock_guard<std::mutex> cl(m_->creds_mu_);
  auto it = m_->creds_.find(job_id_);
  if (it == m_->creds_.end() || rank_ < 0 || rank_ >= it->second.world_size) {
    m_ = nullptr;  // not a rank of a known job: nothing to note
    return;
  }
  JobCredentials::Heard& h = it->second.heard[rank_];
  if (h.attempt != attempt_) h = JobCredentials::Heard{attempt_, {}, 0};
  h.time = std::max(h.time, Clock::now());
  ++h.in_flight;
}

JobManager::HeartbeatInFlight::~HeartbeatInFlight() {
  if (m_ == nullptr) return;
  std::lock_guard<std::mutex> cl(m_->creds_mu_);
  auto it = m_->creds_.find(job_id_);
  if (it == m_->creds_.end()) return;
  JobCredentials::Heard& h = it->second.heard[rank_];
  if (h.attempt != attempt_) return;
  h.time = std::max(h.time, Clock::now());  // the worker's silence starts with our answer
  --h.in_flight;
}

JobManager::Clock::time_point JobManager::LastHeard(const Entry& e, int rank,
                                                    Clock::time_point now) const {
  Clock::time_point t{};
  if (auto it = e.last_seen.find(rank); it != e.last_seen.end()) t = it->second;
  std::lock_guard<std::mutex> cl(creds_mu_);
  if (auto c = creds_.find(e.job.id()); c != creds_.end())
    if (auto h = c->second.heard.find(rank);
        h != c->second.heard.end() && h->second.attempt == e.job.attempt()) {
      if (h->second.in_flight > 0) return now;
      t = std::max(t, h->second.time);
    }
  return t;
}

std::string JobManager::fatal_error() {
  std::lock_guard<std::mutex> l(mu_);
  return fatal_;
}

// ---- Workers ------------------------------------------------------------------------------------

grpc::Status JobManager::Register(const v1::RegisterWorkerRequest& req,
                                  v1::RegisterWorkerResponse* resp, const Principal& who) {
  if (grpc::Status st = CheckJobId(req.job_id()); !st.ok()) return st;
  if (req.world_size() < 1 || req.world_size() > Limits::kWorldSize)
    return Invalid("world_size must be in [1, " + std::to_string(Limits::kWorldSize) + "]");
  if (req.rank() < 0 || req.rank() >= req.world_size())
    return Invalid("rank=" + std::to_string(req.rank()) +
                   " is outside [0, world_size=" + std::to_string(req.world_size()) + ")");
  if (req.host().empty() || req.host().size() > Limits::kHostBytes)
    return Invalid("host must be 1-255 bytes");
  if (req.devices().size() > Limits::kDevicesBytes)
    return Invalid("devices is longer than 1024 bytes");
  if (grpc::Status st = AuthorizeWorker(who, req.job_id(), -1); !st.ok()) return st;
  std::vector<Waker> wake;
  std::unique_lock<std::mutex> l(mu_);
  Entry* e = Find(req.job_id());
  if (e == nullptr) return NotFound(req.job_id());
  v1::Job& job = e->job;
  if (!who.unrestricted && who.attempt != job.attempt())
    return Precondition("this worker credential is for attempt " + std::to_string(who.attempt) +
                        " of job " + job.id() + ", which is at attempt " +
                        std::to_string(job.attempt()) +
                        "; the launcher issues a new one for each attempt");
  if (rpc::IsTerminal(job.state()))
    return Precondition("job " + job.id() + " is " + rpc::StateName(job.state()) + " (" +
                        job.reason() + "); it takes no more workers");
  if (job.cancel_requested())
    return Precondition("job " + job.id() + " is being cancelled; it takes no more workers");
  if (req.world_size() != job.layout().world_size())
    return Precondition("job " + job.id() +
                        " was planned for world_size=" + std::to_string(job.layout().world_size()) +
                        " but this worker runs in a world of " + std::to_string(req.world_size()) +
                        " (mpirun -np " + std::to_string(job.layout().world_size()) + ")");
  if (const v1::WorkerInfo* w = FindWorker(*e, req.rank()))
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        "rank " + std::to_string(req.rank()) + " of job " + job.id() +
                            " is already registered (host " + w->host() + ", pid " +
                            std::to_string(w->pid()) + ", attempt " +
                            std::to_string(job.attempt()) + "); a rank registers once per attempt");

  const v1::Job before = job;
  Change c{e, {}, {}};
  if (job.workers_size() == 0) {
    e->waiting_for_ranks = true;
    e->attempt_started = Clock::now();
  }
  v1::WorkerInfo* w = job.add_workers();
  w->set_rank(req.rank());
  w->set_host(req.host());
  w->set_pid(req.pid());
  w->set_devices(req.devices());
  w->set_attempt(job.attempt());
  w->set_registered_unix_ms(NowMs());
  TouchWorker(c, w);
  std::sort(job.mutable_workers()->begin(), job.mutable_workers()->end(),
            [](const v1::WorkerInfo& a, const v1::WorkerInfo& b) { return a.rank() < b.rank(); });
  const int world = job.layout().world_size();
  AddMessage(c, "rank " + std::to_string(req.rank()) + " registered from " + req.host() + " (pid " +
                    std::to_string(req.pid()) + ", " + req.devices() + "), " +
                    std::to_string(job.workers_size()) + " of " + std::to_string(world));
  if (job.workers_size() == world) {
    // Ranks on the same host should share a TP group (the planner made tp divide ranks per host).
    const int tp = job.layout().tp();
    for (int g = 0; g < world / tp; ++g) {
      std::set<std::string> hosts;
      for (int r = g * tp; r < (g + 1) * tp; ++r) hosts.insert(job.workers(r).host());
      if (hosts.size() > 1)
        AddMessage(c, "warning: the tp group of ranks " + std::to_string(g * tp) + "-" +
                          std::to_string((g + 1) * tp - 1) +
                          " spans several hosts; place ranks by slot so TP stays on one host");
    }
    e->waiting_for_ranks = false;
    Transition(c, v1::RUNNING,
               "all " + std::to_string(world) + " ranks registered (attempt " +
                   std::to_string(job.attempt()) + ")");
  }
  if (grpc::Status st = Commit(c, before, &wake); !st.ok()) return st;

  resp->set_job_id(job.id());
  resp->set_attempt(job.attempt());
  *resp->mutable_layout() = job.layout();
  const Coords co = RankCoords(PlanFromLayout(job.layout()), req.rank());
  auto* gc = resp->mutable_coords();
  gc->set_tp(co.tp);
  gc->set_cp(co.cp);
  gc->set_dp(co.dp);
  gc->set_ep(co.ep);
  gc->set_edp(co.edp);
  resp->set_config_json(job.resolved_config_json());
  resp->set_resume(job.attempt() > 0 || job.spec().resume());
  resp->set_heartbeat_interval_ms(options_.heartbeat_interval.count());
  resp->set_heartbeat_timeout_ms(options_.heartbeat_timeout.count());
  for (const auto& wk : job.workers()) {
    auto* p = resp->add_peers();
    p->set_rank(wk.rank());
    p->set_host(wk.host());
  }
  l.unlock();
  for (auto& fn : wake) fn();
  return grpc::Status::OK;
}

grpc::Status JobManager::Heartbeat(const v1::HeartbeatRequest& req, v1::HeartbeatResponse* resp,
                                   const Principal& who) {
  if (grpc::Status st = CheckHeartbeatLimits(req); !st.ok()) return st;
  if (grpc::Status st = AuthorizeWorker(who, req.job_id(), req.attempt()); !st.ok()) return st;
  // Noted before the manager's lock: a heartbeat waiting for a slow handler still counts, and
  // its worker is not silent until it has its answer.
  HeartbeatInFlight in_flight(this, req.job_id(), req.attempt(), req.rank());
  std::vector<Waker> wake;
  std::unique_lock<std::mutex> l(mu_);
  Entry* e = Find(req.job_id());
  if (e == nullptr) return NotFound(req.job_id());
  v1::Job& job = e->job;
  if (req.attempt() != job.attempt()) {
    resp->set_action(v1::ACTION_ABORT);
    resp->set_reason("attempt " + std::to_string(req.attempt()) + " of job " + job.id() +
                     " is over (" + rpc::StateName(job.state()) + ": " + job.reason() + ")");
    return grpc::Status::OK;
  }
  if (job.state() == v1::FAILED || job.state() == v1::CANCELLED) {
    resp->set_action(v1::ACTION_ABORT);
    resp->set_reason("job " + job.id() + " is " + rpc::StateName(job.state()) + ": " +
                     job.reason());
    return grpc::Status::OK;
  }
  v1::WorkerInfo* w = FindWorker(*e, req.rank());
  if (w == nullptr)
    return Precondition("rank " + std::to_string(req.rank()) + " is not registered for job " +
                        job.id() + " (attempt " + std::to_string(job.attempt()) + ")");
  if (w->exited())
    return Precondition("rank " + std::to_string(req.rank()) + " of job " + job.id() +
                        " already reported its exit");
  // Figures must fit the job: steps within train.steps, checkpoints inside its out_dir.
  if (req.step() > job.total_steps())
    return Invalid("step " + std::to_string(req.step()) +
                   " is past train.steps=" + std::to_string(job.total_steps()));
  for (int i = 0; i < req.metrics_size(); ++i)
    if (req.metrics(i).step() > job.total_steps())
      return Invalid("metrics[" + std::to_string(i) + "].step " +
                     std::to_string(req.metrics(i).step()) +
                     " is past train.steps=" + std::to_string(job.total_steps()));
  for (int i = 0; i < req.checkpoints_size(); ++i) {
    const std::string path =
        std::filesystem::path(req.checkpoints(i).path()).lexically_normal().string();
    if (req.checkpoints(i).step() > job.total_steps() ||
        (!e->out_dir.empty() && (!PathInside(path, e->out_dir) || path == e->out_dir)))
      return Invalid("checkpoints[" + std::to_string(i) + "]: '" + req.checkpoints(i).path() +
                     "' at step " + std::to_string(req.checkpoints(i).step()) +
                     " is not a checkpoint of this job (inside out_dir " + e->out_dir +
                     ", step <= " + std::to_string(job.total_steps()) + ")");
  }
  const v1::Job before = job;
  Change c{e, {}, {}};
  w->set_step(req.step());
  w->set_memory_bytes(req.memory_bytes());
  w->set_peak_memory_bytes(std::max(w->peak_memory_bytes(), req.memory_bytes()));
  if (req.has_device_memory_bytes())
    w->set_device_memory_bytes(req.device_memory_bytes());
  else
    w->clear_device_memory_bytes();
  TouchWorker(c, w);
  RecordMemory(*e, req, w->last_heartbeat_unix_ms());
  for (const auto& m : req.metrics()) {
    v1::JobEvent& ev = AddEvent(c);
    *ev.mutable_metric() = m;
    ev.mutable_metric()->set_rank(req.rank());
    if (m.time_unix_ms() == 0) ev.mutable_metric()->set_time_unix_ms(ev.time_unix_ms());
    if (m.step() >= job.last_step()) {
      job.set_last_step(m.step());
      job.set_last_loss(m.loss());
      job.set_tokens_per_s(m.tokens_per_s());
      if (m.step_ms() > 0) job.set_last_step_ms(m.step_ms());
      if (m.has_val_loss()) job.set_last_val_loss(m.val_loss());
      if (m.has_a2a_bytes_sent()) job.set_last_a2a_bytes_sent(m.a2a_bytes_sent());
      if (m.has_a2a_bytes_uncompressed())
        job.set_last_a2a_bytes_uncompressed(m.a2a_bytes_uncompressed());
      if (m.has_mfu()) job.set_last_mfu(m.mfu());
    }
  }
  for (const auto& ck : req.checkpoints()) {
    // A retried report repeats a recent record: compare with the newest few (bounded work).
    bool known = false;
    const int n = job.checkpoints_size();
    for (int i = std::max(0, n - 2 * Limits::kCheckpointsPerHeartbeat); i < n && !known; ++i)
      known = job.checkpoints(i).step() == ck.step() && job.checkpoints(i).path() == ck.path();
    if (known) continue;
    v1::CheckpointRecord* rec = job.add_checkpoints();
    *rec = ck;
    rec->set_path(std::filesystem::path(ck.path()).lexically_normal().string());
    if (rec->time_unix_ms() == 0) rec->set_time_unix_ms(NowMs());
    AddMessage(c, "checkpoint at step " + std::to_string(ck.step()) + ": " + rec->path());
  }
  if (size_t(job.checkpoints_size()) > Limits::kCheckpointsKept)  // older ones stay in the log
    job.mutable_checkpoints()->DeleteSubrange(
        0, job.checkpoints_size() - int(Limits::kCheckpointsKept));
  if (grpc::Status st = Commit(c, before, &wake); !st.ok()) return st;
  if (job.cancel_requested()) {
    resp->set_action(v1::ACTION_STOP);
    resp->set_reason("job cancelled: " + job.cancel_reason());
  } else if (job.checkpoint_seq() > 0) {
    resp->set_action(v1::ACTION_CHECKPOINT);
    resp->set_reason("checkpoint requested");
  }
  resp->set_checkpoint_seq(job.checkpoint_seq());
  l.unlock();
  for (auto& fn : wake) fn();
  return grpc::Status::OK;
}

grpc::Status JobManager::ReportExit(const v1::ReportExitRequest& req, v1::ReportExitResponse* resp,
                                    const Principal& who) {
  if (grpc::Status st = CheckJobId(req.job_id()); !st.ok()) return st;
  if (req.message().size() > Limits::kExitMessageBytes)
    return Invalid("message is longer than " + std::to_string(Limits::kExitMessageBytes) +
                   " bytes");
  if (req.final_step() < 0) return Invalid("final_step must be >= 0");
  if (grpc::Status st = AuthorizeWorker(who, req.job_id(), req.attempt()); !st.ok()) return st;
  std::vector<Waker> wake;
  std::unique_lock<std::mutex> l(mu_);
  Entry* e = Find(req.job_id());
  if (e == nullptr) return NotFound(req.job_id());
  v1::Job& job = e->job;
  resp->set_state(job.state());
  if (req.attempt() != job.attempt()) return grpc::Status::OK;  // an attempt that is over
  const bool live_state = !rpc::IsTerminal(job.state()) && job.state() != v1::RESTARTING &&
                          job.state() != v1::PREEMPTED;
  // A launcher's report says how the process ended, as mpirun/srun saw it.
  const std::string how = req.exit_signal() != 0
                              ? "was killed by signal " + std::to_string(req.exit_signal()) + " (" +
                                    SignalName(req.exit_signal()) + ")"
                              : "exited with code " + std::to_string(req.exit_code());
  v1::WorkerInfo* w = FindWorker(*e, req.rank());
  if (w == nullptr && req.from_launcher()) {
    // A rank that ended before it registered: the job cannot start this attempt.
    if (!live_state) return grpc::Status::OK;
    const v1::Job before = job;
    Change c{e, {}, {}};
    FailOrRestart(c, "rank " + std::to_string(req.rank()) + " (host " + req.host() +
                         (req.pid() ? ", pid " + std::to_string(req.pid()) : "") + ") " + how +
                         " before registering (reported by the launcher)" +
                         (req.message().empty() ? "" : ": " + req.message()));
    if (grpc::Status st = Commit(c, before, &wake); !st.ok()) return st;
    resp->set_state(job.state());
    l.unlock();
    for (auto& fn : wake) fn();
    return grpc::Status::OK;
  }
  if (w == nullptr)
    return Precondition("rank " + std::to_string(req.rank()) + " is not registered for job " +
                        job.id() + " (attempt " + std::to_string(job.attempt()) + ")");
  if (w->exited()) return grpc::Status::OK;  // a retried report, or the launcher's after the rank's
  if (req.from_launcher() && req.pid() != 0 && req.pid() != w->pid())
    return grpc::Status::OK;  // about another process than the one registered
  const v1::Job before = job;
  Change c{e, {}, {}};
  w->set_exited(true);
  w->set_exit_code(req.exit_code());
  w->set_exit_message(req.message());
  w->set_stop_signal(req.stop_signal());
  w->set_exit_signal(req.exit_signal());
  if (!req.from_launcher()) w->set_step(req.final_step());
  TouchWorker(c, w);
  e->last_seen.erase(req.rank());
  const std::string what = req.from_launcher()
                               ? DescribeWorker(*w) + " " + how + " at step " +
                                     std::to_string(w->step()) + " (reported by the launcher)"
                               : DescribeWorker(*w) + " exited with code " +
                                     std::to_string(req.exit_code()) + " at step " +
                                     std::to_string(req.final_step());
  AddMessage(c, what + (req.message().empty() ? "" : ": " + req.message()));
  if (live_state && !req.from_launcher() && req.stop_signal() != 0 && req.checkpoint_missed() &&
      !job.cancel_requested()) {
    // A rank ran out of its stop grace: the stop is not a failure of the job, but no rank of
    // this attempt will save; the others may be blocked or about to exit the same way.
    Stopped(c, req.stop_signal(), req.final_step(), /*saved=*/false);
  } else if (live_state) {
    if ((req.exit_code() != 0 || req.exit_signal() != 0) && !job.cancel_requested()) {
      FailOrRestart(c, what + (req.message().empty() ? "" : ": " + req.message()));
    } else {
      bool all = job.workers_size() == job.layout().world_size();
      int64_t min_step = INT64_MAX;
      bool clean = true;
      int stop_signal = 0;  // a cancel (SIGINT/SIGUSR2) outweighs a preemption
      for (const auto& wk : job.workers()) {
        all &= wk.exited();
        min_step = std::min(min_step, wk.step());
        clean &= wk.exit_code() == 0;
        if (wk.stop_signal() != 0 && (stop_signal == 0 || !Preemption(wk.stop_signal())))
          stop_signal = wk.stop_signal();
      }
      if (all) {
        if (job.cancel_requested())
          Transition(c, v1::CANCELLED,
                     "cancelled (" + job.cancel_reason() + "); workers stopped at step " +
                         std::to_string(min_step) + " after a final checkpoint");
        else if (clean && min_step >= job.total_steps())
          Transition(c, v1::SUCCEEDED,
                     "all " + std::to_string(job.workers_size()) + " ranks finished step " +
                         std::to_string(min_step));
        else if (clean && stop_signal != 0)
          Stopped(c, stop_signal, min_step);
        else
          Transition(c, v1::FAILED,
                     "the workers exited at step " + std::to_string(min_step) +
                         " before train.steps=" + std::to_string(job.total_steps()));
      }
    }
  }
  if (grpc::Status st = Commit(c, before, &wake); !st.ok()) return st;
  resp->set_state(job.state());
  l.unlock();
  for (auto& fn : wake) fn();
  return grpc::Status::OK;
}

void JobManager::RecordMemory(Entry& e, const v1::HeartbeatRequest& req, int64_t now_ms) {
  Entry::MemoryTrack& t = e.memory[req.rank()];
  if (!t.samples.empty() && now_ms - t.samples.back().time_unix_ms < t.spacing_ms) return;
  if (t.samples.size() >= kMemorySamples) {
    size_t keep = 0;
    for (size_t i = 0; i < t.samples.size(); i += 2) t.samples[keep++] = t.samples[i];
    t.samples.resize(keep);
    t.spacing_ms = std::max<int64_t>(2 * t.spacing_ms, options_.heartbeat_interval.count());
  }
  t.samples.push_back(MemorySample{
      now_ms, req.memory_bytes(),
      req.has_device_memory_bytes() ? int64_t(req.device_memory_bytes()) : int64_t(-1)});
}

grpc::Status JobManager::MemoryHistory(const std::string& job_id,
                                       std::map<int, std::vector<MemorySample>>* out) {
  std::lock_guard<std::mutex> l(mu_);
  Entry* e = Find(job_id);
  if (e == nullptr) return NotFound(job_id);
  out->clear();
  for (const auto& [rank, track] : e->memory) (*out)[rank] = track.samples;
  return grpc::Status::OK;
}

// ---- Liveness -----------------------------------------------------------------------------------

void JobManager::CheckLiveness() {
  std::vector<Waker> wake;
  {
    // The time is taken before the lock: waiting for a slow handler does not add to anyone's
    // silence, and heartbeats that arrived meanwhile were noted (NoteArrival) before it.
    const auto now = Clock::now();
    std::lock_guard<std::mutex> l(mu_);
    if (fatal_.empty())
      if (Status st = store_->CheckFile(); !st.ok()) {
        fatal_ = st.message();
        std::fprintf(stderr, "grove-coordinator: error: %s\n", fatal_.c_str());
      }
    // A monitor that itself did not run for half a timeout (the process was stopped or starved)
    // cannot tell silent workers from its own stall: everyone gets a fresh timeout instead.
    const bool stalled =
        last_pass_ != Clock::time_point{} && now - last_pass_ > options_.heartbeat_timeout / 2;
    last_pass_ = now;
    const int64_t now_ms = NowMs();
    for (auto& [id, e] : jobs_) {
      v1::Job& job = e.job;
      if (rpc::IsTerminal(job.state())) continue;
      const v1::Job before = job;
      Change c{&e, {}, {}};
      for (const auto& w : job.workers()) {
        if (w.exited() || !e.last_seen.count(w.rank())) continue;
        if (stalled) {
          e.last_seen[w.rank()] = now;
          continue;
        }
        const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(
            now - LastHeard(e, w.rank(), now));
        if (silent > options_.heartbeat_timeout) {
          FailOrRestart(c, DescribeWorker(w) + " sent no heartbeat for " + Seconds(silent) +
                               " (timeout " + Seconds(options_.heartbeat_timeout) + ")");
          break;
        }
      }
      if (c.events.empty() && e.waiting_for_ranks &&
          now - e.attempt_started > options_.registration_timeout) {
        Transition(c, v1::FAILED,
                   "only " + std::to_string(job.workers_size()) + " of " +
                       std::to_string(job.layout().world_size()) + " ranks registered within " +
                       Seconds(options_.registration_timeout) +
                       (job.attempt() > 0 ? " after the restart" : ""));
      }
      if (c.events.empty() && job.state() == v1::PENDING && job.workers_size() == 0 &&
          now_ms - job.created_unix_ms() > options_.pending_timeout.count()) {
        Transition(c, v1::FAILED,
                   "no worker registered within " + Seconds(options_.pending_timeout) +
                       " of the submit (--pending-timeout); submit it again when it can run");
      }
      if (!c.events.empty()) {
        grpc::Status st = Commit(c, before, &wake);
        if (!st.ok()) std::fprintf(stderr, "grove-coordinator: %s\n", st.error_message().c_str());
      }
    }
  }
  for (auto& fn : wake) fn();
}

// ---- Watch --------------------------------------------------------------------------------------

grpc::Status JobManager::Events(const std::string& job_id, int64_t after, bool include_metrics,
                                int limit, std::vector<v1::JobEvent>* out, int64_t* next_after,
                                bool* terminal) {
  std::lock_guard<std::mutex> l(mu_);
  Entry* e = Find(job_id);
  if (e == nullptr) return NotFound(job_id);
  *terminal = rpc::IsTerminal(e->job.state());
  *next_after = std::max(after, e->job.revision());
  if (after >= e->job.revision()) return grpc::Status::OK;
  if (!e->tail.empty() && e->tail.front().revision() <= after + 1) {
    for (const auto& ev : e->tail) {
      if (ev.revision() <= after || (!include_metrics && ev.has_metric())) continue;
      if (int(out->size()) >= limit) {
        *next_after = out->back().revision();
        break;
      }
      out->push_back(ev);
    }
    return grpc::Status::OK;
  }
  try {
    *out = store_->Events(job_id, after, include_metrics, limit);
  } catch (const Error& err) {
    return grpc::Status(grpc::StatusCode::INTERNAL, err.what());
  }
  // Every committed event is in the store, so a short page means all were scanned.
  if (int(out->size()) >= limit) *next_after = out->back().revision();
  return grpc::Status::OK;
}

uint64_t JobManager::WaitForEvents(const std::string& job_id, int64_t after, bool include_metrics,
                                   Waker wake) {
  std::lock_guard<std::mutex> l(mu_);
  Entry* e = Find(job_id);
  if (e == nullptr || rpc::IsTerminal(e->job.state()) || after < e->job.revision()) return 0;
  const uint64_t id = next_waiter_++;
  e->waiters.push_back(Waiter{id, after, include_metrics, std::move(wake)});
  return id;
}

void JobManager::CancelWait(const std::string& job_id, uint64_t waiter) {
  std::lock_guard<std::mutex> l(mu_);
  Entry* e = Find(job_id);
  if (e == nullptr) return;
  std::erase_if(e->waiters, [&](const Waiter& w) { return w.id == waiter; });
}

}  // namespace grove::coordinator
