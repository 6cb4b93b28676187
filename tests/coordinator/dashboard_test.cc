// The dashboard's HTTP server in process on loopback: auth (header, cookie, refusals), the
// embedded files, the JSON API following heartbeats with the optional MoE figures, the memory
// history, and the Prometheus text format.
#include "coordinator/dashboard.h"

#include <arpa/inet.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "coordinator/server.h"
#include "planner/cost_model.h"
#include "tests/coordinator/test_util.h"
#include "worker/coordinator_link.h"

namespace grove::coordinator {
namespace {

namespace v1 = grove::v1;
using std::chrono::milliseconds;
using testing::TempDir;
using testing::TinySpec;

constexpr char kToken[] = "dash;token=\"x\"";  // not a valid cookie value as it is

struct Fixture {
  explicit Fixture(ManagerOptions mo = {}) {
    auto store = JobStore::Open(dir.file("db"));
    EXPECT_TRUE(store.ok());
    auto m = JobManager::Create(std::move(store).value(), mo);
    EXPECT_TRUE(m.ok());
    manager = std::move(m).value();
    DashboardOptions o;
    o.token = kToken;
    auto d = Dashboard::Start(manager, o);
    EXPECT_TRUE(d.ok()) << d.status().message();
    dashboard = std::move(d).value();
    client = std::make_unique<httplib::Client>("127.0.0.1", dashboard->port());
    client->set_connection_timeout(5);
    client->set_read_timeout(5);
  }
  httplib::Result Get(const std::string& path, const std::string& auth = "") {
    httplib::Headers h;
    if (!auth.empty()) h.emplace("Authorization", auth);
    return client->Get(path, h);
  }
  httplib::Result Authed(const std::string& path) {
    return Get(path, std::string("Bearer ") + kToken);
  }
  std::string Submit(v1::JobSpec spec) {
    v1::SubmitJobRequest req;
    *req.mutable_spec() = spec;
    v1::SubmitJobResponse resp;
    EXPECT_TRUE(manager->Submit(req, &resp).ok());
    return resp.job().id();
  }
  void Register(const std::string& job, int rank, int world) {
    v1::RegisterWorkerRequest req;
    req.set_job_id(job);
    req.set_rank(rank);
    req.set_world_size(world);
    req.set_host("node\"1");
    req.set_pid(100 + rank);
    v1::RegisterWorkerResponse resp;
    grpc::Status st = manager->Register(req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  void Beat(const v1::HeartbeatRequest& req) {
    v1::HeartbeatResponse resp;
    grpc::Status st = manager->Heartbeat(req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }

  TempDir dir;
  std::shared_ptr<JobManager> manager;
  std::unique_ptr<Dashboard> dashboard;
  std::unique_ptr<httplib::Client> client;
};

v1::StepMetric MoEMetric(int64_t step) {
  v1::StepMetric m;
  m.set_step(step);
  m.set_loss(4.5f - 0.25f * float(step));
  m.set_tokens_per_s(1234.5 * double(step));
  m.set_mfu(0.25 + 0.01 * double(step));
  m.set_a2a_bytes_sent(600 * uint64_t(step));
  m.set_a2a_bytes_uncompressed(1000 * uint64_t(step));
  if (step % 2 == 0) {
    m.set_has_val_loss(true);
    m.set_val_loss(4.75f - 0.25f * float(step));
  }
  for (int layer : {1, 3}) {
    v1::ExpertLoad* l = m.add_expert_load();
    l->set_layer(layer);
    for (int e = 0; e < 4; ++e) l->add_tokens(10 * (e + 1) + step + layer);
  }
  return m;
}

TEST(Dashboard, RefusesWithoutTheTokenAndSignsInWithACookie) {
  Fixture f;
  const std::string id = f.Submit(TinySpec(1));
  const std::vector<std::string> paths = {
      "/",        "/static/app.js", "/api/jobs", "/api/jobs/" + id, "/api/jobs/" + id + "/metrics",
      "/metrics", "/no/such/path"};
  const std::vector<std::string> auths = {"", "Bearer", "Bearer wrong", "Bearer dash;token=\"x\"x",
                                          "Basic " + std::string(kToken)};
  for (const std::string& path : paths) {
    for (const std::string& auth : auths) {
      auto r = f.Get(path, auth);
      ASSERT_TRUE(r) << path;
      EXPECT_EQ(r->status, 401) << path << " with '" << auth << "'";
      EXPECT_EQ(r->body.find(id), std::string::npos) << "a refusal shows the job";
      EXPECT_EQ(r->body.find("grove_job"), std::string::npos);
    }
  }
  auto wrong = f.Get("/?token=wrong");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  EXPECT_FALSE(wrong->has_header("Set-Cookie"));

  std::string escaped;
  for (unsigned char c : std::string(kToken)) {
    char buf[4];
    std::snprintf(buf, sizeof buf, "%%%02X", c);
    escaped += std::isalnum(c) ? std::string(1, char(c)) : std::string(buf);
  }
  f.client->set_url_encode(false);
  auto in = f.Get("/?token=" + escaped);
  ASSERT_TRUE(in);
  EXPECT_EQ(in->status, 303);
  EXPECT_EQ(in->get_header_value("Location"), "/");
  const std::string cookie = in->get_header_value("Set-Cookie");
  EXPECT_NE(cookie.find("HttpOnly"), std::string::npos);
  EXPECT_NE(cookie.find("SameSite=Strict"), std::string::npos);
  const std::string pair = cookie.substr(0, cookie.find(";"));
  // A random session id, not the token (nor an encoding of it).
  const std::string prefix = "grove_session_" + std::to_string(f.dashboard->port()) + "=";
  ASSERT_EQ(pair.substr(0, prefix.size()), prefix);
  const std::string session = pair.substr(prefix.size());
  EXPECT_EQ(session.size(), 64u);
  EXPECT_EQ(session.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(session.find("6461736"), std::string::npos) << "the token's hex";
  // Signing in again gives another session.
  auto again = f.Get("/?token=" + escaped);
  ASSERT_TRUE(again);
  EXPECT_NE(again->get_header_value("Set-Cookie").substr(0, pair.size()), pair);

  auto page = f.client->Get("/", {{"Cookie", "other=1; " + pair}});
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("<title>Grove jobs</title>"), std::string::npos);
  EXPECT_NE(page->get_header_value("Content-Security-Policy").find("default-src 'self'"),
            std::string::npos);
  auto bad_cookie = f.client->Get("/", {{"Cookie", pair + "x"}});
  ASSERT_TRUE(bad_cookie);
  EXPECT_EQ(bad_cookie->status, 401);
  // A cookie of another port's coordinator does not count, nor the token as a cookie.
  auto token_cookie = f.client->Get("/", {{"Cookie", prefix + kToken}});
  ASSERT_TRUE(token_cookie);
  EXPECT_EQ(token_cookie->status, 401);
  auto other_port =
      f.client->Get("/", {{"Cookie", "grove_session_1=" + pair.substr(pair.find('=') + 1)}});
  ASSERT_TRUE(other_port);
  EXPECT_EQ(other_port->status, 401);
}

TEST(Dashboard, ServesTheEmbeddedPageScriptAndChartLibrary) {
  Fixture f;
  auto js = f.Authed("/static/vendor/uPlot.iife.min.js");
  ASSERT_TRUE(js);
  EXPECT_EQ(js->status, 200);
  EXPECT_GT(js->body.size(), 40000u);
  EXPECT_NE(js->body.find("uPlot"), std::string::npos);
  EXPECT_EQ(js->get_header_value("Content-Type"), "text/javascript; charset=utf-8");
  auto app = f.Authed("/static/app.js");
  ASSERT_TRUE(app);
  EXPECT_EQ(app->status, 200);
  EXPECT_NE(app->body.find("/api/jobs"), std::string::npos);
  auto css = f.Authed("/static/app.css");
  ASSERT_TRUE(css);
  EXPECT_EQ(css->get_header_value("Content-Type"), "text/css; charset=utf-8");
  auto missing = f.Authed("/static/nope.js");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  auto dot = f.Authed("/static/appXjs");  // paths are literal, not patterns
  ASSERT_TRUE(dot);
  EXPECT_EQ(dot->status, 404);
}

TEST(Dashboard, ApiFollowsHeartbeatsWithTheOptionalMoEFigures) {
  Fixture f;
  const std::string id = f.Submit(TinySpec(2, 10));
  f.Register(id, 0, 2);
  f.Register(id, 1, 2);
  for (int64_t step = 1; step <= 4; ++step) {
    v1::HeartbeatRequest hb;
    hb.set_job_id(id);
    hb.set_rank(0);
    hb.set_step(step);
    hb.set_memory_bytes(uint64_t(5 - step) << 20);  // shrinking: the peak stays at step 1
    hb.set_device_memory_bytes(uint64_t(step) << 30);
    *hb.add_metrics() = MoEMetric(step);
    f.Beat(hb);
  }
  v1::HeartbeatRequest plain;  // rank 1 reports no device memory and no metrics
  plain.set_job_id(id);
  plain.set_rank(1);
  plain.set_step(4);
  plain.set_memory_bytes(7 << 20);
  f.Beat(plain);

  auto r = f.Authed("/api/jobs/" + id);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto doc = nlohmann::json::parse(r->body);
  v1::Job job;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(doc["job"].dump(), &job).ok());
  EXPECT_GT(doc["now_unix_ms"].get<int64_t>(), 0);
  EXPECT_EQ(job.state(), v1::RUNNING);
  EXPECT_EQ(job.last_step(), 4);
  EXPECT_FLOAT_EQ(job.last_loss(), 3.5f);
  EXPECT_FLOAT_EQ(job.last_val_loss(), 3.75f);
  EXPECT_DOUBLE_EQ(job.last_mfu(), 0.29);
  EXPECT_EQ(job.last_a2a_bytes_sent(), 2400u);
  EXPECT_EQ(job.last_a2a_bytes_uncompressed(), 4000u);
  ASSERT_EQ(job.workers_size(), 2);
  EXPECT_EQ(job.workers(0).memory_bytes(), 1u << 20);
  EXPECT_EQ(job.workers(0).peak_memory_bytes(), 4u << 20);
  EXPECT_EQ(job.workers(0).device_memory_bytes(), 4ull << 30);
  EXPECT_FALSE(job.workers(1).has_device_memory_bytes());

  auto list = f.Authed("/api/jobs");
  ASSERT_TRUE(list);
  auto jobs = nlohmann::json::parse(list->body)["list"]["jobs"];
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0]["id"], id);
  EXPECT_EQ(jobs[0]["state"], "RUNNING");

