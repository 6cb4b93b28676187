// grove-coordinator: plans and tracks training jobs (docs/coordinator.md).
//   grove-coordinator --db runs/coordinator/grove.db --token-file runs/coordinator/token
//       --data-root runs --run-root runs
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "coordinator/dashboard.h"
#include "coordinator/server.h"
#include "planner/cluster.h"
#include "proto/client.h"

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "grove-coordinator: error: %s\n", message.c_str());
  return 2;
}

bool IsLoopback(const std::string& listen) {
  return listen.rfind("127.", 0) == 0 || listen.rfind("localhost:", 0) == 0 ||
         listen.rfind("[::1]:", 0) == 0 || listen.rfind("unix:", 0) == 0;
}

void WritePortFile(const std::string& path, int port) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << port << "\n";
  std::filesystem::rename(tmp, path);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Grove coordinator: jobs, worker registration, liveness (gRPC)"};
  grove::coordinator::ServerOptions server;
  std::string db_path = "runs/coordinator/grove.db";
  std::string token_file, port_file, http_listen, http_port_file, admin_token_file;
  std::vector<std::string> data_roots, run_roots;
  double heartbeat_timeout_s = 30, registration_timeout_s = 300, heartbeat_interval_s = 0;
  double pending_timeout_s = 86400;
  grove::coordinator::StoreOptions store_options;
  app.add_option("--listen", server.listen,
                 "host:port to listen on (default 127.0.0.1:7070, loopback only; port 0 picks "
                 "a free port)");
  app.add_option("--db", db_path, "SQLite job database (created if missing)");
  app.add_option("--token-file", token_file,
                 "file holding the bearer token clients must send (or GROVE_TOKEN / "
                 "GROVE_TOKEN_FILE)");
  app.add_option("--users-file", server.users_file,
                 "one user per line, 'NAME TOKEN': users who own the jobs they submit");
  app.add_option("--admin-token-file", admin_token_file,
                 "file holding the admin token (acts on every job)");
  app.add_flag("--no-auth", server.allow_no_auth, "accept calls without a token (testing only)");
  app.add_option("--data-root", data_roots,
                 "folder under which jobs may read data (data.dir); repeatable (default: runs)");
  app.add_option("--run-root", run_roots,
                 "folder under which jobs may write runs (out_dir); repeatable (default: runs)");
  app.add_option("--pending-timeout", pending_timeout_s,
                 "seconds a job may stay PENDING without any worker before it fails")
      ->check(CLI::PositiveNumber);
  app.add_flag("--accept-new-database", store_options.accept_new_database,
               "start a new database although its ledger names a lost one (job numbers continue)");
  app.add_option("--tls-cert", server.tls_cert_file, "PEM server certificate (enables TLS)");
  app.add_option("--tls-key", server.tls_key_file, "PEM server private key");
  app.add_option("--tls-client-ca", server.tls_client_ca_file,
                 "PEM CA that client certificates must chain to (mutual TLS)");
  app.add_option("--heartbeat-timeout", heartbeat_timeout_s,
                 "seconds of worker silence that fail its job")
      ->check(CLI::PositiveNumber);
  app.add_option("--heartbeat-interval", heartbeat_interval_s,
                 "seconds between worker heartbeats (default: min(1, timeout/5))")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--registration-timeout", registration_timeout_s,
                 "seconds a job waits for its remaining ranks once one registered")
      ->check(CLI::PositiveNumber);
  app.add_option("--port-file", port_file, "write the port actually bound to this file");
  std::string cluster_file;
  app.add_option("--cluster", cluster_file,
                 "cluster description (configs/clusters/*.json): plan open layouts by the cost "
                 "model (docs/planning.md) instead of the first that fits");
  app.add_option("--http", http_listen,
                 "serve the dashboard and /metrics on PORT (127.0.0.1) or HOST:PORT; 0 picks a "
                 "free port; off when not given (docs/dashboard.md)");
  app.add_option("--http-port-file", http_port_file,
                 "write the dashboard's port actually bound to this file");
  CLI11_PARSE(app, argc, argv);

  auto token = grove::rpc::ResolveToken("", token_file);
  if (!token.ok()) return Fail(token.status().message());
  server.token = token.value();
  if (!admin_token_file.empty()) {
    auto admin = grove::rpc::ReadTokenFile(admin_token_file);
    if (!admin.ok()) return Fail(admin.status().message());
    server.admin_token = admin.value();
  }
  {
    auto auth = grove::coordinator::Authenticator::Create(grove::coordinator::AuthOptions{
        server.token, server.users_file, server.admin_token, server.allow_no_auth});
    if (!auth.ok()) return Fail(auth.status().message());
    server.authenticator =
        std::make_shared<const grove::coordinator::Authenticator>(std::move(auth).value());
  }
  if (data_roots.empty() || run_roots.empty()) {
    std::error_code ec;
    std::filesystem::create_directories("runs", ec);
    if (data_roots.empty()) data_roots.push_back("runs");
    if (run_roots.empty()) run_roots.push_back("runs");
  }
  auto paths = grove::coordinator::PathPolicy::Create(data_roots, run_roots);
  if (!paths.ok())
    return Fail(paths.status().message() +
                " (--data-root / --run-root: where jobs may read data and write runs; default "
                "runs/ under the working directory)");
  if (!IsLoopback(server.listen) && server.tls_cert_file.empty())
    std::fprintf(stderr,
                 "grove-coordinator: warning: listening on %s without TLS; the token crosses "
                 "the network in clear text (pass --tls-cert/--tls-key)\n",
                 server.listen.c_str());
  if (http_listen.find(':') != std::string::npos && !IsLoopback(http_listen))
    std::fprintf(stderr,
                 "grove-coordinator: warning: the dashboard on %s is plain HTTP; the token "
                 "crosses the network in clear text (keep it on loopback and tunnel, e.g. "
                 "ssh -L)\n",
                 http_listen.c_str());

  // Block the stop signals in every thread; the main thread waits for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  try {
    const std::filesystem::path db(db_path);
    if (db.has_parent_path()) std::filesystem::create_directories(db.parent_path());
    auto store = grove::coordinator::JobStore::Open(db_path, store_options);
    if (!store.ok()) return Fail(store.status().message());
    grove::coordinator::ManagerOptions mo;
    mo.heartbeat_timeout = std::chrono::milliseconds(int64_t(heartbeat_timeout_s * 1000));
    mo.registration_timeout = std::chrono::milliseconds(int64_t(registration_timeout_s * 1000));
    mo.heartbeat_interval =
        heartbeat_interval_s > 0
            ? std::chrono::milliseconds(int64_t(heartbeat_interval_s * 1000))
            : std::min(std::chrono::milliseconds(1000), mo.heartbeat_timeout / 5);
    if (mo.heartbeat_interval >= mo.heartbeat_timeout)
      return Fail("--heartbeat-interval must be shorter than --heartbeat-timeout");
    mo.pending_timeout = std::chrono::milliseconds(int64_t(pending_timeout_s * 1000));
    mo.paths = paths.value();
    if (!cluster_file.empty()) {
      auto cluster = grove::planner::LoadCluster(cluster_file);
      if (!cluster.ok()) return Fail("--cluster: " + cluster.status().message());
      mo.cluster = std::move(cluster).value();
    }
    auto manager = grove::coordinator::JobManager::Create(std::move(store).value(), mo);
    if (!manager.ok()) return Fail(manager.status().message());
    std::shared_ptr<grove::coordinator::JobManager> shared = std::move(manager).value();
    auto srv = grove::coordinator::CoordinatorServer::Start(shared, server);
    if (!srv.ok()) return Fail(srv.status().message());
    const int port = srv.value()->port();
    std::unique_ptr<grove::coordinator::Dashboard> dashboard;
    if (!http_listen.empty()) {
      grove::coordinator::DashboardOptions dopt;
      dopt.listen = http_listen;
      dopt.authenticator = server.authenticator;
      auto d = grove::coordinator::Dashboard::Start(shared, dopt);
      if (!d.ok()) return Fail(d.status().message());
      dashboard = std::move(d).value();
      WritePortFile(http_port_file, dashboard->port());
      std::printf("grove-coordinator: dashboard on http://%s:%d/ (sign in once with /?token=TOKEN)\n",
                  dashboard->host().c_str(), dashboard->port());
    }
    WritePortFile(port_file, port);
    std::printf(
        "grove-coordinator: listening on %s (port %d), db %s, heartbeat timeout %.1f s, data "
        "under %s, runs under %s%s%s\n",
        server.listen.c_str(), port, db_path.c_str(), heartbeat_timeout_s,
        paths.value().data_roots().front().c_str(), paths.value().run_roots().front().c_str(),
        server.tls_cert_file.empty() ? "" : ", TLS", server.allow_no_auth ? ", NO AUTH" : "");
    std::fflush(stdout);
    // Wait for a stop signal; meanwhile watch for the database being deleted or replaced.
    int sig = 0;
    std::string fatal;
    while (sig == 0) {
      const timespec poll{1, 0};
      const int got = sigtimedwait(&stop_signals, nullptr, &poll);
      if (got > 0) sig = got;
      fatal = shared->fatal_error();
      if (!fatal.empty()) break;
    }
    if (sig != 0) std::printf("grove-coordinator: signal %d, shutting down\n", sig);
    if (dashboard) dashboard->Stop();
    srv.value()->Shutdown();
    if (!fatal.empty())
      return Fail(fatal + "; stopped so that no change is lost (restore the database, or start "
                          "with --accept-new-database)");
  } catch (const std::exception& e) {
    return Fail(e.what());
  }
  return 0;
}
