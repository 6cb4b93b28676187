// JobManager: the job state machine, liveness, restarts, cancellation and persistence, driven
// in process (no network) against a real SQLite file.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "coordinator/job_manager.h"
#include "tests/coordinator/test_util.h"

namespace grove::coordinator {
namespace {

namespace v1 = grove::v1;
using std::chrono::milliseconds;
using testing::TempDir;
using testing::TinySpec;

std::unique_ptr<JobManager> Open(const std::string& db, ManagerOptions o = {}) {
  auto store = JobStore::Open(db);
  EXPECT_TRUE(store.ok()) << store.status().message();
  auto m = JobManager::Create(std::move(store).value(), o);
  EXPECT_TRUE(m.ok()) << m.status().message();
  return std::move(m).value();
}

v1::Job Submit(JobManager& m, v1::JobSpec spec, const std::string& request_id = "") {
  v1::SubmitJobRequest req;
  req.set_request_id(request_id);
  *req.mutable_spec() = spec;
  v1::SubmitJobResponse resp;
  grpc::Status st = m.Submit(req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return resp.job();
}

grpc::Status Register(JobManager& m, const std::string& job, int rank, int world,
                      v1::RegisterWorkerResponse* resp = nullptr) {
  v1::RegisterWorkerRequest req;
  req.set_job_id(job);
  req.set_rank(rank);
  req.set_world_size(world);
  req.set_host("localhost");
  req.set_pid(1000 + rank);
  req.set_devices("cpu");
  v1::RegisterWorkerResponse local;
  return m.Register(req, resp ? resp : &local);
}

v1::HeartbeatResponse Beat(JobManager& m, const std::string& job, int rank, int64_t step,
                           int attempt = 0, bool with_metric = false) {
  v1::HeartbeatRequest req;
  req.set_job_id(job);
  req.set_rank(rank);
  req.set_attempt(attempt);
  req.set_step(step);
  if (with_metric) {
    auto* mt = req.add_metrics();
    mt->set_step(step);
    mt->set_loss(5.0f - 0.1f * float(step));
    mt->set_tokens_per_s(1000);
  }
  v1::HeartbeatResponse resp;
  grpc::Status st = m.Heartbeat(req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return resp;
}

v1::JobState Exit(JobManager& m, const std::string& job, int rank, int code, int64_t step,
                  int attempt = 0) {
  v1::ReportExitRequest req;
  req.set_job_id(job);
  req.set_rank(rank);
  req.set_attempt(attempt);
  req.set_exit_code(code);
  req.set_final_step(step);
  req.set_message(code ? "boom" : "");
  v1::ReportExitResponse resp;
  grpc::Status st = m.ReportExit(req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return resp.state();
}

v1::Job Get(JobManager& m, const std::string& id) {
  v1::Job j;
  EXPECT_TRUE(m.Get(id, &j).ok());
  return j;
}

std::vector<v1::JobEvent> AllEvents(JobManager& m, const std::string& id) {
  std::vector<v1::JobEvent> out;
  int64_t next = 0;
  bool terminal = false;
  EXPECT_TRUE(m.Events(id, 0, true, 100000, &out, &next, &terminal).ok());
  return out;
}

TEST(JobManager, SubmitIsIdempotentPerRequestId) {
  TempDir dir;
  auto m = Open(dir.file("db"));
  v1::Job a = Submit(*m, TinySpec(2), "req-1");
  v1::SubmitJobRequest again;
  again.set_request_id("req-1");
  *again.mutable_spec() = TinySpec(2);
  v1::SubmitJobResponse resp;
  ASSERT_TRUE(m->Submit(again, &resp).ok());
  EXPECT_TRUE(resp.existing());
  EXPECT_EQ(resp.job().id(), a.id());
  *again.mutable_spec() = TinySpec(4);
  grpc::Status st = m->Submit(again, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(st.error_message().find(a.id()), std::string::npos);
  v1::Job b = Submit(*m, TinySpec(2));
  EXPECT_NE(b.id(), a.id());
  v1::ListJobsResponse list;
  ASSERT_TRUE(m->List({}, &list).ok());
  EXPECT_EQ(list.jobs_size(), 2);
  EXPECT_EQ(a.state(), v1::PENDING);
  ASSERT_EQ(a.transitions_size(), 1);
  EXPECT_EQ(a.transitions(0).to(), v1::PENDING);
}

TEST(JobManager, BadSpecsNameTheField) {
  TempDir dir;
  auto m = Open(dir.file("db"));
  auto submit = [&](v1::JobSpec spec) {
    v1::SubmitJobRequest req;
    *req.mutable_spec() = spec;
    v1::SubmitJobResponse resp;
    return m->Submit(req, &resp);
  };
  struct Case {
    std::function<void(v1::JobSpec&)> edit;
    std::string field;
  };
  std::vector<Case> cases = {
      {[](v1::JobSpec& s) { s.set_config_json("{not json"); }, "spec.config_json"},
      {[](v1::JobSpec& s) { s.set_config_json(""); }, "spec.config_json"},
      {[](v1::JobSpec& s) { s.set_config_json(R"({"train": {"batch_size": 0}})"); },
       "train.batch_size"},
      {[](v1::JobSpec& s) { s.set_config_json(R"({"train": {"lrr": 1}})"); }, "train.lrr"},
      {[](v1::JobSpec& s) { s.mutable_parallel()->set_world_size(0); }, "spec.parallel.world_size"},
      {[](v1::JobSpec& s) { s.mutable_parallel()->set_tp(3); }, "spec.parallel.tp=3"},
      {[](v1::JobSpec& s) { s.mutable_parallel()->set_recompute("most"); },
       "spec.parallel.recompute"},
      {[](v1::JobSpec& s) { s.mutable_parallel()->set_device_memory_gib(-1); },
       "spec.parallel.device_memory_gib"},
      {[](v1::JobSpec& s) { s.mutable_parallel()->set_device_memory_gib(1e-6); },
       "per device at tp=1"},
      {[](v1::JobSpec& s) { s.set_max_restarts(-1); }, "spec.max_restarts"},
  };
  for (auto& c : cases) {
    v1::JobSpec spec = TinySpec(2);
    c.edit(spec);
    grpc::Status st = submit(spec);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_NE(st.error_message().find(c.field), std::string::npos)
        << "want '" << c.field << "' in: " << st.error_message();
  }
  v1::ListJobsResponse list;
  ASSERT_TRUE(m->List({}, &list).ok());
  EXPECT_EQ(list.jobs_size(), 0) << "a rejected spec must not create a job";
}

TEST(JobManager, RegistrationErrorsAndRunToSuccess) {
  TempDir dir;
  auto m = Open(dir.file("db"));
  v1::Job job = Submit(*m, TinySpec(2, 3));
  EXPECT_EQ(Register(*m, "job-999999", 0, 2).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::Status st = Register(*m, job.id(), 0, 4);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("world_size=2"), std::string::npos) << st.error_message();
  EXPECT_EQ(Register(*m, job.id(), 2, 2).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::RegisterWorkerResponse r0;
  ASSERT_TRUE(Register(*m, job.id(), 0, 2, &r0).ok());
  EXPECT_EQ(Get(*m, job.id()).state(), v1::PENDING);
  st = Register(*m, job.id(), 0, 2);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(st.error_message().find("already registered"), std::string::npos);
  v1::RegisterWorkerResponse r1;
  ASSERT_TRUE(Register(*m, job.id(), 1, 2, &r1).ok());
  EXPECT_EQ(Get(*m, job.id()).state(), v1::RUNNING);
  EXPECT_EQ(r1.coords().dp(), 1);
  EXPECT_EQ(r0.coords().dp(), 0);
  EXPECT_FALSE(r1.resume());
  EXPECT_NE(r1.config_json().find("\"recompute\""), std::string::npos);

  for (int step = 1; step <= 3; ++step) {
    EXPECT_EQ(Beat(*m, job.id(), 0, step, 0, true).action(), v1::ACTION_CONTINUE);
    EXPECT_EQ(Beat(*m, job.id(), 1, step).action(), v1::ACTION_CONTINUE);
  }
  EXPECT_EQ(Exit(*m, job.id(), 1, 0, 3), v1::RUNNING);
  EXPECT_EQ(Exit(*m, job.id(), 0, 0, 3), v1::SUCCEEDED);
  EXPECT_EQ(Exit(*m, job.id(), 0, 0, 3), v1::SUCCEEDED) << "a retried exit report is harmless";
  v1::Job done = Get(*m, job.id());
  EXPECT_EQ(done.last_step(), 3);
  EXPECT_FLOAT_EQ(done.last_loss(), 4.7f);
  ASSERT_EQ(done.transitions_size(), 3);
  EXPECT_EQ(done.transitions(2).to(), v1::SUCCEEDED);
  v1::GetMetricsRequest mreq;
  mreq.set_job_id(job.id());
  v1::GetMetricsResponse metrics;
  ASSERT_TRUE(m->Metrics(mreq, &metrics).ok());
  ASSERT_EQ(metrics.metrics_size(), 3);
  EXPECT_EQ(metrics.metrics(2).step(), 3);
  // Revisions are 1..N without gaps, and the job's revision is the last one.
  auto events = AllEvents(*m, job.id());
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].revision(), int64_t(i + 1));
  EXPECT_EQ(done.revision(), int64_t(events.size()));
  // Terminal: no more workers, no cancel.
  EXPECT_EQ(Register(*m, job.id(), 0, 2).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  v1::CancelJobRequest creq;
  creq.set_job_id(job.id());
  v1::Job out;
  EXPECT_EQ(m->Cancel(creq, &out).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Get(*m, job.id()).state(), v1::SUCCEEDED);
}

TEST(JobManager, SilentWorkerFailsTheJobAndOthersAreToldToStop) {
  TempDir dir;
  ManagerOptions o;
  o.heartbeat_timeout = milliseconds(300);
  auto m = Open(dir.file("db"), o);
  v1::Job job = Submit(*m, TinySpec(2));
  ASSERT_TRUE(Register(*m, job.id(), 0, 2).ok());
  ASSERT_TRUE(Register(*m, job.id(), 1, 2).ok());
  const auto start = std::chrono::steady_clock::now();
  while (Get(*m, job.id()).state() == v1::RUNNING &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    Beat(*m, job.id(), 0, 1);  // rank 1 stays silent
    std::this_thread::sleep_for(milliseconds(50));
  }
  v1::Job failed = Get(*m, job.id());
  EXPECT_EQ(failed.state(), v1::FAILED);
  EXPECT_NE(failed.reason().find("rank 1"), std::string::npos) << failed.reason();
  EXPECT_NE(failed.reason().find("no heartbeat"), std::string::npos) << failed.reason();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  v1::HeartbeatResponse r = Beat(*m, job.id(), 0, 2);
  EXPECT_EQ(r.action(), v1::ACTION_ABORT);
  EXPECT_NE(r.reason().find("rank 1"), std::string::npos);
}

TEST(JobManager, FailureRestartsThenFails) {
  TempDir dir;
  auto m = Open(dir.file("db"));
  v1::JobSpec spec = TinySpec(2);
  spec.set_max_restarts(1);
  v1::Job job = Submit(*m, spec);
  ASSERT_TRUE(Register(*m, job.id(), 0, 2).ok());
  ASSERT_TRUE(Register(*m, job.id(), 1, 2).ok());
  EXPECT_EQ(Exit(*m, job.id(), 1, 3, 4), v1::RESTARTING);
  v1::Job j = Get(*m, job.id());
  EXPECT_EQ(j.attempt(), 1);
  EXPECT_NE(j.reason().find("exited with code 3"), std::string::npos) << j.reason();
  EXPECT_EQ(Beat(*m, job.id(), 0, 5, /*attempt=*/0).action(), v1::ACTION_ABORT);
  v1::RegisterWorkerResponse r;
  ASSERT_TRUE(Register(*m, job.id(), 0, 2, &r).ok());
  EXPECT_EQ(r.attempt(), 1);
  EXPECT_TRUE(r.resume());
  ASSERT_TRUE(Register(*m, job.id(), 1, 2).ok());
  EXPECT_EQ(Get(*m, job.id()).state(), v1::RUNNING);
  EXPECT_EQ(Exit(*m, job.id(), 0, 1, 6, 1), v1::FAILED) << "no restarts left";
  j = Get(*m, job.id());
  std::vector<v1::JobState> path;
  for (const auto& t : j.transitions()) path.push_back(t.to());
  EXPECT_EQ(path, (std::vector<v1::JobState>{v1::PENDING, v1::RUNNING, v1::RESTARTING, v1::RUNNING,
                                             v1::FAILED}));
}

TEST(JobManager, CancelStopsWorkersThenCancels) {
  TempDir dir;
  auto m = Open(dir.file("db"));
  v1::Job pending = Submit(*m, TinySpec(2));
  v1::CancelJobRequest creq;
  creq.set_job_id(pending.id());
  v1::Job out;
  ASSERT_TRUE(m->Cancel(creq, &out).ok());
  EXPECT_EQ(out.state(), v1::CANCELLED) << "no worker ran: cancelled at once";

  v1::Job job = Submit(*m, TinySpec(2));
  ASSERT_TRUE(Register(*m, job.id(), 0, 2).ok());
  ASSERT_TRUE(Register(*m, job.id(), 1, 2).ok());
  creq.set_job_id(job.id());
  creq.set_reason("test");
  ASSERT_TRUE(m->Cancel(creq, &out).ok());
  EXPECT_EQ(out.state(), v1::RUNNING);
  EXPECT_TRUE(out.cancel_requested());
  EXPECT_EQ(Beat(*m, job.id(), 0, 2).action(), v1::ACTION_STOP);
  EXPECT_EQ(Exit(*m, job.id(), 0, 0, 3), v1::RUNNING);
  EXPECT_EQ(Exit(*m, job.id(), 1, 0, 3), v1::CANCELLED);
  EXPECT_NE(Get(*m, job.id()).reason().find("final checkpoint"), std::string::npos);
}

// A rank's stopped exit: code 0 after its checkpoint, or 128 + signal with checkpoint_missed when
// its stop grace ran out first (then the other ranks may never report).
v1::JobState StopExit(JobManager& m, const std::string& job, int rank, int signal, int64_t step,
                      int attempt, bool checkpoint_missed) {
  v1::ReportExitRequest req;
  req.set_job_id(job);
  req.set_rank(rank);
  req.set_attempt(attempt);
  req.set_exit_code(checkpoint_missed ? 128 + signal : 0);
  req.set_final_step(step);
  req.set_stop_signal(signal);
  req.set_checkpoint_missed(checkpoint_missed);
  v1::ReportExitResponse resp;
  grpc::Status st = m.ReportExit(req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return resp.state();
}

TEST(JobManager, StopSignalsPreemptOrCancelWithOrWithoutACheckpoint) {
  TempDir dir;
  auto m = Open(dir.file("db"));
  v1::JobSpec spec = TinySpec(2);
  spec.set_max_restarts(0);  // a stop is not a failure: no restart budget is needed or used
  v1::Job job = Submit(*m, spec);
  ASSERT_TRUE(Register(*m, job.id(), 0, 2).ok());
  ASSERT_TRUE(Register(*m, job.id(), 1, 2).ok());
  {
    v1::HeartbeatRequest hb;
    hb.set_job_id(job.id());
    hb.set_rank(0);
    hb.set_step(4);
    v1::CheckpointRecord* ck = hb.add_checkpoints();
    ck->set_step(4);
    ck->set_path("/tmp/grove-coordinator-tests/run/checkpoints/step_00000004");
    v1::HeartbeatResponse hr;
    ASSERT_TRUE(m->Heartbeat(hb, &hr).ok());
  }
  // SIGTERM with a checkpoint on every rank: PREEMPTED once all have reported.
  EXPECT_EQ(StopExit(*m, job.id(), 0, SIGTERM, 6, 0, false), v1::RUNNING);
  EXPECT_EQ(StopExit(*m, job.id(), 1, SIGTERM, 6, 0, false), v1::PREEMPTED);
  v1::Job j = Get(*m, job.id());
  EXPECT_NE(j.reason().find("at step 6 after a checkpoint"), std::string::npos) << j.reason();
  EXPECT_EQ(j.attempt(), 1);
  EXPECT_EQ(j.preemptions(), 1);
  // The next launch resumes as a new attempt.
  v1::RegisterWorkerResponse r;
  ASSERT_TRUE(Register(*m, job.id(), 0, 2, &r).ok());
  EXPECT_EQ(r.attempt(), 1);
  EXPECT_TRUE(r.resume());
  ASSERT_TRUE(Register(*m, job.id(), 1, 2).ok());
  EXPECT_EQ(Get(*m, job.id()).state(), v1::RUNNING);

  // SIGTERM whose grace ran out on rank 1 before the save: PREEMPTED at once (rank 0 may be
  // blocked in a collective and never report), naming the checkpoint the next launch resumes
  // from; not FAILED, although the exit code is 143 and no restart is left.
  EXPECT_EQ(StopExit(*m, job.id(), 1, SIGTERM, 9, 1, true), v1::PREEMPTED);
  j = Get(*m, job.id());
  EXPECT_NE(j.reason().find("before its checkpoint was written"), std::string::npos) << j.reason();
  EXPECT_NE(j.reason().find("the last checkpoint is step 4"), std::string::npos) << j.reason();
  EXPECT_EQ(j.attempt(), 2);
  EXPECT_EQ(j.preemptions(), 2);
  // The old attempt's late reports (rank 0, the launcher) change nothing.
  EXPECT_EQ(Exit(*m, job.id(), 0, 143, 9, 1), v1::PREEMPTED);
  EXPECT_EQ(Get(*m, job.id()).state(), v1::PREEMPTED);

  // SIGINT (a user's Ctrl-C) whose grace ran out: CANCELLED, not FAILED.
  ASSERT_TRUE(Register(*m, job.id(), 0, 2).ok());
  ASSERT_TRUE(Register(*m, job.id(), 1, 2).ok());
  EXPECT_EQ(StopExit(*m, job.id(), 0, SIGINT, 11, 2, true), v1::CANCELLED);
  j = Get(*m, job.id());
  EXPECT_NE(j.reason().find("cancelled by SIGINT at step 11 before its checkpoint"),
            std::string::npos)
      << j.reason();
  std::vector<v1::JobState> path;
  for (const auto& t : j.transitions()) path.push_back(t.to());
  EXPECT_EQ(path, (std::vector<v1::JobState>{v1::PENDING, v1::RUNNING, v1::PREEMPTED, v1::RUNNING,
                                             v1::PREEMPTED, v1::RUNNING, v1::CANCELLED}));
}

TEST(JobManager, CheckpointRequestsAreNumbered) {
  TempDir dir;
  auto m = Open(dir.file("db"));
  v1::Job job = Submit(*m, TinySpec(1));
  v1::Job out;
  EXPECT_EQ(m->RequestCheckpoint(job.id(), &out).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(Register(*m, job.id(), 0, 1).ok());
  EXPECT_EQ(Beat(*m, job.id(), 0, 1).checkpoint_seq(), 0);
  ASSERT_TRUE(m->RequestCheckpoint(job.id(), &out).ok());
  ASSERT_TRUE(m->RequestCheckpoint(job.id(), &out).ok());
  v1::HeartbeatResponse r = Beat(*m, job.id(), 0, 2);
  EXPECT_EQ(r.action(), v1::ACTION_CHECKPOINT);
  EXPECT_EQ(r.checkpoint_seq(), 2);
}

TEST(JobManager, RestartKeepsJobsHistoryAndRunningWorkers) {
  TempDir dir;
  ManagerOptions o;
  o.heartbeat_timeout = milliseconds(1500);
  std::string id;
  std::vector<v1::Transition> before;
  {
    auto m = Open(dir.file("db"), o);
    Submit(*m, TinySpec(1), "first");
    v1::Job job = Submit(*m, TinySpec(2, 5));
    id = job.id();
    ASSERT_TRUE(Register(*m, id, 0, 2).ok());
    ASSERT_TRUE(Register(*m, id, 1, 2).ok());
    Beat(*m, id, 0, 1, 0, true);
    Beat(*m, id, 0, 2, 0, true);
    v1::Job j = Get(*m, id);
    before.assign(j.transitions().begin(), j.transitions().end());
  }
  auto m = Open(dir.file("db"), o);
  v1::ListJobsResponse list;
  ASSERT_TRUE(m->List({}, &list).ok());
  ASSERT_EQ(list.jobs_size(), 2);
  v1::Job j = Get(*m, id);
  EXPECT_EQ(j.state(), v1::RUNNING);
  ASSERT_EQ(j.transitions_size(), int(before.size()));
  for (size_t i = 0; i < before.size(); ++i)
    EXPECT_EQ(j.transitions(int(i)).SerializeAsString(), before[i].SerializeAsString());
  EXPECT_EQ(j.workers_size(), 2);
  EXPECT_EQ(j.last_step(), 2);
  // The running workers carry on: heartbeats are accepted, the job completes.
  EXPECT_EQ(Beat(*m, id, 0, 5, 0, true).action(), v1::ACTION_CONTINUE);
  EXPECT_EQ(Beat(*m, id, 1, 5).action(), v1::ACTION_CONTINUE);
  EXPECT_EQ(Exit(*m, id, 0, 0, 5), v1::RUNNING);
  EXPECT_EQ(Exit(*m, id, 1, 0, 5), v1::SUCCEEDED);
  v1::GetMetricsRequest mreq;
  mreq.set_job_id(id);
  v1::GetMetricsResponse metrics;
  ASSERT_TRUE(m->Metrics(mreq, &metrics).ok());
  EXPECT_EQ(metrics.metrics_size(), 3);
  auto events = AllEvents(*m, id);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].revision(), int64_t(i + 1));
  // Numbering continues after the restart.
  v1::Job next = Submit(*m, TinySpec(1));
  EXPECT_EQ(next.id(), "job-000003");
}

TEST(JobManager, WaitersWakeOnNewEvents) {
  TempDir dir;
  auto m = Open(dir.file("db"));
  v1::Job job = Submit(*m, TinySpec(1));
  std::atomic<int> woken{0};
  EXPECT_EQ(m->WaitForEvents(job.id(), 0, false, [&] { ++woken; }), 0u)
      << "events exist after revision 0";
  const uint64_t metrics_only = m->WaitForEvents(job.id(), job.revision(), true, [&] { ++woken; });
  const uint64_t no_metrics =
      m->WaitForEvents(job.id(), job.revision(), false, [&] { woken += 10; });
  ASSERT_NE(metrics_only, 0u);
  ASSERT_NE(no_metrics, 0u);
  ASSERT_TRUE(Register(*m, job.id(), 0, 1).ok());  // message + transition: wakes both
  EXPECT_EQ(woken.load(), 11);
}

TEST(JobManager, ConcurrentSubmitsWithOneRequestIdGetOneJobAndOneAnswerPerSpec) {
  TempDir dir;
  constexpr int kThreads = 160;
  // Every submit waits after planning until all have planned: all of them passed the first
  // request-id check before any inserts, the race the check under the insert's lock must settle.
  std::mutex mu;
  std::condition_variable cv;
  int planned = 0;
  ManagerOptions o;
  o.submit_planned_hook = [&] {
    std::unique_lock<std::mutex> l(mu);
    if (++planned == kThreads) cv.notify_all();
    cv.wait_for(l, std::chrono::seconds(20), [&] { return planned >= kThreads; });
  };
  auto m = Open(dir.file("db"), o);
  const v1::JobSpec a = TinySpec(1), b = TinySpec(2);
  std::vector<grpc::Status> status(kThreads);
  std::vector<v1::SubmitJobResponse> resp(kThreads);
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] {
      v1::SubmitJobRequest req;
      req.set_request_id("shared-request");
      *req.mutable_spec() = i % 2 ? b : a;
      while (!go.load()) std::this_thread::yield();
      status[i] = m->Submit(req, &resp[i]);
    });
  go = true;
  for (auto& t : threads) t.join();
  v1::ListJobsResponse list;
  ASSERT_TRUE(m->List({}, &list).ok());
  ASSERT_EQ(list.jobs_size(), 1);
  const int winner_world = list.jobs(0).layout().world_size();
  int created = 0;
  for (int i = 0; i < kThreads; ++i) {
    const int world = i % 2 ? 2 : 1;
    if (world == winner_world) {
      ASSERT_TRUE(status[i].ok()) << status[i].error_message();
      EXPECT_EQ(resp[i].job().id(), list.jobs(0).id());
      created += !resp[i].existing();
    } else {
      EXPECT_EQ(status[i].error_code(), grpc::StatusCode::ALREADY_EXISTS)
          << "thread " << i << " got " << resp[i].job().id() << " of the other spec";
    }
  }
  EXPECT_EQ(created, 1);
  EXPECT_EQ(planned, kThreads);
}

TEST(JobManager, AStalledCoordinatorFailsNoHealthyJob) {
  TempDir dir;
  ManagerOptions o;
  o.heartbeat_timeout = milliseconds(400);
  o.heartbeat_interval = milliseconds(250);
  auto m = Open(dir.file("db"), o);
  v1::Job a = Submit(*m, TinySpec(1, 1000000)), b = Submit(*m, TinySpec(1, 1000000));
  v1::Job slow = Submit(*m, TinySpec(1, 1000000));
  for (const v1::Job* j : {&a, &b, &slow}) ASSERT_TRUE(Register(*m, j->id(), 0, 1).ok());
  std::atomic<bool> stop{false};
  auto worker = [&](const std::string& id) {  // a healthy rank: a heartbeat every 250 ms
    for (int64_t step = 1; !stop.load(); ++step) {
      v1::HeartbeatRequest req;
      req.set_job_id(id);
      req.set_step(step);
      v1::HeartbeatResponse resp;
      (void)m->Heartbeat(req, &resp);  // the answer may take long: that is the point
      std::this_thread::sleep_for(milliseconds(250));
    }
  };
  std::thread wa(worker, a.id()), wb(worker, b.id());
  std::this_thread::sleep_for(milliseconds(300));
  // Another process holds the database's write lock for 1.5 s, and a heartbeat of a third job
  // arrives meanwhile: its commit waits that long holding the manager's lock, and every other
  // call (the liveness monitor's too, every 40 ms) waits behind it.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir.file("db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  std::thread stalled([&] {
    v1::HeartbeatRequest req;
    req.set_job_id(slow.id());
    req.set_step(1);
    v1::HeartbeatResponse resp;
    (void)m->Heartbeat(req, &resp);
  });
  std::this_thread::sleep_for(milliseconds(1500));
  ASSERT_EQ(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  stalled.join();
  std::this_thread::sleep_for(milliseconds(600));
  m->CheckLiveness();
  EXPECT_EQ(Get(*m, a.id()).state(), v1::RUNNING) << Get(*m, a.id()).reason();
  EXPECT_EQ(Get(*m, b.id()).state(), v1::RUNNING) << Get(*m, b.id()).reason();
  stop = true;
  wa.join();
  wb.join();
  // A worker that really goes silent still fails its job.
  std::this_thread::sleep_for(milliseconds(1000));
  m->CheckLiveness();
  EXPECT_EQ(Get(*m, a.id()).state(), v1::FAILED);
  EXPECT_NE(Get(*m, a.id()).reason().find("sent no heartbeat"), std::string::npos);
}

TEST(JobManager, DatabaseIsPrivateAndItsLossIsDetectedAndJobIdsAreNeverReused) {
  TempDir dir;
  const std::string db = dir.file("grove.db");
  {
    auto m = Open(db);
    EXPECT_EQ(Submit(*m, TinySpec(1)).id(), "job-000001");
    EXPECT_EQ(Submit(*m, TinySpec(1)).id(), "job-000002");
    struct stat info {};
    ASSERT_EQ(::stat(db.c_str(), &info), 0);
    EXPECT_EQ(info.st_mode & 0777, 0600u);
    ASSERT_EQ(::stat((db + ".ledger").c_str(), &info), 0);
    EXPECT_EQ(info.st_mode & 0777, 0600u);
    // Deleted under the running coordinator: refused from the next change on, naming the file.
    for (const char* suffix : {"", "-wal", "-shm"}) std::remove((db + suffix).c_str());
    v1::SubmitJobRequest req;
    *req.mutable_spec() = TinySpec(1);
    v1::SubmitJobResponse resp;
    grpc::Status st = m->Submit(req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS);
    EXPECT_NE(st.error_message().find(db + " was deleted"), std::string::npos)
        << st.error_message();
    EXPECT_NE(m->fatal_error().find("was deleted"), std::string::npos);
  }
  // A fresh, empty database where the ledger says one existed: refused.
  auto fresh = JobStore::Open(db);
  ASSERT_FALSE(fresh.ok());
  EXPECT_NE(fresh.status().message().find("a new, empty database"), std::string::npos)
      << fresh.status().message();
  EXPECT_NE(fresh.status().message().find("job-000002"), std::string::npos);
  EXPECT_NE(fresh.status().message().find("--accept-new-database"), std::string::npos);
  // Accepted on request: the numbering continues.
  StoreOptions accept;
  accept.accept_new_database = true;
  auto store = JobStore::Open(db, accept);
  ASSERT_TRUE(store.ok()) << store.status().message();
  auto m = JobManager::Create(std::move(store).value(), {});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(Submit(*m.value(), TinySpec(1)).id(), "job-000003");
  m.value().reset();
  // Another database copied over it: refused as well.
  {
    TempDir other;
    auto o = Open(other.file("x.db"));
    Submit(*o, TinySpec(1));
    o.reset();
    std::filesystem::copy_file(other.file("x.db"), db,
                               std::filesystem::copy_options::overwrite_existing);
    for (const char* suffix : {"-wal", "-shm"}) std::remove((db + suffix).c_str());
  }
  auto replaced = JobStore::Open(db);
  ASSERT_FALSE(replaced.ok());
  EXPECT_NE(replaced.status().message().find("another database"), std::string::npos)
      << replaced.status().message();
}

TEST(JobManager, PendingJobsExpire) {
  TempDir dir;
  ManagerOptions o;
  o.pending_timeout = milliseconds(100);
  auto m = Open(dir.file("db"), o);
  v1::Job idle = Submit(*m, TinySpec(1)), joined = Submit(*m, TinySpec(2));
  ASSERT_TRUE(Register(*m, joined.id(), 0, 2).ok());
  std::this_thread::sleep_for(milliseconds(200));
  m->CheckLiveness();
  EXPECT_EQ(Get(*m, idle.id()).state(), v1::FAILED);
  EXPECT_NE(Get(*m, idle.id()).reason().find("no worker registered"), std::string::npos);
  EXPECT_EQ(Get(*m, joined.id()).state(), v1::PENDING) << "registration timeout applies";
}

TEST(JobManager, PathsOutsideTheRootsAreRefusedNamingTheField) {
  TempDir dir;
  namespace fs = std::filesystem;
  fs::create_directories(dir.file("data/brown"));
  fs::create_directories(dir.file("runs"));
  fs::create_symlink("/etc", dir.file("runs/escape"));
  ManagerOptions o;
  o.paths = PathPolicy::Create({dir.file("data")}, {dir.file("runs")}).value();
  auto m = Open(dir.file("db"), o);
  auto submit = [&](const std::string& data_dir, const std::string& out_dir) {
    nlohmann::json j = nlohmann::json::parse(TinySpec(1).config_json());
    j["data"]["dir"] = data_dir;
    j["out_dir"] = out_dir;
    v1::SubmitJobRequest req;
    *req.mutable_spec() = TinySpec(1);
    req.mutable_spec()->set_config_json(j.dump());
    v1::SubmitJobResponse resp;
    grpc::Status st = m->Submit(req, &resp);
    return std::make_pair(st, resp.job());
  };
  const std::string data = dir.file("data/brown");
  for (const auto& [out, why] : std::vector<std::pair<std::string, std::string>>{
           {"/etc", "absolute"},
           {dir.file("runs/../x"), ".."},
           {"runs/x", "relative"},
           {dir.file("runs/escape/cron.d"), "a link out of the root"},
           {dir.file("runs"), "the root itself"}}) {
    auto [st, job] = submit(data, out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << why;
    EXPECT_NE(st.error_message().find("out_dir"), std::string::npos) << st.error_message();
  }
  for (const std::string& bad : {std::string("/root/.ssh"), dir.file("data/../runs")}) {
    auto [st, job] = submit(bad, dir.file("runs/a"));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_NE(st.error_message().find("data.dir"), std::string::npos) << st.error_message();
  }
  v1::ListJobsResponse list;
  ASSERT_TRUE(m->List({}, &list).ok());
  EXPECT_EQ(list.jobs_size(), 0);
  auto [st, job] = submit(data, dir.file("runs/./a"));
  ASSERT_TRUE(st.ok()) << st.error_message();
  auto resolved = nlohmann::json::parse(job.resolved_config_json());
  EXPECT_EQ(resolved["out_dir"], ResolvePath(dir.file("runs/a")));
  EXPECT_EQ(resolved["data"]["dir"], ResolvePath(data));
}

}  // namespace
}  // namespace grove::coordinator