  auto m = f.Authed("/api/jobs/" + id + "/metrics?after_step=1&limit=2");
  ASSERT_TRUE(m);
  ASSERT_EQ(m->status, 200);
  v1::GetMetricsResponse metrics;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(m->body, &metrics).ok());
  ASSERT_EQ(metrics.metrics_size(), 2);
  EXPECT_EQ(metrics.metrics(0).step(), 2);
  EXPECT_EQ(metrics.metrics(1).step(), 3);
  ASSERT_EQ(metrics.metrics(0).expert_load_size(), 2);
  EXPECT_EQ(metrics.metrics(0).expert_load(1).layer(), 3);
  EXPECT_EQ(metrics.metrics(0).expert_load(1).tokens(3), 40 + 2 + 3);
  EXPECT_EQ(metrics.metrics(1).a2a_bytes_sent(), 1800u);
  EXPECT_FALSE(metrics.metrics(1).has_val_loss());

  for (const std::string bad : {"?after_step=x", "?limit=0", "?limit=10001", "?limit=2x"}) {
    auto b = f.Authed("/api/jobs/" + id + "/metrics" + bad);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->status, 400) << bad;
  }
  auto unknown = f.Authed("/api/jobs/job-999999");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_NE(unknown->body.find("job-999999"), std::string::npos);

