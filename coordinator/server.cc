#include "coordinator/server.h"

#include <grpcpp/health_check_service_interface.h>

#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>

#include "proto/client.h"
#include "proto/grove.grpc.pb.h"

namespace grove::coordinator {

namespace v1 = grove::v1;

namespace {

StatusOr<std::string> ReadPem(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot read " + what + " " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (ss.str().find("-----BEGIN") == std::string::npos)
    return Status::Error(what + " " + path + " is not a PEM file");
  return ss.str();
}

constexpr int kWatchBatch = 256;

}  // namespace

// WatchJob: streams events from the JobManager, one write in flight at a time; when caught up
// it parks a waker in the manager. The shared State outlives the reactor so that a waker that
// fires after the stream ended finds `alive == false` instead of a dangling reactor.
class WatchReactor : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  struct State {
    std::recursive_mutex mu;
    WatchReactor* reactor = nullptr;  // null once the stream is done
  };

  WatchReactor(std::shared_ptr<JobManager> manager, const v1::WatchJobRequest& req)
      : manager_(std::move(manager)),
        req_(req),
        after_(req.after_revision()),
        state_(std::make_shared<State>()) {
    state_->reactor = this;
    std::lock_guard<std::recursive_mutex> l(state_->mu);
    Next();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::recursive_mutex> l(state_->mu);
    writing_ = false;
    if (!ok) {
      FinishOnce(grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream closed by the client"));
      return;
    }
    Next();
  }

  void OnCancel() override {
    std::lock_guard<std::recursive_mutex> l(state_->mu);
    DropWaiter();
    FinishOnce(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    {
      std::lock_guard<std::recursive_mutex> l(state_->mu);
      DropWaiter();
      state_->reactor = nullptr;
    }
    delete this;
  }

 private:
  // Called with state_->mu held and no write in flight.
  void Next() {
    if (finished_ || writing_) return;
    while (true) {
      if (pos_ < batch_.size()) {
        writing_ = true;
        StartWrite(&batch_[pos_++]);
        return;
      }
      batch_.clear();
      pos_ = 0;
      bool terminal = false;
      int64_t next_after = after_;
      grpc::Status st = manager_->Events(req_.job_id(), after_, req_.include_metrics(), kWatchBatch,
                                         &batch_, &next_after, &terminal);
      if (!st.ok()) {
        FinishOnce(st);
        return;
      }
      after_ = next_after;
      if (!batch_.empty()) continue;
      if (terminal || !req_.follow()) {
        FinishOnce(grpc::Status::OK);
        return;
      }
      std::weak_ptr<State> weak = state_;
      waiter_ = manager_->WaitForEvents(req_.job_id(), after_, req_.include_metrics(), [weak] {
        auto s = weak.lock();
        if (!s) return;
        std::lock_guard<std::recursive_mutex> l(s->mu);
        if (s->reactor == nullptr) return;
        s->reactor->waiter_ = 0;
        s->reactor->Next();
      });
      if (waiter_ != 0) return;  // parked; the waker calls Next()
    }
  }

  void DropWaiter() {
    if (waiter_ != 0) manager_->CancelWait(req_.job_id(), waiter_);
    waiter_ = 0;
  }

  void FinishOnce(const grpc::Status& st) {
    if (finished_) return;
    finished_ = true;
    DropWaiter();
    Finish(st);
  }

  std::shared_ptr<JobManager> manager_;
  v1::WatchJobRequest req_;
  int64_t after_;
  std::shared_ptr<State> state_;
  std::vector<v1::JobEvent> batch_;
  size_t pos_ = 0;
  bool writing_ = false;
  bool finished_ = false;
  uint64_t waiter_ = 0;
};

class CoordinatorServer::Service : public v1::Coordinator::CallbackService {
 public:
  Service(std::shared_ptr<JobManager> manager, std::shared_ptr<const Authenticator> auth)
      : manager_(std::move(manager)), auth_(std::move(auth)) {}

 private:
  enum class Need { kUser, kWorker };

  // Who is calling, or the refusal: UNAUTHENTICATED for a missing or unknown token,
  // PERMISSION_DENIED for a worker credential on a user RPC (worker RPCs check the credential's
  // job and attempt in the JobManager).
  grpc::Status Identify(const grpc::CallbackServerContext* ctx, Need need, Principal* who) const {
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    std::optional<Principal> p =
        it == md.end() ? (auth_->no_auth() ? std::optional<Principal>(Principal::Unrestricted())
                                           : std::nullopt)
                       : auth_->Identify(std::string_view(it->second.data(), it->second.size()));
    if (!p)
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "missing or wrong bearer token (metadata 'authorization: Bearer "
                          "<token>'; set GROVE_TOKEN or --token-file)");
    if (need == Need::kUser && p->is_worker())
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "a worker credential may only register, heartbeat and report exits of "
                          "its job; this call needs a user token");
    *who = std::move(*p);
    return grpc::Status::OK;
  }

