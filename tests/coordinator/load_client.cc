// Load client for grove-coordinator: N concurrent clients, half following WatchJob (with
// metrics), half polling GetJob every --period-ms, for --seconds. Prints one JSON line with call
// counts, errors and latency percentiles; exits 1 if any call failed.
//   grove-coordinator-load --coordinator 127.0.0.1:PORT --job job-000001 --clients 1000
// Loopback only: the address must be 127.0.0.1 / localhost.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "proto/client.h"

namespace {

namespace v1 = grove::v1;
using Clock = std::chrono::steady_clock;

struct Stats {
  std::mutex mu;
  std::vector<double> get_ms, first_event_ms;
  std::atomic<int64_t> errors{0}, events{0};
  std::string first_error;
  void Error(const grpc::Status& st) {
    ++errors;
    std::lock_guard<std::mutex> l(mu);
    if (first_error.empty()) first_error = grove::rpc::DescribeStatus(st);
  }
};

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}

class Watcher : public grpc::ClientReadReactor<v1::JobEvent> {
 public:
  Watcher(v1::Coordinator::Stub* stub, const std::string& token, const std::string& job,
          Stats* stats, std::chrono::milliseconds deadline)
      : stats_(stats) {
    grove::rpc::PrepareContext(&ctx_, token, deadline);
    req_.set_job_id(job);
    req_.set_follow(true);
    req_.set_include_metrics(true);
    start_ = Clock::now();
    stub->async()->WatchJob(&ctx_, &req_, this);
    StartRead(&event_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    ++stats_->events;
    if (!got_first_) {
      got_first_ = true;
      std::lock_guard<std::mutex> l(stats_->mu);
      stats_->first_event_ms.push_back(Ms(Clock::now() - start_));
    }
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& st) override {
    // Ended by us (cancel) or because the job finished: both fine.
    if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) stats_->Error(st);
    if (!got_first_ && st.ok()) stats_->Error(grpc::Status(grpc::StatusCode::INTERNAL, "no event"));
    std::lock_guard<std::mutex> l(mu_);
    done_ = true;
    cv_.notify_all();
  }
  void Cancel() { ctx_.TryCancel(); }
  void Wait() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [this] { return done_; });
  }

 private:
  Stats* stats_;
  grpc::ClientContext ctx_;
  v1::WatchJobRequest req_;
  v1::JobEvent event_;
  Clock::time_point start_;
  bool got_first_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