  auto mem = f.Authed("/api/jobs/" + id + "/memory");
  ASSERT_TRUE(mem);
  ASSERT_EQ(mem->status, 200);
  auto ranks = nlohmann::json::parse(mem->body)["ranks"];
  ASSERT_TRUE(ranks.contains("0") && ranks.contains("1"));
  // Heartbeats closer than the spacing are merged only once the history is full.
  ASSERT_EQ(ranks["0"].size(), 4u);
  EXPECT_EQ(ranks["0"][3][1].get<uint64_t>(), 1u << 20);
  EXPECT_EQ(ranks["0"][3][2].get<uint64_t>(), 4ull << 30);
  EXPECT_TRUE(ranks["1"][0][2].is_null());
}

TEST(Dashboard, ShowsTheMoEFiguresTheWorkerLinkTakesFromTheTrainer) {
  Fixture f;
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  so.token = kToken;
  auto server = CoordinatorServer::Start(f.manager, so);
  ASSERT_TRUE(server.ok()) << server.status().message();
  const std::string id = f.Submit(TinySpec(1, 3));
  CoordinatorLinkOptions lo;
  lo.client.address = "127.0.0.1:" + std::to_string(server.value()->port());
  lo.client.token = testing::WorkerToken(*f.manager, id);
  lo.client.deadline = milliseconds(5000);
  lo.job_id = id;
  auto link = CoordinatorLink::Register(lo);
  ASSERT_TRUE(link.ok()) << link.status().message();
  for (int s = 1; s <= 3; ++s) {
    StepMetrics m;
    m.step = s;
    m.loss = 2.0f;
    if (s > 1) {  // step 1 as a dense model reports it: no MoE figures
      m.expert_load = {{5, 6, 7, 8 + s}, {1, 2, 3, 4}};
      // The job's bytes (all ranks) are reported, not this rank's own.
      m.a2a_bytes = 40 * s;
      m.job_a2a_bytes = 100 * s;
      if (s == 3) {  // step 2: no layer compressed
        m.a2a_bytes_uncompressed = 400;
        m.job_a2a_bytes_uncompressed = 1000;
      }
    }
    // MFU: step 1 without a known peak (0), step 2 above 1 (a peak measured under more
    // contention), neither sent; step 3 sent.
    m.mfu = s == 1 ? 0.0 : s == 2 ? 1.5 : 0.4;
    link.value()->RecordStep(m);
  }
  auto state = link.value()->ReportExit(0, "");
  ASSERT_TRUE(state.ok()) << state.status().message();
  EXPECT_EQ(state.value(), v1::SUCCEEDED);

  auto r = f.Authed("/api/jobs/" + id + "/metrics");
  ASSERT_TRUE(r);
  v1::GetMetricsResponse metrics;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r->body, &metrics).ok());
  ASSERT_EQ(metrics.metrics_size(), 3);
  EXPECT_EQ(metrics.metrics(0).expert_load_size(), 0);
  EXPECT_FALSE(metrics.metrics(0).has_a2a_bytes_sent());
  const v1::StepMetric& last = metrics.metrics(2);
  ASSERT_EQ(last.expert_load_size(), 2);
  EXPECT_EQ(last.expert_load(0).layer(), 0);
  EXPECT_EQ(std::vector<int64_t>(last.expert_load(0).tokens().begin(),
                                 last.expert_load(0).tokens().end()),
            (std::vector<int64_t>{5, 6, 7, 11}));
  EXPECT_EQ(last.expert_load(1).layer(), 1);
  EXPECT_EQ(last.a2a_bytes_sent(), 300u);
  EXPECT_EQ(last.a2a_bytes_uncompressed(), 1000u);
  EXPECT_EQ(metrics.metrics(1).a2a_bytes_sent(), 200u);
  EXPECT_EQ(metrics.metrics(1).a2a_bytes_uncompressed(), 200u) << "plain: all sent";
  EXPECT_FALSE(metrics.metrics(0).has_a2a_bytes_uncompressed());
  EXPECT_FALSE(metrics.metrics(0).has_mfu()) << "no peak, no MFU";
  EXPECT_FALSE(metrics.metrics(1).has_mfu())
      << "outside 0..1: not sent (the heartbeat would be refused)";
  ASSERT_TRUE(last.has_mfu());
  EXPECT_DOUBLE_EQ(last.mfu(), 0.4);
  auto prom = f.Authed("/metrics");
  ASSERT_TRUE(prom);
  EXPECT_NE(prom->body.find("grove_job_a2a_bytes_sent{job=\"" + id + "\",name=\"tiny\"} 300\n"),
            std::string::npos)
      << prom->body;
}

