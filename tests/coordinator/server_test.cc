// The gRPC server in process on loopback: auth on every RPC, the health service, TLS, WatchJob,
// and the worker's CoordinatorLink against it.
#include "coordinator/server.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "proto/client.h"
#include "proto/health.grpc.pb.h"
#include "tests/coordinator/test_util.h"
#include "worker/coordinator_link.h"

namespace grove::coordinator {
namespace {

namespace v1 = grove::v1;
using std::chrono::milliseconds;
using testing::TempDir;
using testing::TinySpec;

constexpr char kToken[] = "s3cret-token";

struct Fixture {
  explicit Fixture(ServerOptions so = {}, ManagerOptions mo = {}) {
    auto store = JobStore::Open(dir.file("db"));
    EXPECT_TRUE(store.ok());
    auto m = JobManager::Create(std::move(store).value(), mo);
    EXPECT_TRUE(m.ok());
    manager = std::move(m).value();
    so.listen = "127.0.0.1:0";
    if (so.token.empty()) so.token = kToken;
    auto s = CoordinatorServer::Start(manager, so);
    EXPECT_TRUE(s.ok()) << s.status().message();
    server = std::move(s).value();
    client.address = "127.0.0.1:" + std::to_string(server->port());
    client.token = kToken;
    client.deadline = milliseconds(5000);
    channel = rpc::MakeChannel(client).value();
    stub = v1::Coordinator::NewStub(channel);
  }
  template <typename Req, typename Resp, typename Method>
  grpc::Status Call(Method method, const Req& req, Resp* resp, const std::string& token = kToken) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, token, milliseconds(5000));
    return ((*stub).*method)(&ctx, req, resp);
  }
  // A worker's link options for `job`: this server, the job's worker credential.
  CoordinatorLinkOptions LinkOptions(const v1::Job& job) const {
    CoordinatorLinkOptions lo;
    lo.client = client;
    lo.client.token = testing::WorkerToken(*manager, job.id());
    lo.job_id = job.id();
    return lo;
  }
  v1::Job Submit(v1::JobSpec spec) {
    v1::SubmitJobRequest req;
    *req.mutable_spec() = spec;
    v1::SubmitJobResponse resp;
    EXPECT_TRUE(Call(&v1::Coordinator::Stub::SubmitJob, req, &resp).ok());
    return resp.job();
  }
  v1::Job Get(const std::string& id) {
    v1::GetJobRequest req;
    req.set_job_id(id);
    v1::Job j;
    EXPECT_TRUE(Call(&v1::Coordinator::Stub::GetJob, req, &j).ok());
    return j;
  }

  TempDir dir;
  std::shared_ptr<JobManager> manager;
  std::unique_ptr<CoordinatorServer> server;
  rpc::ClientOptions client;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Coordinator::Stub> stub;
};

TEST(Server, EveryRpcNeedsTheTokenAndRejectedCallsChangeNothing) {
  Fixture f;
  v1::Job job = f.Submit(TinySpec(1));
  for (const std::string& token : {std::string(), std::string("wrong"), std::string(kToken) + "x",
                                   std::string(kToken).substr(1)}) {
    auto unauth = [&](grpc::Status st) {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << rpc::DescribeStatus(st);
    };
    v1::SubmitJobRequest s;
    *s.mutable_spec() = TinySpec(1);
    v1::SubmitJobResponse sr;
    unauth(f.Call(&v1::Coordinator::Stub::SubmitJob, s, &sr, token));
    v1::GetJobRequest g;
    g.set_job_id(job.id());
    v1::Job j;
    unauth(f.Call(&v1::Coordinator::Stub::GetJob, g, &j, token));
    v1::ListJobsResponse lr;
    unauth(f.Call(&v1::Coordinator::Stub::ListJobs, v1::ListJobsRequest(), &lr, token));
    v1::CancelJobRequest c;
    c.set_job_id(job.id());
    unauth(f.Call(&v1::Coordinator::Stub::CancelJob, c, &j, token));
    v1::CheckpointJobRequest cp;
    cp.set_job_id(job.id());
    unauth(f.Call(&v1::Coordinator::Stub::CheckpointJob, cp, &j, token));
    v1::GetMetricsRequest mr;
    mr.set_job_id(job.id());
    v1::GetMetricsResponse mresp;
    unauth(f.Call(&v1::Coordinator::Stub::GetMetrics, mr, &mresp, token));
    v1::RegisterWorkerRequest r;
    r.set_job_id(job.id());
    r.set_world_size(1);
    r.set_host("h");
    v1::RegisterWorkerResponse rr;
    unauth(f.Call(&v1::Coordinator::Stub::RegisterWorker, r, &rr, token));
    v1::HeartbeatRequest h;
    h.set_job_id(job.id());
    v1::HeartbeatResponse hr;
    unauth(f.Call(&v1::Coordinator::Stub::Heartbeat, h, &hr, token));
    v1::ReportExitRequest e;
    e.set_job_id(job.id());
    v1::ReportExitResponse er;
    unauth(f.Call(&v1::Coordinator::Stub::ReportExit, e, &er, token));
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, token, milliseconds(5000));
    v1::WatchJobRequest w;
    w.set_job_id(job.id());
    auto reader = f.stub->WatchJob(&ctx, w);
    v1::JobEvent ev;
    EXPECT_FALSE(reader->Read(&ev));
    unauth(reader->Finish());
  }
  v1::Job after = f.Get(job.id());
  EXPECT_EQ(after.state(), v1::PENDING);
  EXPECT_EQ(after.revision(), job.revision());
  EXPECT_EQ(after.workers_size(), 0);
  v1::ListJobsResponse list;
  ASSERT_TRUE(f.Call(&v1::Coordinator::Stub::ListJobs, v1::ListJobsRequest(), &list).ok());
  EXPECT_EQ(list.jobs_size(), 1);
}

