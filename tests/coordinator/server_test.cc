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
  CoordinatorLinkOptions lo;
  lo.client = f.client;
  lo.job_id = job.id();
  auto link = CoordinatorLink::Register(lo);
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

TEST(Link, CancelBecomesStopAndCheckpointRequestsFireOnce) {
  ManagerOptions mo;
  mo.heartbeat_interval = milliseconds(50);
  Fixture f({}, mo);
  v1::Job job = f.Submit(TinySpec(1, 1000));
  CoordinatorLinkOptions lo;
  lo.client = f.client;
  lo.job_id = job.id();
  auto link = CoordinatorLink::Register(lo);
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
  lo.client = f.client;
  lo.job_id = "job-777777";
  auto link = CoordinatorLink::Register(lo);
  ASSERT_FALSE(link.ok());
  EXPECT_NE(link.status().message().find("NOT_FOUND"), std::string::npos);
  v1::Job job = f.Submit(TinySpec(2));
  lo.job_id = job.id();
  lo.world_size = 2;
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

}  // namespace
}  // namespace grove::coordinator