TEST(Dashboard, MemoryHistoryStaysBoundedAndSpansTheJob) {
  ManagerOptions mo;
  mo.heartbeat_interval = milliseconds(1);
  Fixture f(mo);
  const std::string id = f.Submit(TinySpec(1, 100000));
  f.Register(id, 0, 1);
  std::map<int, std::vector<JobManager::MemorySample>> h;
  const int beats = int(JobManager::kMemorySamples) * 3;
  int64_t first = 0;
  for (int i = 0; i < beats; ++i) {
    v1::HeartbeatRequest hb;
    hb.set_job_id(id);
    hb.set_step(i);
    hb.set_memory_bytes(uint64_t(i + 1));
    f.Beat(hb);
    if (i == 0) {
      ASSERT_TRUE(f.manager->MemoryHistory(id, &h).ok());
      first = h[0].at(0).time_unix_ms;
    }
    if (i % 64 == 0) std::this_thread::sleep_for(milliseconds(2));
  }
  ASSERT_TRUE(f.manager->MemoryHistory(id, &h).ok());
  const auto& s = h.at(0);
  EXPECT_LE(s.size(), JobManager::kMemorySamples);
  EXPECT_GE(s.size(), JobManager::kMemorySamples / 4);
  EXPECT_EQ(s.front().time_unix_ms, first) << "the history starts with the first heartbeat";
  EXPECT_EQ(s.front().memory_bytes, 1u);
  for (size_t i = 1; i < s.size(); ++i) {
    EXPECT_LE(s[i - 1].time_unix_ms, s[i].time_unix_ms);
    EXPECT_LT(s[i - 1].memory_bytes, s[i].memory_bytes);
  }
  EXPECT_EQ(f.manager->MemoryHistory("job-999999", &h).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(Dashboard, PrometheusTextHasEveryFamilyAndEscapesLabels) {
  v1::Job running;
  running.set_id("job-000002");
  running.mutable_spec()->set_name("a \"quoted\"\\name\nx");
  running.set_state(v1::RUNNING);
  running.set_last_step(42);
  running.set_total_steps(100);
  running.set_last_loss(2.5f);
  running.set_tokens_per_s(12345.25);
  running.set_last_mfu(0.375);
  running.set_last_a2a_bytes_sent(3000);
  running.set_last_a2a_bytes_uncompressed(5000);
  running.set_attempt(1);
  for (int r = 0; r < 2; ++r) {
    v1::WorkerInfo* w = running.add_workers();
    w->set_rank(r);
    w->set_host("h" + std::to_string(r));
    w->set_step(41 + r);
    w->set_memory_bytes(1000 + r);
    w->set_last_heartbeat_unix_ms(10000 - 500 * r);
    if (r == 1) w->set_device_memory_bytes(777);
  }
  v1::Job done;
  done.set_id("job-000001");
  done.set_state(v1::SUCCEEDED);
  done.set_last_step(10);
  done.set_total_steps(10);
  done.set_last_loss(1.0f / 3.0f);
  done.set_tokens_per_s(99);
  done.set_last_val_loss(0.5f);
  done.add_workers()->set_host("old");

  const std::string text = PrometheusText({running, done}, 11000);
  auto has = [&](const std::string& line) {
    EXPECT_NE(text.find(line + "\n"), std::string::npos) << "missing: " << line << "\n" << text;
  };
  const std::string rl = "job=\"job-000002\",name=\"a \\\"quoted\\\"\\\\name\\nx\"";
  const std::string dl = "job=\"job-000001\",name=\"\"";
  has("# TYPE grove_job_state gauge");
  has("grove_job_state{" + rl + ",state=\"RUNNING\"} 1");
  has("grove_job_state{" + rl + ",state=\"PENDING\"} 0");
  has("grove_job_state{" + dl + ",state=\"SUCCEEDED\"} 1");
  has("grove_job_step{" + rl + "} 42");
  has("grove_job_total_steps{" + rl + "} 100");
  has("grove_job_attempt{" + rl + "} 1");
  has("grove_job_loss{" + rl + "} 2.5");
  has("grove_job_loss{" + dl + "} 0.3333333432674408");  // the float, exactly
  has("grove_job_tokens_per_second{" + rl + "} 12345.25");
  has("grove_job_mfu{" + rl + "} 0.375");
  has("grove_job_a2a_bytes_sent{" + rl + "} 3000");
  has("grove_job_a2a_bytes_uncompressed{" + rl + "} 5000");
  has("grove_job_val_loss{" + dl + "} 0.5");
  has("grove_worker_heartbeat_age_seconds{job=\"job-000002\",rank=\"0\",host=\"h0\"} 1");
  has("grove_worker_heartbeat_age_seconds{job=\"job-000002\",rank=\"1\",host=\"h1\"} 1.5");
  has("grove_worker_step{job=\"job-000002\",rank=\"1\",host=\"h1\"} 42");
  has("grove_worker_memory_bytes{job=\"job-000002\",rank=\"0\",host=\"h0\"} 1000");
  has("grove_worker_device_memory_bytes{job=\"job-000002\",rank=\"1\",host=\"h1\"} 777");
  // Absent figures are not invented; finished jobs have no live workers.
  EXPECT_EQ(text.find("grove_job_val_loss{" + rl), std::string::npos);
  EXPECT_EQ(text.find("grove_job_mfu{" + dl), std::string::npos);
  EXPECT_EQ(text.find("host=\"old\""), std::string::npos);
  EXPECT_EQ(text.find("device_memory_bytes{job=\"job-000002\",rank=\"0\""), std::string::npos);
  // Each family is declared once, HELP before TYPE, and every sample line belongs to one.
  std::set<std::string> declared;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# TYPE ", 0) == 0) {
      const std::string name = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_TRUE(declared.insert(name).second) << name;
    } else if (line[0] != '#') {
      const std::string name = line.substr(0, line.find_first_of("{ "));
      EXPECT_TRUE(declared.count(name)) << line;
    }
  }
}

