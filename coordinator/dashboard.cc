#include "coordinator/dashboard.h"

#include <google/protobuf/util/json_util.h>
#include <httplib.h>
#include <sys/socket.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

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

// The cookie carries the token as hex: cookie values must not hold ';', ',', spaces or quotes
// (the token may), and httplib percent-decodes header values, so '%' escapes would not survive.
std::string CookieSafe(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
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

}  // namespace

bool SecretEquals(const std::string& got, const std::string& want) {
  unsigned char diff = got.size() == want.size() ? 0 : 1;
  for (size_t i = 0; i < want.size(); ++i)
    diff |= static_cast<unsigned char>(want[i] ^ (i < got.size() ? got[i] : 0));
  return diff == 0;
}

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
  return "grove_token_" + std::to_string(port_);
}

bool Dashboard::Authorized(const httplib::Request& req) const {
  if (options_.allow_no_auth) return true;
  if (req.has_header("Authorization")) {
    // httplib percent-decodes header values: accept the token as sent or as decoded.
    const std::string got = req.get_header_value("Authorization");
    return SecretEquals(got, "Bearer " + options_.token) ||
           SecretEquals(got, "Bearer " + httplib::detail::decode_url(options_.token, false));
  }
  if (req.has_header("Cookie"))
    return SecretEquals(CookieValue(req.get_header_value("Cookie"), CookieName()),
                        CookieSafe(options_.token));
  return false;
}

StatusOr<std::unique_ptr<Dashboard>> Dashboard::Start(std::shared_ptr<JobManager> manager,
                                                      const DashboardOptions& options) {
  if (options.token.empty() && !options.allow_no_auth)
    return Status::Error("the dashboard needs the coordinator's token (or --no-auth)");
  std::unique_ptr<Dashboard> d(new Dashboard());
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

  auto server = std::make_unique<httplib::Server>();
  const int threads = std::max(1, options.threads);
  server->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server->set_read_timeout(5);
  server->set_write_timeout(5);
  server->set_keep_alive_timeout(2);
  server->set_keep_alive_max_count(100);
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
      if (!self->options_.allow_no_auth &&
          !SecretEquals(req.get_param_value("token"), self->options_.token)) {
        res.status = 401;
        res.set_content("wrong token\n", "text/plain; charset=utf-8");
        return httplib::Server::HandlerResponse::Handled;
      }
      res.status = 303;
      res.set_header("Location", "/");
      res.set_header("Set-Cookie", self->CookieName() + "=" + CookieSafe(self->options_.token) +
                                       "; Path=/; HttpOnly; SameSite=Strict");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (self->Authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
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
  server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

Dashboard::~Dashboard() {
  Stop();
}

}  // namespace grove::coordinator
