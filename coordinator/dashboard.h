// Dashboard: the coordinator's HTTP side (docs/dashboard.md). A page that follows jobs live (job
// list, state timeline, loss, tokens/s, MFU, memory per rank, expert load, all-to-all bytes,
// layout, config), the JSON it polls, and /metrics in the Prometheus text format. Read only:
// nothing served over HTTP changes a job.
//
// Auth: the same bearer token as the gRPC API, on every path. A request is let in with
//   - the header `Authorization: Bearer <token>` (scrapers, scripts), or
//   - the cookie set by opening `/?token=<token>` once: the server checks the token, sets an
//     HttpOnly SameSite=Strict cookie and redirects to `/`, so the page, its files and its API
//     calls carry the token without it staying in the address bar.
// Anything else is 401 and reveals nothing about jobs. Binds 127.0.0.1 unless told otherwise; it
// serves plain HTTP, so a non-loopback address exposes the token to the network (main.cc warns).
//
// RAII: serves from Start() until Stop() or destruction. Requests run on a small thread pool.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/job_manager.h"
#include "core/status.h"
#include "proto/grove.pb.h"

namespace httplib {
class Server;
struct Request;
}  // namespace httplib

namespace grove::coordinator {

struct DashboardOptions {
  std::string listen = "127.0.0.1:0";  // host:port, or a bare port (then 127.0.0.1); 0 = free
  std::string token;                   // empty only with allow_no_auth
  bool allow_no_auth = false;
  int threads = 16;      // a browser keeps up to 6 connections open (keep-alive holds a thread)
  int list_limit = 100;  // newest jobs shown and exported to /metrics
};

class Dashboard {
 public:
  static StatusOr<std::unique_ptr<Dashboard>> Start(std::shared_ptr<JobManager> manager,
                                                    const DashboardOptions& options);
  ~Dashboard();
  Dashboard(const Dashboard&) = delete;
  Dashboard& operator=(const Dashboard&) = delete;

  int port() const { return port_; }
  const std::string& host() const { return host_; }
  void Stop();

 private:
  Dashboard() = default;
  bool Authorized(const httplib::Request& req) const;
  std::string CookieName() const;

  std::shared_ptr<JobManager> manager_;
  DashboardOptions options_;
  std::string host_;
  int port_ = 0;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

// The Prometheus text exposition (format 0.0.4) of `jobs` at time `now_unix_ms`: per job its
// state, step, losses, tokens/s, MFU and all-to-all bytes; per live worker its heartbeat age,
// step and memory. Optional figures appear only once reported.
std::string PrometheusText(const std::vector<grove::v1::Job>& jobs, int64_t now_unix_ms);

// Constant-time comparison (in the length of `want`).
bool SecretEquals(const std::string& got, const std::string& want);

}  // namespace grove::coordinator
