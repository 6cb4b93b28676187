#include "coordinator/dashboard.h"

#include <google/protobuf/util/json_util.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <nlohmann/json.hpp>
#include <set>

#include "coordinator/web_assets.h"
#include "proto/client.h"

namespace grove::coordinator {

namespace v1 = grove::v1;

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

// Value of cookie `name` in a Cookie header, or "" when absent.
std::string CookieValue(const std::string& header, const std::string& name) {
  size_t pos = 0;
  while (pos < header.size()) {
    size_t end = header.find(';', pos);
    if (end == std::string::npos) end = header.size();
    std::string part = header.substr(pos, end - pos);
    const size_t first = part.find_first_not_of(' ');
    if (first != std::string::npos) part = part.substr(first);
    if (part.size() > name.size() && part.compare(0, name.size(), name) == 0 &&
        part[name.size()] == '=')
      return part.substr(name.size() + 1);
    pos = end + 1;
  }
  return "";
}

int HttpStatus(const grpc::Status& st) {
  switch (st.error_code()) {
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return 400;
    default:
      return 500;
  }
}

void SetError(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(nlohmann::json{{"error", message}}.dump(), "application/json");
}

bool ParseInt(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

// ---- Prometheus text format ---------------------------------------------------------------------

std::string Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);  // shortest round trip
  return std::string(buf, p);
}

