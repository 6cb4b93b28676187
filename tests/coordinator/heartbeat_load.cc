// Heartbeat load: what a maximal legal heartbeat costs everyone else. Submits a job of its own,
// obtains its worker credential, registers rank 0 and sends maximal heartbeats back to back
// (256 metrics carrying 65,536 expert-load counts in all, 16 checkpoint records: the
// coordinator's limits) for --seconds, while --pollers threads call GetJob on --job (another job,
// e.g. one that real workers train) and time every call. Prints one JSON line; exits 1 when a
// call failed, when the GetJob p99 is --max-p99-ms or more, or when --job is no longer RUNNING.
//   grove-coordinator-heartbeat-load --coordinator 127.0.0.1:PORT --job job-000001
//       --data-dir DIR --out-dir DIR
// Loopback only.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "proto/client.h"

namespace {

namespace v1 = grove::v1;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}

int Fail(const std::string& what, const grpc::Status& st) {
  std::fprintf(stderr, "grove-coordinator-heartbeat-load: %s: %s\n", what.c_str(),
               grove::rpc::DescribeStatus(st).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"grove-coordinator-heartbeat-load: GetJob latency under maximal heartbeats"};
  std::string address, job, token_file, data_dir, out_dir;
  int pollers = 8;
  double seconds = 8, max_p99_ms = 100;
  app.add_option("--coordinator", address, "host:port (loopback only)")->required();
  app.add_option("--job", job, "the job whose GetJob is timed")->required();
  app.add_option("--token-file", token_file, "user token file (or GROVE_TOKEN[_FILE])");
  app.add_option("--data-dir", data_dir, "data.dir of the heartbeat job (under a data root)")
      ->required();
  app.add_option("--out-dir", out_dir, "out_dir of the heartbeat job (under a run root)")
      ->required();
  app.add_option("--pollers", pollers, "threads calling GetJob back to back")
      ->check(CLI::Range(1, 64));
  app.add_option("--seconds", seconds, "duration")->check(CLI::Range(0.5, 120.0));
  app.add_option("--max-p99-ms", max_p99_ms, "fail when GetJob's p99 reaches this");
  CLI11_PARSE(app, argc, argv);
  if (address.rfind("127.", 0) != 0 && address.rfind("localhost:", 0) != 0) {
    std::fprintf(stderr, "grove-coordinator-heartbeat-load: loopback addresses only\n");
    return 2;
  }
  auto token = grove::rpc::ResolveToken("", token_file);
  if (!token.ok()) {
    std::fprintf(stderr, "grove-coordinator-heartbeat-load: %s\n",
                 token.status().message().c_str());
    return 2;
  }
  grove::rpc::ClientOptions options;
  options.address = address;
  auto channel = grove::rpc::MakeChannel(options).value();
  auto stub = v1::Coordinator::NewStub(channel);
  auto call = [&](auto method, const auto& req, auto* resp, const std::string& bearer) {
    grpc::ClientContext ctx;
    grove::rpc::PrepareContext(&ctx, bearer, std::chrono::seconds(30));
    return ((*stub).*method)(&ctx, req, resp);
  };

  // The heartbeat job: one rank, steps enough for every heartbeat's metrics.
  const int64_t kSteps = 1000000000;
  nlohmann::json config = {
      {"model",
       {{"vocab_size", 256}, {"d_model", 32}, {"n_layers", 1}, {"n_heads", 2}, {"max_seq_len", 32}}},
      {"train", {{"batch_size", 2}, {"seq_len", 16}, {"steps", kSteps}, {"warmup_steps", 1}}},
      {"data", {{"dir", data_dir}}},
      {"out_dir", out_dir}};
  v1::SubmitJobRequest submit;
  submit.mutable_spec()->set_name("heartbeat-load");
  submit.mutable_spec()->set_config_json(config.dump());
  submit.mutable_spec()->mutable_parallel()->set_world_size(1);
  v1::SubmitJobResponse submitted;
  if (auto st = call(&v1::Coordinator::Stub::SubmitJob, submit, &submitted, token.value());
      !st.ok())
    return Fail("submit", st);
  const std::string own = submitted.job().id();
  v1::IssueWorkerTokenRequest ir;
  ir.set_job_id(own);
  v1::IssueWorkerTokenResponse issued;
  if (auto st = call(&v1::Coordinator::Stub::IssueWorkerToken, ir, &issued, token.value());
      !st.ok())
    return Fail("worker-token", st);
  const std::string worker = issued.worker_token();
  v1::RegisterWorkerRequest reg;
  reg.set_job_id(own);
  reg.set_world_size(1);
  reg.set_host("heartbeat-load");
  reg.set_pid(1);
  v1::RegisterWorkerResponse registered;
  if (auto st = call(&v1::Coordinator::Stub::RegisterWorker, reg, &registered, worker); !st.ok())
    return Fail("register", st);

  // A maximal heartbeat: the limits of proto/grove.proto.
  constexpr int kMetrics = 256, kLayers = 2, kExperts = 128, kCheckpoints = 16;
  int64_t step = 0;
  auto heartbeat = [&] {
    v1::HeartbeatRequest hb;
    hb.set_job_id(own);
    hb.set_memory_bytes(1 << 30);
    for (int i = 0; i < kMetrics; ++i) {
      v1::StepMetric* m = hb.add_metrics();
      m->set_step(++step);
      m->set_loss(3.5f);
      m->set_lr(1e-3f);
      m->set_grad_norm(1.0);
      m->set_tokens_per_s(1e5);
      m->set_a2a_bytes_sent(1000);
      m->set_a2a_bytes_uncompressed(2000);
      for (int l = 0; l < kLayers; ++l) {
        v1::ExpertLoad* load = m->add_expert_load();
        load->set_layer(l);
        for (int e = 0; e < kExperts; ++e) load->add_tokens(e + step);
      }
    }
    for (int i = 0; i < kCheckpoints; ++i) {
      v1::CheckpointRecord* ck = hb.add_checkpoints();
      ck->set_step(step - i);
      char name[64];
      std::snprintf(name, sizeof name, "/checkpoints/step_%08lld", (long long)(step - i));
      ck->set_path(out_dir + name);
    }
    hb.set_step(step);
    return hb;
  };

  std::atomic<bool> stop{false};
  std::atomic<int64_t> errors{0};
  std::mutex mu;
  std::vector<double> get_ms;
  std::string first_error;
  std::vector<std::thread> threads;
  for (int i = 0; i < pollers; ++i)
    threads.emplace_back([&] {
      auto own_stub = v1::Coordinator::NewStub(channel);
      std::vector<double> mine;
      v1::GetJobRequest g;
      g.set_job_id(job);
      while (!stop.load()) {
        grpc::ClientContext ctx;
        grove::rpc::PrepareContext(&ctx, token.value(), std::chrono::seconds(10));
        v1::Job j;
        const auto t0 = Clock::now();
        grpc::Status st = own_stub->GetJob(&ctx, g, &j);
        mine.push_back(Ms(Clock::now() - t0));
        if (!st.ok()) {
          ++errors;
          std::lock_guard<std::mutex> l(mu);
          if (first_error.empty()) first_error = grove::rpc::DescribeStatus(st);
        }
      }
      std::lock_guard<std::mutex> l(mu);
      get_ms.insert(get_ms.end(), mine.begin(), mine.end());
    });
  std::vector<double> beat_ms;
  int64_t bytes = 0;
  const auto end = Clock::now() + std::chrono::milliseconds(int64_t(seconds * 1000));
  while (Clock::now() < end) {
    v1::HeartbeatRequest hb = heartbeat();
    bytes = int64_t(hb.ByteSizeLong());
    v1::HeartbeatResponse hr;
    const auto t0 = Clock::now();
    grpc::Status st = call(&v1::Coordinator::Stub::Heartbeat, hb, &hr, worker);
    beat_ms.push_back(Ms(Clock::now() - t0));
    if (!st.ok()) {
      stop = true;
      for (auto& t : threads) t.join();
      return Fail("a maximal heartbeat was refused", st);
    }
  }
  stop = true;
  for (auto& t : threads) t.join();

  // The other job is still healthy; end the heartbeat job cleanly.
  v1::GetJobRequest g;
  g.set_job_id(job);
  v1::Job other;
  grpc::Status st = call(&v1::Coordinator::Stub::GetJob, g, &other, token.value());
  v1::CancelJobRequest cancel;
  cancel.set_job_id(own);
  v1::Job cancelled;
  (void)call(&v1::Coordinator::Stub::CancelJob, cancel, &cancelled, token.value());
  v1::ReportExitRequest ex;
  ex.set_job_id(own);
  ex.set_final_step(step);
  v1::ReportExitResponse er;
  (void)call(&v1::Coordinator::Stub::ReportExit, ex, &er, worker);

  const double p99 = Percentile(get_ms, 0.99);
  nlohmann::json out = {{"heartbeats", beat_ms.size()},
                        {"heartbeat_bytes", bytes},
                        {"heartbeat_ms_p50", Percentile(beat_ms, 0.5)},
                        {"heartbeat_ms_max", Percentile(beat_ms, 1.0)},
                        {"getjob_calls", get_ms.size()},
                        {"getjob_ms_p50", Percentile(get_ms, 0.5)},
                        {"getjob_ms_p99", p99},
                        {"getjob_ms_max", Percentile(get_ms, 1.0)},
                        {"errors", errors.load()},
                        {"other_job_state", st.ok() ? grove::rpc::StateName(other.state()) : "?"},
                        {"own_job_state", grove::rpc::StateName(er.state())}};
  std::printf("%s\n", out.dump().c_str());
  if (errors.load() > 0) {
    std::fprintf(stderr, "grove-coordinator-heartbeat-load: %lld GetJob calls failed: %s\n",
                 (long long)errors.load(), first_error.c_str());
    return 1;
  }
  if (!st.ok() || other.state() != v1::RUNNING) {
    std::fprintf(stderr, "grove-coordinator-heartbeat-load: job %s is %s (%s), want RUNNING\n",
                 job.c_str(), grove::rpc::StateName(other.state()).c_str(),
                 other.reason().c_str());
    return 1;
  }
  if (p99 >= max_p99_ms) {
    std::fprintf(stderr, "grove-coordinator-heartbeat-load: GetJob p99 %.1f ms >= %.1f ms\n", p99,
                 max_p99_ms);
    return 1;
  }
  return 0;
}
