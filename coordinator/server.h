// CoordinatorServer: the gRPC front of the JobManager (proto/grove.proto) plus the standard
// health service. RAII: the server listens from Start() until the object is destroyed.
//
// Auth: every Coordinator RPC must carry `authorization: Bearer <token>`; a missing or unknown
// token is UNAUTHENTICATED, a token used outside its role (coordinator/auth.h) is
// PERMISSION_DENIED, and the call changes nothing: user RPCs need a user or admin token, worker
// RPCs a worker credential for that job and attempt (checked by the JobManager). The health
// service answers without a token so that probes need no secret (it reveals only SERVING /
// NOT_SERVING).
// TLS: when a certificate and key are given; with a client CA, clients must present a
// certificate signed by it (mutual TLS).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "coordinator/auth.h"
#include "coordinator/job_manager.h"
#include "core/status.h"

namespace grove::coordinator {

struct ServerOptions {
  std::string listen = "127.0.0.1:7070";  // host:port; port 0 picks a free one
  std::string token;                      // the shared user token (see AuthOptions)
  bool allow_no_auth = false;
  std::string users_file;                 // "NAME TOKEN" lines: one user each
  std::string admin_token;                // optional admin
  // When set, used instead of the four fields above (grove-coordinator shares one with the
  // dashboard).
  std::shared_ptr<const Authenticator> authenticator;
  std::string tls_cert_file;  // PEM; with tls_key_file enables TLS
  std::string tls_key_file;
  std::string tls_client_ca_file;  // PEM; requires client certificates
  int max_receive_bytes = 4 << 20;  // the largest legal request is well below this
  int max_send_bytes = 16 << 20;
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


}  // namespace grove::coordinator