TEST(Dashboard, ListensOnLoopbackByDefaultAndRejectsBadAddresses) {
  TempDir dir;
  auto store = JobStore::Open(dir.file("db"));
  ASSERT_TRUE(store.ok());
  std::shared_ptr<JobManager> m = JobManager::Create(std::move(store).value(), {}).value();
  DashboardOptions o;
  o.token = "dashboard-token";
  o.listen = "0";  // a bare port binds 127.0.0.1
  auto d = Dashboard::Start(m, o);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d.value()->host(), "127.0.0.1");
  EXPECT_GT(d.value()->port(), 0);
  for (const std::string bad : {"", "x", "127.0.0.1:", "127.0.0.1:70000", ":80", "1.2.3.4:-1"}) {
    o.listen = bad;
    EXPECT_FALSE(Dashboard::Start(m, o).ok()) << bad;
  }
  o.listen = "127.0.0.1:" + std::to_string(d.value()->port());
  EXPECT_FALSE(Dashboard::Start(m, o).ok()) << "the port is taken";
  o.listen = "127.0.0.1:0";
  o.token.clear();
  EXPECT_FALSE(Dashboard::Start(m, o).ok()) << "no token";
}

// A raw TCP connection to the dashboard that sends `prefix` and then one byte every 100 ms.
class SlowClient {
 public:
  SlowClient(int port, std::string prefix) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (connected_) (void)!::send(fd_, prefix.data(), prefix.size(), MSG_NOSIGNAL);
  }
  ~SlowClient() { ::close(fd_); }
  // False once the server closed the connection.
  bool Drip() {
    const char c = 'x';
    return ::send(fd_, &c, 1, MSG_NOSIGNAL) == 1;
  }
  bool connected() const { return connected_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

TEST(Dashboard, SlowConnectionsDoNotStarveItAndAreCutOff) {
  Fixture f;
  // 40 clients that send a request a byte at a time (more than the old 16-thread pool).
  std::vector<std::unique_ptr<SlowClient>> slow;
  for (int i = 0; i < 40; ++i) {
    slow.push_back(
        std::make_unique<SlowClient>(f.dashboard->port(), "GET /api/jobs HTTP/1.1\r\nX:"));
    ASSERT_TRUE(slow.back()->connected());
  }
  std::atomic<bool> stop{false};
  std::thread dripper([&] {
    while (!stop.load()) {
      for (auto& s : slow) s->Drip();
      std::this_thread::sleep_for(milliseconds(100));
    }
  });
  // Authorized requests are answered promptly meanwhile.
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = f.Authed("/api/jobs");
    const auto ms = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0);
    ASSERT_TRUE(r) << "request " << i << " got no answer";
    EXPECT_EQ(r->status, 200);
    EXPECT_LT(ms.count(), 3000) << "request " << i;
  }
  stop = true;
  dripper.join();
  // The slow clients are cut off once their request took longer than the request timeout.
  std::this_thread::sleep_for(milliseconds(5500));
  int open = 0;
  for (auto& s : slow) {
    bool alive = true;
    for (int k = 0; k < 3 && alive; ++k) {
      alive = s->Drip();
      std::this_thread::sleep_for(milliseconds(20));
    }
    open += alive;
  }
  EXPECT_EQ(open, 0) << "connections still open after the request timeout";
}