TEST(Server, HealthServiceAnswersWithoutToken) {
  Fixture f;
  auto health = grpc::health::v1::Health::NewStub(f.channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + milliseconds(5000));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(Server, RefusesToStartWithoutTokenOrWithHalfTls) {
  TempDir dir;
  auto m = JobManager::Create(JobStore::Open(dir.file("db")).value(), {});
  ASSERT_TRUE(m.ok());
  std::shared_ptr<JobManager> manager = std::move(m).value();
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  auto s = CoordinatorServer::Start(manager, so);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("token"), std::string::npos);
  so.token = "t";
  s = CoordinatorServer::Start(manager, so);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("shorter than 8"), std::string::npos);
  so.token = "token-of-16-bytes";
  so.tls_cert_file = dir.file("cert.pem");
  s = CoordinatorServer::Start(manager, so);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("--tls-key"), std::string::npos);
}

TEST(Server, TlsWhenCertificatesAreGiven) {
  TempDir dir;
  const std::string cmd =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
      dir.file("key.pem") + " -out " + dir.file("cert.pem") + " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "openssl is not available";
  ServerOptions so;
  so.tls_cert_file = dir.file("cert.pem");
  so.tls_key_file = dir.file("key.pem");
  Fixture f(so);
  // Plaintext against TLS fails.
  v1::ListJobsResponse list;
  grpc::ClientContext plain;
  rpc::PrepareContext(&plain, kToken, milliseconds(2000));
  EXPECT_FALSE(f.stub->ListJobs(&plain, v1::ListJobsRequest(), &list).ok());
  // TLS with the CA succeeds, and the token is still required.
  rpc::ClientOptions tls = f.client;
  tls.tls_ca_file = dir.file("cert.pem");
  tls.tls_server_name = "localhost";
  auto stub = v1::Coordinator::NewStub(rpc::MakeChannel(tls).value());
  grpc::ClientContext ok_ctx;
  rpc::PrepareContext(&ok_ctx, kToken, milliseconds(5000));
  grpc::Status st = stub->ListJobs(&ok_ctx, v1::ListJobsRequest(), &list);
  EXPECT_TRUE(st.ok()) << rpc::DescribeStatus(st);
  grpc::ClientContext bad_ctx;
  rpc::PrepareContext(&bad_ctx, "nope", milliseconds(5000));
  EXPECT_EQ(stub->ListJobs(&bad_ctx, v1::ListJobsRequest(), &list).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST(Server, WatchStreamsHistoryThenLiveEventsUntilTerminal) {
  Fixture f;
  v1::Job job = f.Submit(TinySpec(1));
  std::vector<v1::JobEvent> seen;
  std::thread watcher([&] {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, kToken, milliseconds(20000));
    v1::WatchJobRequest w;
    w.set_job_id(job.id());
    w.set_follow(true);
    w.set_include_metrics(true);
    auto reader = f.stub->WatchJob(&ctx, w);
    v1::JobEvent ev;
    while (reader->Read(&ev)) seen.push_back(ev);
    EXPECT_TRUE(reader->Finish().ok());
  });
  std::this_thread::sleep_for(milliseconds(200));
  auto link = CoordinatorLink::Register(f.LinkOptions(job));
  ASSERT_TRUE(link.ok()) << link.status().message();
  StepMetrics m;
  for (int s = 1; s <= 10; ++s) {
    m.step = s;
    m.loss = 3.0f;
    link.value()->RecordStep(m);
  }
  auto state = link.value()->ReportExit(0, "");
  ASSERT_TRUE(state.ok()) << state.status().message();
  EXPECT_EQ(state.value(), v1::SUCCEEDED);
  watcher.join();
  ASSERT_FALSE(seen.empty());
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].revision(), int64_t(i + 1));
  EXPECT_EQ(seen.back().state(), v1::SUCCEEDED);
  int metrics = 0;
  for (const auto& e : seen) metrics += e.has_metric();
  EXPECT_EQ(metrics, 10);
  // A watch of a finished job replays the history and ends.
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, kToken, milliseconds(5000));
  v1::WatchJobRequest w;
  w.set_job_id(job.id());
  w.set_follow(true);
  auto reader = f.stub->WatchJob(&ctx, w);
  v1::JobEvent ev;
  int n = 0;
  while (reader->Read(&ev)) ++n;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(n, int(seen.size()) - metrics);
  // Unknown job: NOT_FOUND.
  grpc::ClientContext ctx2;
  rpc::PrepareContext(&ctx2, kToken, milliseconds(5000));
  w.set_job_id("job-424242");
  auto r2 = f.stub->WatchJob(&ctx2, w);
  EXPECT_FALSE(r2->Read(&ev));
  EXPECT_EQ(r2->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

// An attempt that resumes at the job's last step (a rank killed after the final checkpoint)
// trains nothing: its exit reports the resumed step, and the job succeeds.
TEST(Link, AnAttemptResumedAtTheLastStepSucceeds) {
  Fixture f;
  v1::Job job = f.Submit(TinySpec(1));
  auto link = CoordinatorLink::Register(f.LinkOptions(job));
  ASSERT_TRUE(link.ok()) << link.status().message();
  link.value()->SetResumedStep(job.total_steps());
  auto state = link.value()->ReportExit(0, "finished at step " + std::to_string(job.total_steps()));
  ASSERT_TRUE(state.ok()) << state.status().message();
  EXPECT_EQ(state.value(), v1::SUCCEEDED);
}

TEST(Link, CancelBecomesStopAndCheckpointRequestsFireOnce) {
  ManagerOptions mo;
  mo.heartbeat_interval = milliseconds(50);
  Fixture f({}, mo);
  v1::Job job = f.Submit(TinySpec(1, 1000));
  auto link = CoordinatorLink::Register(f.LinkOptions(job));
  ASSERT_TRUE(link.ok()) << link.status().message();
  EXPECT_EQ(link.value()->assignment().layout().world_size(), 1);
  link.value()->Start();
  auto hook = link.value()->StepHook(nullptr);
  StepMetrics m;
  m.step = 1;
  EXPECT_EQ(hook(m), StepControl::kContinue);
  v1::CheckpointJobRequest cp;
  cp.set_job_id(job.id());
  v1::Job j;
  ASSERT_TRUE(f.Call(&v1::Coordinator::Stub::CheckpointJob, cp, &j).ok());
  int checkpoints = 0;
  for (int s = 2; s < 40; ++s) {
    m.step = s;
    checkpoints += hook(m) == StepControl::kCheckpoint;
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_EQ(checkpoints, 1);
  v1::CancelJobRequest c;
  c.set_job_id(job.id());
  ASSERT_TRUE(f.Call(&v1::Coordinator::Stub::CancelJob, c, &j).ok());
  StepControl ctl = StepControl::kContinue;
  for (int s = 40; s < 200 && ctl != StepControl::kStop; ++s) {
    m.step = s;
    ctl = hook(m);
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_EQ(ctl, StepControl::kStop);
  EXPECT_TRUE(link.value()->stop_requested());
  EXPECT_FALSE(link.value()->abort_requested());
  auto state = link.value()->ReportExit(0, "stopped");
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state.value(), v1::CANCELLED);
}

TEST(Link, RefusalsAreClear) {
  Fixture f;
  CoordinatorLinkOptions lo;
  lo.client = f.client;  // a user token: refused, naming the worker credential
  lo.job_id = "job-777777";
  auto link = CoordinatorLink::Register(lo);
  ASSERT_FALSE(link.ok());
  EXPECT_NE(link.status().message().find("PERMISSION_DENIED"), std::string::npos);
  EXPECT_NE(link.status().message().find("GROVE_WORKER_TOKEN"), std::string::npos)
      << link.status().message();
  v1::Job job = f.Submit(TinySpec(2));
  lo.job_id = job.id();
  lo.world_size = 2;
  lo.client.token = testing::WorkerToken(*f.manager, job.id());
  auto first = CoordinatorLink::Register(lo);
  ASSERT_TRUE(first.ok());
  auto second = CoordinatorLink::Register(lo);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("already registered"), std::string::npos)
      << second.status().message();
  lo.client.token = "bad";
  lo.rank = 1;
  auto bad = CoordinatorLink::Register(lo);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("UNAUTHENTICATED"), std::string::npos);
}

