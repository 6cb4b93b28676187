// A stand-in worker for the dashboard tests: registers as the single rank of a world-1 job and
// heartbeats synthetic per-step figures that the trainer does not report yet (tokens per expert
// per MoE layer, all-to-all bytes with and without LSH compression, MFU, device memory), then
// reports a clean exit at train.steps. The figures are deterministic functions of the step, so a
// test can check what the dashboard and /metrics show against them.
//   dashboard_feeder --coordinator 127.0.0.1:PORT --job job-000002 --steps 60 --interval-ms 50
// Loopback only. Token from GROVE_TOKEN / GROVE_TOKEN_FILE.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <thread>

#include "proto/client.h"

namespace {

namespace v1 = grove::v1;

int Fail(const std::string& m) {
  std::fprintf(stderr, "dashboard_feeder: %s\n", m.c_str());
  return 1;
}

// Step `s` of the synthetic run.
v1::StepMetric Synthetic(int64_t s, int layers, int experts) {
  v1::StepMetric m;
  m.set_step(s);
  m.set_loss(float(9.0 * std::exp(-0.03 * double(s)) + 2.0));
  m.set_lr(1e-3f);
  m.set_tokens_per_s(1000.0 + 10.0 * double(s));
  if (s % 10 == 0) {
    m.set_has_val_loss(true);
    m.set_val_loss(float(9.0 * std::exp(-0.03 * double(s)) + 2.2));
  }
  m.set_mfu(0.30 + 0.001 * double(s % 50));
  const uint64_t raw = 1000000 + 1000 * uint64_t(s);
  m.set_a2a_bytes_uncompressed(raw);
  m.set_a2a_bytes_sent(raw * 3 / 5);  // 40 % saved
  for (int l = 0; l < layers; ++l) {
    v1::ExpertLoad* load = m.add_expert_load();
    load->set_layer(l);
    // A hot expert that moves with the step, over a balanced floor.
    const int hot = int((s / 8 + l) % experts);
    for (int e = 0; e < experts; ++e) load->add_tokens(e == hot ? 400 : 100 + 10 * ((e + l) % 3));
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Synthetic MoE worker for the dashboard tests"};
  grove::rpc::ClientOptions client;
  std::string job;
  int64_t steps = 60;
  int interval_ms = 50, layers = 2, experts = 8;
  app.add_option("--coordinator", client.address)->required();
  app.add_option("--job", job)->required();
  app.add_option("--steps", steps)->check(CLI::PositiveNumber);
  app.add_option("--interval-ms", interval_ms)->check(CLI::Range(1, 10000));
  app.add_option("--layers", layers)->check(CLI::Range(1, 64));
  app.add_option("--experts", experts)->check(CLI::Range(1, 1024));
  CLI11_PARSE(app, argc, argv);
  if (client.address.rfind("127.0.0.1:", 0) != 0 && client.address.rfind("localhost:", 0) != 0)
    return Fail("loopback addresses only");
  auto token = grove::rpc::ResolveWorkerToken();  // the job's worker credential
  if (!token.ok()) return Fail(token.status().message());
  if (token.value().empty()) return Fail("set GROVE_WORKER_TOKEN (grove worker-token JOB)");
  client.token = token.value();
  client.deadline = std::chrono::milliseconds(5000);
  auto channel = grove::rpc::MakeChannel(client);
  if (!channel.ok()) return Fail(channel.status().message());
  auto stub = v1::Coordinator::NewStub(channel.value());

  v1::RegisterWorkerRequest reg;
  reg.set_job_id(job);
  reg.set_rank(0);
  reg.set_world_size(1);
  reg.set_host("feeder");
  reg.set_pid(int(getpid()));
  reg.set_devices("synthetic");
  v1::RegisterWorkerResponse assignment;
  {
    grpc::ClientContext ctx;
    grove::rpc::PrepareContext(&ctx, client.token, client.deadline);
    grpc::Status st = stub->RegisterWorker(&ctx, reg, &assignment);
    if (!st.ok()) return Fail("register: " + grove::rpc::DescribeStatus(st));
  }
  for (int64_t s = 1; s <= steps; ++s) {
    v1::HeartbeatRequest hb;
    hb.set_job_id(job);
    hb.set_rank(0);
    hb.set_attempt(assignment.attempt());
    hb.set_step(s);
    hb.set_memory_bytes(uint64_t(100 + s) << 20);
    hb.set_device_memory_bytes(uint64_t(2000 + 10 * s) << 20);
    *hb.add_metrics() = Synthetic(s, layers, experts);
    grpc::ClientContext ctx;
    grove::rpc::PrepareContext(&ctx, client.token, client.deadline);
    v1::HeartbeatResponse reply;
    grpc::Status st = stub->Heartbeat(&ctx, hb, &reply);
    if (!st.ok()) return Fail("heartbeat: " + grove::rpc::DescribeStatus(st));
    if (reply.action() == v1::ACTION_STOP || reply.action() == v1::ACTION_ABORT) {
      steps = s;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
  v1::ReportExitRequest exit;
  exit.set_job_id(job);
  exit.set_rank(0);
  exit.set_attempt(assignment.attempt());
  exit.set_exit_code(0);
  exit.set_final_step(steps);
  v1::ReportExitResponse resp;
  grpc::ClientContext ctx;
  grove::rpc::PrepareContext(&ctx, client.token, client.deadline);
  grpc::Status st = stub->ReportExit(&ctx, exit, &resp);
  if (!st.ok()) return Fail("exit: " + grove::rpc::DescribeStatus(st));
  std::printf("fed %lld steps to %s: %s\n", static_cast<long long>(steps), job.c_str(),
              grove::rpc::StateName(resp.state()).c_str());
  return 0;
}
