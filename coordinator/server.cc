#include "coordinator/server.h"

#include <grpcpp/health_check_service_interface.h>

#include <fstream>
#include <mutex>
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

bool TokenMatches(const grpc::CallbackServerContext* ctx, const std::string& token) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return false;
  const std::string got(it->second.data(), it->second.size());
  const std::string want = "Bearer " + token;
  // Constant time in the length of the expected value.
  unsigned char diff = got.size() == want.size() ? 0 : 1;
  for (size_t i = 0; i < want.size(); ++i)
    diff |= static_cast<unsigned char>(want[i] ^ (i < got.size() ? got[i] : 0));
  return diff == 0;
}

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
  Service(std::shared_ptr<JobManager> manager, std::string token, bool no_auth)
      : manager_(std::move(manager)), token_(std::move(token)), no_auth_(no_auth) {}

 private:
  template <typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx, Fn&& fn) {
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    if (!Authorized(ctx)) {
      r->Finish(Unauthenticated());
      return r;
    }
    grpc::Status st;
    try {
      st = fn();
    } catch (const std::exception& e) {
      st = grpc::Status(grpc::StatusCode::INTERNAL, e.what());
    }
    r->Finish(st);
    return r;
  }
  bool Authorized(const grpc::CallbackServerContext* ctx) const {
    return no_auth_ || TokenMatches(ctx, token_);
  }
  static grpc::Status Unauthenticated() {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing or wrong bearer token (metadata 'authorization: Bearer <token>'; "
                        "set GROVE_TOKEN or --token-file)");
  }

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                      const v1::SubmitJobRequest* req,
                                      v1::SubmitJobResponse* resp) override {
    return Unary(ctx, [&] { return manager_->Submit(*req, resp); });
  }
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const v1::GetJobRequest* req,
                                   v1::Job* resp) override {
    return Unary(ctx, [&] { return manager_->Get(req->job_id(), resp); });
  }
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const v1::ListJobsRequest* req,
                                     v1::ListJobsResponse* resp) override {
    return Unary(ctx, [&] { return manager_->List(*req, resp); });
  }
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const v1::CancelJobRequest* req, v1::Job* resp) override {
    return Unary(ctx, [&] { return manager_->Cancel(*req, resp); });
  }
  grpc::ServerUnaryReactor* CheckpointJob(grpc::CallbackServerContext* ctx,
                                          const v1::CheckpointJobRequest* req,
                                          v1::Job* resp) override {
    return Unary(ctx, [&] { return manager_->RequestCheckpoint(req->job_id(), resp); });
  }
  grpc::ServerUnaryReactor* GetMetrics(grpc::CallbackServerContext* ctx,
                                       const v1::GetMetricsRequest* req,
                                       v1::GetMetricsResponse* resp) override {
    return Unary(ctx, [&] { return manager_->Metrics(*req, resp); });
  }
  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* ctx,
                                           const v1::RegisterWorkerRequest* req,
                                           v1::RegisterWorkerResponse* resp) override {
    return Unary(ctx, [&] { return manager_->Register(*req, resp); });
  }
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const v1::HeartbeatRequest* req,
                                      v1::HeartbeatResponse* resp) override {
    return Unary(ctx, [&] { return manager_->Heartbeat(*req, resp); });
  }
  grpc::ServerUnaryReactor* ReportExit(grpc::CallbackServerContext* ctx,
                                       const v1::ReportExitRequest* req,
                                       v1::ReportExitResponse* resp) override {
    return Unary(ctx, [&] { return manager_->ReportExit(*req, resp); });
  }

  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                   const v1::WatchJobRequest* req) override {
    if (!Authorized(ctx) || req->job_id().empty()) {
      class Reject : public grpc::ServerWriteReactor<v1::JobEvent> {
       public:
        explicit Reject(grpc::Status st) { Finish(st); }
        void OnDone() override { delete this; }
      };
      return new Reject(Authorized(ctx)
                            ? grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id is empty")
                            : Unauthenticated());
    }
    return new WatchReactor(manager_, *req);
  }

  std::shared_ptr<JobManager> manager_;
  std::string token_;
  bool no_auth_;
};

StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    std::shared_ptr<JobManager> manager, const ServerOptions& options) {
  if (options.token.empty() && !options.allow_no_auth)
    return Status::Error(
        "no auth token: pass --token-file FILE (or set GROVE_TOKEN / GROVE_TOKEN_FILE); "
        "--no-auth disables authentication");
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
  s->service_ = std::make_unique<Service>(manager, options.token, options.allow_no_auth);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &s->port_);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
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