// ---- Roles --------------------------------------------------------------------------------------

v1::RegisterWorkerRequest RegisterRequest(const std::string& job, int rank, int world) {
  v1::RegisterWorkerRequest r;
  r.set_job_id(job);
  r.set_rank(rank);
  r.set_world_size(world);
  r.set_host("h");
  r.set_pid(7);
  return r;
}

TEST(Roles, UserTokensCannotActAsWorkersAndCredentialsServeOnlyTheirJobAndAttempt) {
  Fixture f;
  v1::Job a = f.Submit(TinySpec(1, 50));
  v1::Job b = f.Submit(TinySpec(1, 50));
  auto denied = [](const grpc::Status& st, const char* what) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << what << ": " << rpc::DescribeStatus(st);
  };
  // The user token: no worker call.
  v1::RegisterWorkerResponse rr;
  denied(f.Call(&v1::Coordinator::Stub::RegisterWorker, RegisterRequest(a.id(), 0, 1), &rr),
         "register with the user token");
  v1::HeartbeatRequest hb;
  hb.set_job_id(a.id());
  v1::HeartbeatResponse hr;
  denied(f.Call(&v1::Coordinator::Stub::Heartbeat, hb, &hr), "heartbeat with the user token");
  v1::ReportExitRequest ex;
  ex.set_job_id(a.id());
  v1::ReportExitResponse er;
  denied(f.Call(&v1::Coordinator::Stub::ReportExit, ex, &er), "exit with the user token");

  // The launcher's credential for job a.
  v1::IssueWorkerTokenRequest ir;
  ir.set_job_id(a.id());
  v1::IssueWorkerTokenResponse issued;
  ASSERT_TRUE(f.Call(&v1::Coordinator::Stub::IssueWorkerToken, ir, &issued).ok());
  EXPECT_EQ(issued.attempt(), 0);
  const std::string wa = issued.worker_token();
  EXPECT_EQ(wa.rfind("gw1." + a.id() + ".0.", 0), 0u) << wa;
  // It is no user token: no submit, read, cancel, credential or watch.
  v1::SubmitJobRequest s;
  *s.mutable_spec() = TinySpec(1);
  v1::SubmitJobResponse sr;
  denied(f.Call(&v1::Coordinator::Stub::SubmitJob, s, &sr, wa), "submit with a credential");
  v1::GetJobRequest g;
  g.set_job_id(a.id());
  v1::Job j;
  denied(f.Call(&v1::Coordinator::Stub::GetJob, g, &j, wa), "get with a credential");
  v1::CancelJobRequest c;
  c.set_job_id(a.id());
  denied(f.Call(&v1::Coordinator::Stub::CancelJob, c, &j, wa), "cancel with a credential");
  denied(f.Call(&v1::Coordinator::Stub::IssueWorkerToken, ir, &issued, wa),
         "a credential issuing credentials");
  {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, wa, milliseconds(5000));
    v1::WatchJobRequest w;
    w.set_job_id(a.id());
    auto reader = f.stub->WatchJob(&ctx, w);
    v1::JobEvent ev;
    EXPECT_FALSE(reader->Read(&ev));
    denied(reader->Finish(), "watch with a credential");
  }
  // Not for another job, and a forged credential of the right shape is refused.
  denied(f.Call(&v1::Coordinator::Stub::RegisterWorker, RegisterRequest(b.id(), 0, 1), &rr, wa),
         "job a's credential registering for job b");
  const std::string forged = wa.substr(0, wa.size() - 4) + "0000";
  denied(f.Call(&v1::Coordinator::Stub::RegisterWorker, RegisterRequest(a.id(), 0, 1), &rr, forged),
         "a forged credential");
  EXPECT_EQ(f.Get(a.id()).revision(), a.revision());
  EXPECT_EQ(f.Get(b.id()).revision(), b.revision());

  // With it, job a's rank registers and heartbeats; other attempts and jobs stay closed.
  ASSERT_TRUE(
      f.Call(&v1::Coordinator::Stub::RegisterWorker, RegisterRequest(a.id(), 0, 1), &rr, wa).ok());
  hb.set_step(1);
  ASSERT_TRUE(f.Call(&v1::Coordinator::Stub::Heartbeat, hb, &hr, wa).ok());
  hb.set_attempt(1);
  denied(f.Call(&v1::Coordinator::Stub::Heartbeat, hb, &hr, wa), "another attempt");
  hb.set_attempt(0);
  hb.set_job_id(b.id());
  denied(f.Call(&v1::Coordinator::Stub::Heartbeat, hb, &hr, wa), "a heartbeat for job b");
  ex.set_job_id(b.id());
  ex.set_exit_code(1);
  denied(f.Call(&v1::Coordinator::Stub::ReportExit, ex, &er, wa), "an exit for job b");
  EXPECT_EQ(f.Get(b.id()).state(), v1::PENDING);

  // Figures that do not fit the job are refused and change nothing.
  const int64_t revision = f.Get(a.id()).revision();
  auto invalid = [&](v1::HeartbeatRequest bad, const char* field) {
    v1::HeartbeatResponse resp;
    grpc::Status st = f.Call(&v1::Coordinator::Stub::Heartbeat, bad, &resp, wa);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << rpc::DescribeStatus(st);
    EXPECT_NE(st.error_message().find(field), std::string::npos) << st.error_message();
  };
  v1::HeartbeatRequest good;
  good.set_job_id(a.id());
  good.set_step(2);
  v1::HeartbeatRequest bad = good;
  bad.add_metrics()->set_step(999999);
  invalid(bad, "metrics[0].step");
  bad = good;
  auto* m = bad.add_metrics();
  m->set_step(2);
  m->set_loss(-1);
  invalid(bad, "metrics[0].loss");
  bad = good;
  auto* ck = bad.add_checkpoints();
  ck->set_step(2);
  ck->set_path("/etc/passwd");
  invalid(bad, "checkpoints[0]");
  ck->set_path("/tmp/grove-coordinator-tests/run/../../../etc/passwd");
  invalid(bad, "checkpoints[0]");
  bad = good;
  for (int i = 0; i < 17; ++i)
    bad.add_checkpoints()->set_path("/tmp/grove-coordinator-tests/run/x");
  invalid(bad, "checkpoints: at most 16");
  bad = good;
  for (int i = 0; i < 257; ++i) bad.add_metrics()->set_step(1);
  invalid(bad, "metrics: at most 256");
  EXPECT_EQ(f.Get(a.id()).revision(), revision);
  EXPECT_EQ(f.Get(a.id()).checkpoints_size(), 0);
  // A checkpoint inside out_dir is recorded.
  v1::HeartbeatRequest fine = good;
  ck = fine.add_checkpoints();
  ck->set_step(2);
  ck->set_path("/tmp/grove-coordinator-tests/run/checkpoints/step_00000002");
  ASSERT_TRUE(f.Call(&v1::Coordinator::Stub::Heartbeat, fine, &hr, wa).ok());
  EXPECT_EQ(f.Get(a.id()).checkpoints_size(), 1);
}