// Predicted beside measured step time: with a cluster description the job's layout carries the
// cost model's step time for that layout (a fixed layout and one the cost model chose), the
// job the latest measured step time; without one the prediction is absent and the note says why.
TEST(Dashboard, JobShowsPredictedBesideMeasuredStepTime) {
  planner::ClusterSpec cluster;
  cluster.name = "two-cores";
  cluster.devices_per_node = 2;  // the jobs' world: ranks_per_host is left at 0
  cluster.max_nodes = 1;
  cluster.device.peak_fp32 = 40e9;
  cluster.device.memory_bytes = 8.0 * (1 << 30);
  cluster.device.memory_bandwidth = 10e9;
  cluster.intra = {5e9, 5e-6, 1.0};
  cluster.intra_topology = planner::IntraTopology::kShared;
  cluster.inter_topology = planner::InterTopology::kNone;
  cluster.shared_cores = 2;
  ASSERT_TRUE(cluster.Validate().ok()) << cluster.Validate().message();
  ManagerOptions mo;
  mo.cluster = cluster;
  Fixture f(mo);

  // An MoE model (4 experts, top-2) on 2 ranks.
  v1::JobSpec spec = TinySpec(2);
  nlohmann::json cj = nlohmann::json::parse(spec.config_json());
  cj["model"]["n_layers"] = 2;
  cj["model"]["moe"] = {{"num_experts", 4}, {"top_k", 2}, {"every", 2}};
  cj["train"]["batch_size"] = 4;
  cj["train"]["grad_accum"] = 2;
  spec.set_config_json(cj.dump());
  auto config = TrainConfigFromJson(cj);
  ASSERT_TRUE(config.ok()) << config.status().message();

  // The cost model's own prediction for the layout the job got.
  auto expected_ms = [&](const v1::Layout& l) {
    planner::Workload w;
    w.model = config.value().model;
    w.seq_len = config.value().train.seq_len;
    w.precision = Precision::kFp32;
    planner::Layout pl;
    pl.tp = l.tp(), pl.cp = l.cp(), pl.ep = l.ep(), pl.dp = l.dp();
    auto rc = parse_recompute(l.recompute(), "recompute");
    EXPECT_TRUE(rc.ok());
    pl.recompute = rc.value();
    pl.sp = l.sequence_parallel();
    pl.micro_batch = 4 / l.dp();
    pl.grad_accum = 2;
    EXPECT_TRUE(planner::CheckLayout(w, pl, cluster).ok());
    return 1e3 * planner::Predict(w, pl, cluster).step_s;
  };
  auto job_json = [&](const std::string& id) {
    auto r = f.Authed("/api/jobs/" + id);
    EXPECT_TRUE(r && r->status == 200);
    return nlohmann::json::parse(r ? r->body : "{}")["job"];
  };

  // A fixed layout (tp 1, ep 2, dp 2, full recompute): predicted, not chosen, by the cost model.
  v1::JobSpec fixed = spec;
  fixed.mutable_parallel()->set_tp(1);
  fixed.mutable_parallel()->set_cp(1);
  fixed.mutable_parallel()->set_ep(2);
  fixed.mutable_parallel()->set_recompute("full");
  const std::string fixed_id = f.Submit(fixed);
  nlohmann::json j = job_json(fixed_id);
  ASSERT_TRUE(j["layout"].contains("predicted_step_ms")) << j.dump();
  EXPECT_EQ(j["layout"]["ep"], 2);
  EXPECT_EQ(j["layout"]["recompute"], "full");
  v1::Job got;
  ASSERT_TRUE(f.manager->Get(fixed_id, &got).ok());
  EXPECT_DOUBLE_EQ(j["layout"]["predicted_step_ms"].get<double>(), expected_ms(got.layout()));
  EXPECT_NE(j["layout"]["prediction_note"].get<std::string>().find("cost model on two-cores"),
            std::string::npos);
  EXPECT_FALSE(j.contains("last_step_ms")) << "nothing measured yet";

  // An open layout: the cost model's choice, predicted at that layout.
  const std::string open_id = f.Submit(spec);
  ASSERT_TRUE(f.manager->Get(open_id, &got).ok());
  j = job_json(open_id);
  EXPECT_DOUBLE_EQ(j["layout"]["predicted_step_ms"].get<double>(), expected_ms(got.layout()));

  // The measured step time follows the latest step.
  f.Register(open_id, 0, 2);
  f.Register(open_id, 1, 2);
  for (int64_t step = 1; step <= 2; ++step) {
    v1::HeartbeatRequest hb;
    hb.set_job_id(open_id);
    hb.set_rank(0);
    hb.set_step(step);
    v1::StepMetric* m = hb.add_metrics();
    m->set_step(step);
    m->set_loss(4.0f);
    m->set_step_ms(100.0 * double(step) + 0.25);
    f.Beat(hb);
  }
  j = job_json(open_id);
  EXPECT_DOUBLE_EQ(j["last_step_ms"].get<double>(), 200.25);
  auto metrics = f.Authed("/metrics");
  ASSERT_TRUE(metrics && metrics->status == 200);
  char line[128];
  std::snprintf(line, sizeof line, "grove_job_step_seconds{job=\"%s\",name=\"tiny\"} 0.20025\n",
                open_id.c_str());
  EXPECT_NE(metrics->body.find(line), std::string::npos) << metrics->body;
  EXPECT_NE(metrics->body.find("grove_job_predicted_step_seconds{job=\"" + open_id),
            std::string::npos);

  // Without a cluster description: no prediction, and the note says why.
  Fixture plain;
  const std::string plain_id = plain.Submit(fixed);
  auto r = plain.Authed("/api/jobs/" + plain_id);
  ASSERT_TRUE(r && r->status == 200);
  j = nlohmann::json::parse(r->body)["job"];
  EXPECT_FALSE(j["layout"].contains("predicted_step_ms")) << j.dump();
  EXPECT_NE(j["layout"]["prediction_note"].get<std::string>().find("no cluster description"),
            std::string::npos);
  auto pm = plain.Authed("/metrics");
  ASSERT_TRUE(pm && pm->status == 200);
  EXPECT_EQ(pm->body.find("grove_job_predicted_step_seconds{"), std::string::npos);
}

}  // namespace
}  // namespace grove::coordinator
