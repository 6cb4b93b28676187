// Dashboard: the coordinator's HTTP side (docs/dashboard.md). A page that follows jobs live (job
// list, state timeline, loss, tokens/s, MFU, memory per rank, expert load, all-to-all bytes,
// layout, config), the JSON it polls, and /metrics in the Prometheus text format. Read only:
// nothing served over HTTP changes a job.
//
// Auth: a user or admin token of the gRPC API (coordinator/auth.h), on every path. A request is
// let in with
//   - the header `Authorization: Bearer <token>` (scrapers, scripts), or
//   - the session cookie set by opening `/?token=<token>` once: the server checks the token, sets
//     an HttpOnly SameSite=Strict cookie holding a random session id (not the token; valid 12 h,
//     on this dashboard only) and redirects to `/`, so the token leaves the address bar.
// Anything else is 401 (a worker credential: 403) and reveals nothing about jobs. Binds
// 127.0.0.1 unless told otherwise; it serves plain HTTP, so a non-loopback address exposes the
// token to the network (main.cc warns).
//
// Connections: one request per connection (no keep-alive), at most max_connections at once,
// each on its own thread; a request must arrive completely within request_timeout of the
// connection, so slow or idle clients cannot hold the dashboard.
//
// RAII: serves from Start() until Stop() or destruction.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/auth.h"
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
  // Who may look: the coordinator's authenticator, or (when null) one built from these two.
  std::shared_ptr<const Authenticator> authenticator;
  std::string token;
  bool allow_no_auth = false;
  int max_connections = 256;                           // served at once; more are closed
  std::chrono::milliseconds request_timeout{5000};     // to receive a whole request
  std::chrono::milliseconds write_timeout{5000};       // per write of the answer
  int list_limit = 100;  // newest jobs shown and exported to /metrics
  size_t max_sessions = 1024;                          // signed-in browsers remembered
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
  class HttpServer;
  Dashboard() = default;
  // 200 (let in), 401 or 403.
  int Authorize(const httplib::Request& req);
  std::string CookieName() const;
  std::string NewSession();

  std::shared_ptr<JobManager> manager_;
  DashboardOptions options_;
  std::shared_ptr<const Authenticator> auth_;
  std::mutex sessions_mu_;
  std::map<std::string, std::chrono::steady_clock::time_point> sessions_;  // id -> expiry
  std::string host_;
  int port_ = 0;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

// The Prometheus text exposition (format 0.0.4) of `jobs` at time `now_unix_ms`: per job its
// state, step, losses, tokens/s, MFU and all-to-all bytes; per live worker its heartbeat age,
// step and memory. Optional figures appear only once reported.
std::string PrometheusText(const std::vector<grove::v1::Job>& jobs, int64_t now_unix_ms);


}  // namespace grove::coordinator