  template <typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx, Need need, Fn&& fn) {
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    Principal who;
    grpc::Status st = Identify(ctx, need, &who);
    if (st.ok()) {
      try {
        st = fn(who);
      } catch (const std::exception& e) {
        st = grpc::Status(grpc::StatusCode::INTERNAL, e.what());
      }
    }
    r->Finish(st);
    return r;
  }

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                      const v1::SubmitJobRequest* req,
                                      v1::SubmitJobResponse* resp) override {
    return Unary(ctx, Need::kUser, [&](const Principal& who) {
      return manager_->Submit(*req, resp, who);
    });
  }
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const v1::GetJobRequest* req,
                                   v1::Job* resp) override {
    return Unary(ctx, Need::kUser,
                 [&](const Principal&) { return manager_->Get(req->job_id(), resp); });
  }
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const v1::ListJobsRequest* req,
                                     v1::ListJobsResponse* resp) override {
    return Unary(ctx, Need::kUser, [&](const Principal&) { return manager_->List(*req, resp); });
  }
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const v1::CancelJobRequest* req, v1::Job* resp) override {
    return Unary(ctx, Need::kUser,
                 [&](const Principal& who) { return manager_->Cancel(*req, resp, who); });
  }
  grpc::ServerUnaryReactor* CheckpointJob(grpc::CallbackServerContext* ctx,
                                          const v1::CheckpointJobRequest* req,
                                          v1::Job* resp) override {
    return Unary(ctx, Need::kUser, [&](const Principal& who) {
      return manager_->RequestCheckpoint(req->job_id(), resp, who);
    });
  }
  grpc::ServerUnaryReactor* GetMetrics(grpc::CallbackServerContext* ctx,
                                       const v1::GetMetricsRequest* req,
                                       v1::GetMetricsResponse* resp) override {
    return Unary(ctx, Need::kUser,
                 [&](const Principal&) { return manager_->Metrics(*req, resp); });
  }
  grpc::ServerUnaryReactor* IssueWorkerToken(grpc::CallbackServerContext* ctx,
                                             const v1::IssueWorkerTokenRequest* req,
                                             v1::IssueWorkerTokenResponse* resp) override {
    return Unary(ctx, Need::kUser, [&](const Principal& who) {
      return manager_->IssueWorkerToken(*req, resp, who);
    });
  }
  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* ctx,
                                           const v1::RegisterWorkerRequest* req,
                                           v1::RegisterWorkerResponse* resp) override {
    return Unary(ctx, Need::kWorker,
                 [&](const Principal& who) { return manager_->Register(*req, resp, who); });
  }
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const v1::HeartbeatRequest* req,
                                      v1::HeartbeatResponse* resp) override {
    return Unary(ctx, Need::kWorker,
                 [&](const Principal& who) { return manager_->Heartbeat(*req, resp, who); });
  }
  grpc::ServerUnaryReactor* ReportExit(grpc::CallbackServerContext* ctx,
                                       const v1::ReportExitRequest* req,
                                       v1::ReportExitResponse* resp) override {
    return Unary(ctx, Need::kWorker,
                 [&](const Principal& who) { return manager_->ReportExit(*req, resp, who); });
  }

  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                   const v1::WatchJobRequest* req) override {
    Principal who;
    grpc::Status st = Identify(ctx, Need::kUser, &who);
    if (st.ok() && (req->job_id().empty() || req->job_id().size() > Limits::kIdBytes))
      st = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id must be 1-128 bytes");
    if (!st.ok()) {
      class Reject : public grpc::ServerWriteReactor<v1::JobEvent> {
       public:
        explicit Reject(grpc::Status st) { Finish(st); }
        void OnDone() override { delete this; }
      };
      return new Reject(st);
    }
    return new WatchReactor(manager_, *req);
  }

  std::shared_ptr<JobManager> manager_;
  std::shared_ptr<const Authenticator> auth_;
};

StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    std::shared_ptr<JobManager> manager, const ServerOptions& options) {
  std::shared_ptr<const Authenticator> auth = options.authenticator;
  if (!auth) {
    auto a = Authenticator::Create(AuthOptions{options.token, options.users_file,
                                               options.admin_token, options.allow_no_auth});
    if (!a.ok()) return a.status();
    auth = std::make_shared<const Authenticator>(std::move(a).value());
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty())
    return Status::Error("TLS needs both --tls-cert and --tls-key");
  if (!options.tls_client_ca_file.empty() && options.tls_cert_file.empty())
    return Status::Error("--tls-client-ca needs --tls-cert and --tls-key");

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (options.tls_cert_file.empty()) {
    creds = grpc::InsecureServerCredentials();
  } else {
    auto cert = ReadPem(options.tls_cert_file, "TLS certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(options.tls_key_file, "TLS key");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl(
        options.tls_client_ca_file.empty()
            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_key_cert_pairs.push_back({key.value(), cert.value()});
    if (!options.tls_client_ca_file.empty()) {
      auto ca = ReadPem(options.tls_client_ca_file, "TLS client CA");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = ca.value();
    }
    creds = grpc::SslServerCredentials(ssl);
  }

  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->manager_ = manager;
  s->service_ = std::make_unique<Service>(manager, auth);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &s->port_);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(options.max_receive_bytes);
  builder.SetMaxSendMessageSize(options.max_send_bytes);
  // Detect dead clients (a watcher whose host vanished) without waiting for TCP timeouts.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0)
    return Status::Error("cannot listen on " + options.listen +
                         " (address in use, or not a host:port this machine has?)");
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  return s;
}

void CoordinatorServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
}

CoordinatorServer::~CoordinatorServer() {
  if (server_) Shutdown();
}

}  // namespace grove::coordinator