std::string LabelValue(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

class Exposition {
 public:
  // Starts a metric family; samples follow with Add().
  void Family(const std::string& name, const std::string& type, const std::string& help) {
    name_ = name;
    out_ += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  void Add(const std::vector<std::pair<std::string, std::string>>& labels, double value) {
    out_ += name_;
    if (!labels.empty()) {
      out_ += '{';
      for (size_t i = 0; i < labels.size(); ++i) {
        if (i > 0) out_ += ',';
        out_ += labels[i].first + "=\"" + LabelValue(labels[i].second) + "\"";
      }
      out_ += '}';
    }
    out_ += ' ' + Number(value) + '\n';
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string name_;
  std::string out_;
};

using Labels = std::vector<std::pair<std::string, std::string>>;

Labels JobLabels(const v1::Job& j) {
  return {{"job", j.id()}, {"name", j.spec().name()}};
}

// ---- Connections --------------------------------------------------------------------------------

// A socket stream whose reads share one deadline (the whole request must arrive by then) and
// whose writes each get write_timeout: a client sending a byte a second is cut off at the
// deadline instead of holding its thread.
class DeadlineStream : public httplib::Stream {
 public:
  DeadlineStream(int sock, std::chrono::steady_clock::time_point read_deadline,
                 std::chrono::milliseconds write_timeout)
      : sock_(sock), read_deadline_(read_deadline), write_timeout_(write_timeout) {}

  bool is_readable() const override {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        read_deadline_ - std::chrono::steady_clock::now());
    return left.count() > 0 && Poll(POLLIN, int(left.count()));
  }
  bool is_writable() const override { return Poll(POLLOUT, int(write_timeout_.count())); }
  ssize_t read(char* ptr, size_t size) override {
    if (!is_readable()) return -1;
    return ::recv(sock_, ptr, size, 0);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    return ::send(sock_, ptr, size, MSG_NOSIGNAL);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    Address(::getpeername, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    Address(::getsockname, ip, port);
  }
  socket_t socket() const override { return sock_; }

 private:
  bool Poll(short events, int timeout_ms) const {
    pollfd p{sock_, events, 0};
    int rc;
    do rc = ::poll(&p, 1, std::max(0, timeout_ms));
    while (rc < 0 && errno == EINTR);
    return rc > 0 && (p.revents & (events | POLLHUP | POLLERR)) != 0;
  }
  void Address(int (*get)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    ip.clear();
    port = 0;
    if (get(sock_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return;
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
      ip = host;
      port = std::atoi(serv);
    }
  }

  int sock_;
  std::chrono::steady_clock::time_point read_deadline_;
  std::chrono::milliseconds write_timeout_;
};

// One thread per connection, at most `max` at once; a connection past that is closed at once.
class ConnectionThreads : public httplib::TaskQueue {
 public:
  explicit ConnectionThreads(int max) : max_(max) {}
  void enqueue(std::function<void()> fn) override {
    std::unique_lock<std::mutex> l(mu_);
    if (running_ >= max_) {
      l.unlock();
      refuse_ = true;  // the task closes its socket without serving it
      fn();
      refuse_ = false;
      return;
    }
    ++running_;
    std::thread([this, fn = std::move(fn)] {
      fn();
      std::lock_guard<std::mutex> g(mu_);
      --running_;
      done_.notify_all();
    }).detach();
  }
  void shutdown() override {
    std::unique_lock<std::mutex> l(mu_);
    done_.wait(l, [this] { return running_ == 0; });
  }
  static thread_local bool refuse_;

 private:
  std::mutex mu_;
  std::condition_variable done_;
  int running_ = 0;
  const int max_;
};
thread_local bool ConnectionThreads::refuse_ = false;

}  // namespace

// httplib's server with the connection handling above: one request per connection under a read
// deadline, and every open connection shut down on Stop().
class Dashboard::HttpServer : public httplib::Server {
 public:
  HttpServer(std::chrono::milliseconds request_timeout, std::chrono::milliseconds write_timeout)
      : request_timeout_(request_timeout), write_timeout_(write_timeout) {}

  void ShutdownConnections() {
    std::lock_guard<std::mutex> l(mu_);
    for (int s : open_) ::shutdown(s, SHUT_RDWR);
  }

 private:
  bool process_and_close_socket(socket_t sock) override {
    if (ConnectionThreads::refuse_) {
      ::close(sock);
      return false;
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      open_.insert(sock);
    }
    DeadlineStream stream(sock, std::chrono::steady_clock::now() + request_timeout_,
                          write_timeout_);
    bool closed = false;
    const bool ok = process_request(stream, /*close_connection=*/true, closed, nullptr);
    {
      std::lock_guard<std::mutex> l(mu_);
      open_.erase(sock);
    }
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return ok;
  }

  const std::chrono::milliseconds request_timeout_, write_timeout_;
  std::mutex mu_;
  std::set<int> open_;
};

namespace {}  // namespace

std::string PrometheusText(const std::vector<v1::Job>& jobs, int64_t now_unix_ms) {
  Exposition e;
  e.Family("grove_job_state", "gauge",
           "Job state: 1 for the state the job is in, 0 for the others.");
  for (const auto& j : jobs) {
    for (v1::JobState s :
         {v1::PENDING, v1::RUNNING, v1::RESTARTING, v1::SUCCEEDED, v1::FAILED, v1::CANCELLED}) {
      Labels l = JobLabels(j);
      l.emplace_back("state", rpc::StateName(s));
      e.Add(l, j.state() == s ? 1 : 0);
    }
  }
  e.Family("grove_job_step", "gauge", "Latest optimizer step reported by the job.");
  for (const auto& j : jobs) e.Add(JobLabels(j), double(j.last_step()));
  e.Family("grove_job_total_steps", "gauge", "Steps the job trains for (train.steps).");
  for (const auto& j : jobs) e.Add(JobLabels(j), double(j.total_steps()));
  e.Family("grove_job_attempt", "gauge", "Attempt number: 0 for the first run, +1 per restart.");
  for (const auto& j : jobs) e.Add(JobLabels(j), j.attempt());
  e.Family("grove_job_loss", "gauge", "Training loss at the latest step.");
  for (const auto& j : jobs)
    if (j.last_step() > 0) e.Add(JobLabels(j), j.last_loss());
  e.Family("grove_job_val_loss", "gauge", "Latest validation loss.");
  for (const auto& j : jobs)
    if (j.has_last_val_loss()) e.Add(JobLabels(j), j.last_val_loss());
  e.Family("grove_job_tokens_per_second", "gauge", "Training throughput at the latest step.");
  for (const auto& j : jobs)
    if (j.last_step() > 0) e.Add(JobLabels(j), j.tokens_per_s());
  e.Family("grove_job_mfu", "gauge", "Model FLOPs utilisation at the latest step (0..1).");
  for (const auto& j : jobs)
    if (j.has_last_mfu()) e.Add(JobLabels(j), j.last_mfu());
  e.Family("grove_job_step_seconds", "gauge", "Measured step time at the latest step.");
  for (const auto& j : jobs)
    if (j.has_last_step_ms()) e.Add(JobLabels(j), j.last_step_ms() / 1e3);
  e.Family("grove_job_predicted_step_seconds", "gauge",
           "The cost model's step time for the job's layout on the coordinator's cluster.");
  for (const auto& j : jobs)
    if (j.layout().has_predicted_step_ms())
      e.Add(JobLabels(j), j.layout().predicted_step_ms() / 1e3);
  e.Family("grove_job_a2a_bytes_sent", "gauge",
           "MoE all-to-all bytes sent in the latest step (after LSH compression, if any).");
  for (const auto& j : jobs)
    if (j.has_last_a2a_bytes_sent()) e.Add(JobLabels(j), double(j.last_a2a_bytes_sent()));
  e.Family("grove_job_a2a_bytes_uncompressed", "gauge",
           "MoE all-to-all bytes the latest step would have sent without LSH compression.");
  for (const auto& j : jobs)
    if (j.has_last_a2a_bytes_uncompressed())
      e.Add(JobLabels(j), double(j.last_a2a_bytes_uncompressed()));

  // Workers of jobs still in flight that have not exited.
  auto live = [](const v1::Job& j, const v1::WorkerInfo& w) {
    return !rpc::IsTerminal(j.state()) && !w.exited();
  };
  auto worker_labels = [](const v1::Job& j, const v1::WorkerInfo& w) {
    return Labels{{"job", j.id()}, {"rank", std::to_string(w.rank())}, {"host", w.host()}};
  };
  e.Family("grove_worker_heartbeat_age_seconds", "gauge",
           "Seconds since the worker's latest heartbeat (live workers only).");
  for (const auto& j : jobs)
    for (const auto& w : j.workers())
      if (live(j, w))
        e.Add(worker_labels(j, w), double(now_unix_ms - w.last_heartbeat_unix_ms()) / 1000.0);
  e.Family("grove_worker_step", "gauge", "Latest step the worker reported (live workers only).");
  for (const auto& j : jobs)
    for (const auto& w : j.workers())
      if (live(j, w)) e.Add(worker_labels(j, w), double(w.step()));
  e.Family("grove_worker_memory_bytes", "gauge",
           "Resident host memory of the worker process (live workers only).");
  for (const auto& j : jobs)
    for (const auto& w : j.workers())
      if (live(j, w)) e.Add(worker_labels(j, w), double(w.memory_bytes()));
  e.Family("grove_worker_device_memory_bytes", "gauge",
           "Accelerator memory in use by the worker (live workers that report it).");
  for (const auto& j : jobs)
    for (const auto& w : j.workers())
      if (live(j, w) && w.has_device_memory_bytes())
        e.Add(worker_labels(j, w), double(w.device_memory_bytes()));
  return e.Take();
}

// ---- Server -------------------------------------------------------------------------------------

std::string Dashboard::CookieName() const {
  return "grove_session_" + std::to_string(port_);
}

std::string Dashboard::NewSession() {
  const auto now = std::chrono::steady_clock::now();
  std::string id = RandomHex(32);
  std::lock_guard<std::mutex> l(sessions_mu_);
  std::erase_if(sessions_, [&](const auto& s) { return s.second < now; });
  while (sessions_.size() >= std::max<size_t>(1, options_.max_sessions)) {
    auto oldest =
        std::min_element(sessions_.begin(), sessions_.end(),
                         [](const auto& a, const auto& b) { return a.second < b.second; });
    sessions_.erase(oldest);
  }
  sessions_[id] = now + std::chrono::hours(12);
  return id;
}

int Dashboard::Authorize(const httplib::Request& req) {
  if (auth_->no_auth()) return 200;
  if (req.has_header("Authorization")) {
    auto who = auth_->Identify(req.get_header_value("Authorization"));
    if (!who) return 401;
    return who->role == Role::kWorker ? 403 : 200;
  }
  if (req.has_header("Cookie")) {
    const std::string id = CookieValue(req.get_header_value("Cookie"), CookieName());
    if (id.size() != 64) return 401;
    std::lock_guard<std::mutex> l(sessions_mu_);
    auto it = sessions_.find(id);
    if (it != sessions_.end() && it->second > std::chrono::steady_clock::now()) return 200;
  }
  return 401;
}

StatusOr<std::unique_ptr<Dashboard>> Dashboard::Start(std::shared_ptr<JobManager> manager,
                                                      const DashboardOptions& options) {
  std::unique_ptr<Dashboard> d(new Dashboard());
  d->auth_ = options.authenticator;
  if (!d->auth_) {
    auto a = Authenticator::Create(AuthOptions{options.token, "", "", options.allow_no_auth});
    if (!a.ok()) return Status::Error("dashboard: " + a.status().message());
    d->auth_ = std::make_shared<const Authenticator>(std::move(a).value());
  }
  d->manager_ = std::move(manager);
  d->options_ = options;
  std::string host = "127.0.0.1", port_text = options.listen;
  if (const size_t colon = options.listen.rfind(':'); colon != std::string::npos) {
    host = options.listen.substr(0, colon);
    port_text = options.listen.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
      host = host.substr(1, host.size() - 2);
  }
  int64_t port = -1;
  if (!ParseInt(port_text, &port) || port < 0 || port > 65535 || host.empty())
    return Status::Error("--http " + options.listen + ": want PORT or HOST:PORT");
  d->host_ = host;

  auto server = std::make_unique<HttpServer>(options.request_timeout, options.write_timeout);
  const int max_connections = std::max(1, options.max_connections);
  server->new_task_queue = [max_connections] { return new ConnectionThreads(max_connections); };
  server->set_payload_max_length(64 << 10);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server
  // bind the same port and take a share of the connections.
  server->set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  server->set_default_headers({{"Cache-Control", "no-store"},
                               {"X-Content-Type-Options", "nosniff"},
                               {"Referrer-Policy", "no-referrer"},
                               {"X-Frame-Options", "DENY"}});

  Dashboard* self = d.get();
  // Auth before routing: a refused request learns nothing, not even whether a path exists.
  server->set_pre_routing_handler([self](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/" && req.has_param("token")) {
      auto who = self->auth_->IdentifyToken(req.get_param_value("token"));
      if (!who || who->role == Role::kWorker) {
        res.status = 401;
        res.set_content("wrong token\n", "text/plain; charset=utf-8");
        return httplib::Server::HandlerResponse::Handled;
      }
      res.status = 303;
      res.set_header("Location", "/");
      res.set_header("Set-Cookie", self->CookieName() + "=" + self->NewSession() +
                                       "; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200");
      return httplib::Server::HandlerResponse::Handled;
    }
    const int verdict = self->Authorize(req);
    if (verdict == 200) return httplib::Server::HandlerResponse::Unhandled;
    if (verdict == 403) {
      res.status = 403;
      res.set_content("403: a worker credential cannot read the dashboard; use a user token.\n",
                      "text/plain; charset=utf-8");
      return httplib::Server::HandlerResponse::Handled;
    }
    res.status = 401;
    res.set_header("WWW-Authenticate", "Bearer realm=\"grove\"");
    res.set_content(
        "401: the Grove dashboard needs the coordinator's token: open /?token=TOKEN once, or "
        "send the header 'Authorization: Bearer TOKEN'.\n",
        "text/plain; charset=utf-8");
    return httplib::Server::HandlerResponse::Handled;
  });

  for (const WebAsset& a : WebAssets()) {
    std::string pattern;  // the path as a regular expression: escape the dots
    for (const char* c = a.path; *c != 0; ++c)
      pattern += *c == '.' ? std::string("\\.") : std::string(1, *c);
    server->Get(pattern, [a](const httplib::Request&, httplib::Response& res) {
      res.set_content(reinterpret_cast<const char*>(a.data), a.size, a.content_type);
      if (std::string(a.path) == "/")
        res.set_header("Content-Security-Policy",
                       "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' "
                       "data:; frame-ancestors 'none'");
    });
  }

  server->Get("/api/jobs", [self](const httplib::Request&, httplib::Response& res) {
    v1::ListJobsRequest req;
    req.set_limit(self->options_.list_limit);
    v1::ListJobsResponse resp;
    grpc::Status st = self->manager_->List(req, &resp);
    if (!st.ok()) return SetError(res, HttpStatus(st), st.error_message());
    res.set_content(
        "{\"now_unix_ms\":" + std::to_string(NowMs()) + ",\"list\":" + ToJson(resp) + "}",
        "application/json");
  });
  server->Get(R"(/api/jobs/([A-Za-z0-9_.-]+))", [self](const httplib::Request& req,
                                                       httplib::Response& res) {
    v1::Job job;
    grpc::Status st = self->manager_->Get(req.matches[1], &job);
    if (!st.ok()) return SetError(res, HttpStatus(st), st.error_message());
    res.set_content("{\"now_unix_ms\":" + std::to_string(NowMs()) + ",\"job\":" + ToJson(job) + "}",
                    "application/json");
  });
  server->Get(R"(/api/jobs/([A-Za-z0-9_.-]+)/metrics)", [self](const httplib::Request& req,
                                                               httplib::Response& res) {
    v1::GetMetricsRequest mreq;
    mreq.set_job_id(req.matches[1]);
    int64_t after = 0, limit = 2000;
    if (req.has_param("after_step") && !ParseInt(req.get_param_value("after_step"), &after))
      return SetError(res, 400, "after_step must be an integer");
    if (req.has_param("limit") &&
        (!ParseInt(req.get_param_value("limit"), &limit) || limit < 1 || limit > 10000))
      return SetError(res, 400, "limit must be an integer in [1, 10000]");
    mreq.set_after_step(after);
    mreq.set_limit(int(limit));
    v1::GetMetricsResponse resp;
    grpc::Status st = self->manager_->Metrics(mreq, &resp);
    if (!st.ok()) return SetError(res, HttpStatus(st), st.error_message());
    res.set_content(ToJson(resp), "application/json");
  });
  server->Get(R"(/api/jobs/([A-Za-z0-9_.-]+)/memory)", [self](const httplib::Request& req,
                                                              httplib::Response& res) {
    std::map<int, std::vector<JobManager::MemorySample>> history;
    grpc::Status st = self->manager_->MemoryHistory(req.matches[1], &history);
    if (!st.ok()) return SetError(res, HttpStatus(st), st.error_message());
    nlohmann::json ranks = nlohmann::json::object();
    for (const auto& [rank, samples] : history) {
      nlohmann::json rows = nlohmann::json::array();
      for (const auto& s : samples)
        rows.push_back({s.time_unix_ms, s.memory_bytes,
                        s.device_memory_bytes < 0 ? nlohmann::json(nullptr)
                                                  : nlohmann::json(s.device_memory_bytes)});
      ranks[std::to_string(rank)] = std::move(rows);
    }
    res.set_content(nlohmann::json{{"ranks", ranks}}.dump(), "application/json");
  });
  server->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    v1::ListJobsRequest req;
    req.set_limit(self->options_.list_limit);
    v1::ListJobsResponse resp;
    grpc::Status st = self->manager_->List(req, &resp);
    if (!st.ok()) {
      res.status = 500;
      res.set_content(st.error_message() + "\n", "text/plain; charset=utf-8");
      return;
    }
    std::vector<v1::Job> jobs(resp.jobs().begin(), resp.jobs().end());
    res.set_content(PrometheusText(jobs, NowMs()), "text/plain; version=0.0.4; charset=utf-8");
  });

  const int bound = port == 0 ? server->bind_to_any_port(host)
                              : (server->bind_to_port(host, int(port)) ? int(port) : -1);
  if (bound <= 0)
    return Status::Error("dashboard: cannot listen on " + options.listen +
                         " (address in use, or not an address of this machine?)");
  d->port_ = bound;
  d->server_ = std::move(server);
  d->thread_ = std::thread([s = d->server_.get()] { s->listen_after_bind(); });
  return d;
}

void Dashboard::Stop() {
  if (!server_) return;
  // stop() only acts on a running server: give the listener thread a moment to start.
  for (int i = 0; i < 2000 && !server_->is_running(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  server_->ShutdownConnections();
  server_->stop();
  server_->ShutdownConnections();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

Dashboard::~Dashboard() {
  Stop();
}

}  // namespace grove::coordinator