TEST(Roles, UsersManageTheirOwnJobsAndTheAdminEvery) {
  TempDir keys;
  {
    std::ofstream users(keys.file("users"));
    users << "# name token\nalice alice-token-123\nbob bob-token-4567\n";
  }
  ServerOptions so;
  so.token = "";
  so.users_file = keys.file("users");
  so.admin_token = "admin-token-89";
  Fixture f(so);
  const std::string alice = "alice-token-123", bob = "bob-token-4567", admin = "admin-token-89";
  v1::SubmitJobRequest s;
  s.set_request_id("req-alice");
  *s.mutable_spec() = TinySpec(1);
  v1::SubmitJobResponse sr;
  ASSERT_TRUE(f.Call(&v1::Coordinator::Stub::SubmitJob, s, &sr, alice).ok());
  const v1::Job job = sr.job();
  EXPECT_EQ(job.owner(), "alice");
  // Bob reads it but neither cancels, checkpoints nor launches it, nor reuses its request id.
  v1::GetJobRequest g;
  g.set_job_id(job.id());
  v1::Job j;
  EXPECT_TRUE(f.Call(&v1::Coordinator::Stub::GetJob, g, &j, bob).ok());
  v1::CancelJobRequest c;
  c.set_job_id(job.id());
  grpc::Status st = f.Call(&v1::Coordinator::Stub::CancelJob, c, &j, bob);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(st.error_message().find("belongs to 'alice'"), std::string::npos) << st.error_message();
  v1::IssueWorkerTokenRequest ir;
  ir.set_job_id(job.id());
  v1::IssueWorkerTokenResponse issued;
  EXPECT_EQ(f.Call(&v1::Coordinator::Stub::IssueWorkerToken, ir, &issued, bob).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::SubmitJobResponse bob_resp;
  st = f.Call(&v1::Coordinator::Stub::SubmitJob, s, &bob_resp, bob);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(st.error_message().find(job.id()), std::string::npos) << "reveals alice's job";
  EXPECT_EQ(f.Get(job.id()).revision(), job.revision());
  // Alice launches it; the admin cancels it.
  EXPECT_TRUE(f.Call(&v1::Coordinator::Stub::IssueWorkerToken, ir, &issued, alice).ok());
  EXPECT_TRUE(f.Call(&v1::Coordinator::Stub::CancelJob, c, &j, admin).ok());
  EXPECT_EQ(j.state(), v1::CANCELLED);
  // A worker credential for a finished job is not issued.
  EXPECT_EQ(f.Call(&v1::Coordinator::Stub::IssueWorkerToken, ir, &issued, alice).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(Roles, CredentialsSurviveARestartAndBelongToOneAttempt) {
  TempDir dir;
  std::string token;
  std::string id;
  {
    auto m = JobManager::Create(JobStore::Open(dir.file("db")).value(), {});
    ASSERT_TRUE(m.ok());
    v1::SubmitJobRequest s;
    v1::JobSpec spec = TinySpec(1, 50);
    spec.set_max_restarts(1);
    *s.mutable_spec() = spec;
    v1::SubmitJobResponse sr;
    ASSERT_TRUE(m.value()->Submit(s, &sr).ok());
    id = sr.job().id();
    token = testing::WorkerToken(*m.value(), id);
  }
  auto m = JobManager::Create(JobStore::Open(dir.file("db")).value(), {});
  ASSERT_TRUE(m.ok());
  Authenticator auth = Authenticator::Create(AuthOptions{"user-token-1", "", "", false}).value();
  Principal worker = auth.IdentifyToken(token).value();
  EXPECT_TRUE(worker.is_worker());
  v1::RegisterWorkerResponse rr;
  ASSERT_TRUE(m.value()->Register(RegisterRequest(id, 0, 1), &rr, worker).ok());
  // The rank fails: the job restarts as attempt 1, and attempt 0's credential cannot join it.
  v1::ReportExitRequest ex;
  ex.set_job_id(id);
  ex.set_exit_code(3);
  v1::ReportExitResponse er;
  ASSERT_TRUE(m.value()->ReportExit(ex, &er, worker).ok());
  EXPECT_EQ(er.state(), v1::RESTARTING);
  grpc::Status st = m.value()->Register(RegisterRequest(id, 0, 1), &rr, worker);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("attempt 0"), std::string::npos) << st.error_message();
  Principal next = auth.IdentifyToken(testing::WorkerToken(*m.value(), id)).value();
  EXPECT_EQ(next.attempt, 1);
  EXPECT_TRUE(m.value()->Register(RegisterRequest(id, 0, 1), &rr, next).ok());
}

// ---- Mutual TLS ---------------------------------------------------------------------------------

TEST(Server, MutualTlsNeedsTheClientCertificateAndBadFilesAreNamed) {
  TempDir dir;
  auto make = [&](const std::string& name, const std::string& cn) {
    const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=" + cn +
                            " -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
                            dir.file(name + ".key") + " -out " + dir.file(name + ".pem") +
                            " >/dev/null 2>&1";
    return std::system(cmd.c_str()) == 0;
  };
  if (!make("server", "localhost") || !make("client", "grove-client"))
    GTEST_SKIP() << "openssl is not available";
  ServerOptions so;
  so.tls_cert_file = dir.file("server.pem");
  so.tls_key_file = dir.file("server.key");
  so.tls_client_ca_file = dir.file("client.pem");  // self-signed: the client's own CA
  Fixture f(so);
  rpc::ClientOptions tls = f.client;
  tls.tls_ca_file = dir.file("server.pem");
  tls.tls_server_name = "localhost";
  tls.deadline = milliseconds(3000);
  auto list = [&](const rpc::ClientOptions& o) {
    auto stub = v1::Coordinator::NewStub(rpc::MakeChannel(o).value());
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, kToken, o.deadline);
    v1::ListJobsResponse resp;
    return stub->ListJobs(&ctx, v1::ListJobsRequest(), &resp);
  };
  grpc::Status without = list(tls);
  EXPECT_FALSE(without.ok());
  const std::string hint = rpc::ConnectionHint(without, tls);
  EXPECT_NE(hint.find("--tls"), std::string::npos) << rpc::DescribeStatus(without) << " / " << hint;
  EXPECT_EQ(hint.find("is grove-coordinator running"), std::string::npos) << hint;
  tls.tls_cert_file = dir.file("client.pem");
  tls.tls_key_file = dir.file("client.key");
  grpc::Status with = list(tls);
  EXPECT_TRUE(with.ok()) << rpc::DescribeStatus(with);
  // Files that are not PEM, or half a client identity, are named before any connection.
  { std::ofstream(dir.file("junk.pem")) << "not a certificate\n"; }
  rpc::ClientOptions bad = tls;
  bad.tls_ca_file = dir.file("junk.pem");
  auto ch = rpc::MakeChannel(bad);
  ASSERT_FALSE(ch.ok());
  EXPECT_NE(ch.status().message().find("--tls-ca " + dir.file("junk.pem") + " is not a PEM"),
            std::string::npos)
      << ch.status().message();
  bad = tls;
  bad.tls_key_file.clear();
  ch = rpc::MakeChannel(bad);
  ASSERT_FALSE(ch.ok());
  EXPECT_NE(ch.status().message().find("--tls-key"), std::string::npos);
}

// ---- Bounded work -------------------------------------------------------------------------------

TEST(Server, ListJobsPagesAndLimitsAreEnforced) {
  Fixture f;
  for (int i = 0; i < 7; ++i) f.Submit(TinySpec(1));
  v1::ListJobsRequest req;
  req.set_limit(3);
  std::vector<std::string> ids;
  for (int page = 0; page < 5; ++page) {
    v1::ListJobsResponse resp;
    ASSERT_TRUE(f.Call(&v1::Coordinator::Stub::ListJobs, req, &resp).ok());
    for (const auto& j : resp.jobs()) {
      ids.push_back(j.id());
      EXPECT_TRUE(j.spec().config_json().empty()) << "lists carry no config";
    }
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  ASSERT_EQ(ids.size(), 7u);
  EXPECT_EQ(ids.front(), "job-000007");
  EXPECT_EQ(ids.back(), "job-000001");
  v1::ListJobsResponse resp;
  req.set_page_token("garbage");
  EXPECT_EQ(f.Call(&v1::Coordinator::Stub::ListJobs, req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  req.clear_page_token();
  req.set_limit(1001);
  EXPECT_EQ(f.Call(&v1::Coordinator::Stub::ListJobs, req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // An oversized config is refused naming the field; nothing is stored.
  v1::JobSpec big = TinySpec(1);
  big.set_config_json(big.config_json() + std::string(70000, ' '));
  v1::SubmitJobRequest s;
  *s.mutable_spec() = big;
  v1::SubmitJobResponse sr;
  grpc::Status st = f.Call(&v1::Coordinator::Stub::SubmitJob, s, &sr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("spec.config_json is"), std::string::npos);
  req.set_limit(0);
  ASSERT_TRUE(f.Call(&v1::Coordinator::Stub::ListJobs, req, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 7);
}

}  // namespace
}  // namespace grove::coordinator
