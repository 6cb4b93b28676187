// CoordinatorServer: the gRPC front of the JobManager (proto/grove.proto) plus the standard
// health service. RAII: the server listens from Start() until the object is destroyed.
//
// Auth: every Coordinator RPC must carry `authorization: Bearer <token>`; a missing or wrong
// token is UNAUTHENTICATED and the call changes nothing. The health service answers without a
// token so that probes need no secret (it reveals only SERVING / NOT_SERVING).
// TLS: when a certificate and key are given; with a client CA, clients must present a
// certificate signed by it (mutual TLS).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "coordinator/job_manager.h"
#include "core/status.h"

namespace grove::coordinator {

struct ServerOptions {
  std::string listen = "127.0.0.1:7070";  // host:port; port 0 picks a free one
  std::string token;                      // empty only with allow_no_auth
  bool allow_no_auth = false;
  std::string tls_cert_file;  // PEM; with tls_key_file enables TLS
  std::string tls_key_file;
  std::string tls_client_ca_file;  // PEM; requires client certificates
  int max_message_bytes = 16 << 20;
};

class CoordinatorServer {
 public:
  static StatusOr<std::unique_ptr<CoordinatorServer>> Start(std::shared_ptr<JobManager> manager,
                                                            const ServerOptions& options);
  ~CoordinatorServer();  // stops accepting, cancels streams, waits for handlers
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  int port() const { return port_; }
  // Marks the health service NOT_SERVING and shuts down, giving calls `grace` to finish.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(2000));

 private:
  class Service;
  CoordinatorServer() = default;

  std::shared_ptr<JobManager> manager_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

// Constant-time comparison of the request's bearer token with `token`.
bool TokenMatches(const grpc::CallbackServerContext* ctx, const std::string& token);

}  // namespace grove::coordinator