struct Poller {
  std::unique_ptr<grpc::ClientContext> ctx;
  v1::GetJobRequest req;
  v1::Job resp;
  std::atomic<bool> busy{false};
  Clock::time_point next;
  Clock::time_point sent;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"grove-coordinator-load: concurrent status/watch clients"};
  std::string address, job, token_file;
  int clients = 1000, channels = 16, period_ms = 200;
  double seconds = 10;
  app.add_option("--coordinator", address, "host:port (loopback only)")->required();
  app.add_option("--job", job, "job to watch and poll")->required();
  app.add_option("--token-file", token_file, "bearer token file (or GROVE_TOKEN[_FILE])");
  app.add_option("--clients", clients, "concurrent clients (half watch, half poll)")
      ->check(CLI::Range(2, 5000));
  app.add_option("--channels", channels, "TCP connections to spread the clients over")
      ->check(CLI::Range(1, 256));
  app.add_option("--period-ms", period_ms, "time between one poller's GetJob calls")
      ->check(CLI::Range(1, 60000));
  app.add_option("--seconds", seconds, "duration")->check(CLI::Range(0.5, 300.0));
  CLI11_PARSE(app, argc, argv);
  if (address.rfind("127.", 0) != 0 && address.rfind("localhost:", 0) != 0) {
    std::fprintf(stderr, "grove-coordinator-load: loopback addresses only, got %s\n",
                 address.c_str());
    return 2;
  }
  auto token = grove::rpc::ResolveToken("", token_file);
  if (!token.ok()) {
    std::fprintf(stderr, "grove-coordinator-load: %s\n", token.status().message().c_str());
    return 2;
  }
  std::vector<std::unique_ptr<v1::Coordinator::Stub>> stubs;
  for (int i = 0; i < channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("grove.load.channel", i);  // distinct args: one connection per channel
    stubs.push_back(v1::Coordinator::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args)));
  }
  Stats stats;
  const int n_watch = clients / 2, n_poll = clients - n_watch;
  const auto deadline = std::chrono::milliseconds(int64_t(seconds * 1000) + 30000);
  const auto t0 = Clock::now();
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < n_watch; ++i)
    watchers.push_back(
        std::make_unique<Watcher>(stubs[i % channels].get(), token.value(), job, &stats, deadline));
  std::vector<Poller> pollers(n_poll);
  for (int i = 0; i < n_poll; ++i) {
    pollers[i].req.set_job_id(job);
    pollers[i].next = t0 + std::chrono::milliseconds(period_ms * i / n_poll);  // staggered
  }
  const auto end = t0 + std::chrono::milliseconds(int64_t(seconds * 1000));
  std::atomic<int64_t> in_flight{0};
  while (Clock::now() < end) {
    const auto now = Clock::now();
    for (int i = 0; i < n_poll; ++i) {
      Poller& p = pollers[i];
      if (p.busy.load() || now < p.next) continue;
      p.busy = true;
      p.next = now + std::chrono::milliseconds(period_ms);
      p.ctx = std::make_unique<grpc::ClientContext>();
      grove::rpc::PrepareContext(p.ctx.get(), token.value(), std::chrono::seconds(10));
      p.sent = Clock::now();
      ++in_flight;
      stubs[i % channels]->async()->GetJob(p.ctx.get(), &p.req, &p.resp,
                                           [&stats, &p, &in_flight](grpc::Status st) {
                                             const double ms = Ms(Clock::now() - p.sent);
                                             if (st.ok()) {
                                               std::lock_guard<std::mutex> l(stats.mu);
                                               stats.get_ms.push_back(ms);
                                             } else {
                                               stats.Error(st);
                                             }
                                             --in_flight;
                                             p.busy = false;
                                           });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  while (in_flight.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  for (auto& w : watchers) w->Cancel();
  for (auto& w : watchers) w->Wait();
  const double elapsed = Ms(Clock::now() - t0) / 1000;

  std::lock_guard<std::mutex> l(stats.mu);
  std::printf(
      "{\"name\": \"coordinator_load\", \"clients\": %d, \"watchers\": %d, \"pollers\": %d, "
      "\"channels\": %d, \"seconds\": %.1f, \"get_calls\": %zu, \"get_qps\": %.0f, "
      "\"get_p50_ms\": %.2f, \"get_p99_ms\": %.2f, \"get_max_ms\": %.2f, "
      "\"watch_first_event_p50_ms\": %.2f, \"watch_first_event_p99_ms\": %.2f, "
      "\"watch_events\": %lld, \"errors\": %lld%s%s%s}\n",
      clients, n_watch, n_poll, channels, elapsed, stats.get_ms.size(),
      double(stats.get_ms.size()) / elapsed, Percentile(stats.get_ms, 0.5),
      Percentile(stats.get_ms, 0.99), Percentile(stats.get_ms, 1.0),
      Percentile(stats.first_event_ms, 0.5), Percentile(stats.first_event_ms, 0.99),
      (long long)stats.events.load(), (long long)stats.errors.load(),
      stats.first_error.empty() ? "" : ", \"first_error\": \"", stats.first_error.c_str(),
      stats.first_error.empty() ? "" : "\"");
  const bool ok = stats.errors.load() == 0 && int(stats.first_event_ms.size()) == n_watch;
  if (!ok)
    std::fprintf(stderr, "grove-coordinator-load: %lld errors, %zu of %d watchers got events\n",
                 (long long)stats.errors.load(), stats.first_event_ms.size(), n_watch);
  return ok ? 0 : 1;
}
