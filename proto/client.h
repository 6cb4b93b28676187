// Client side of the coordinator API: one channel per process, a bearer token and a deadline
// on every call. Used by the `grove` CLI, the worker's coordinator link and the tests.
//
// Token sources, first found wins: an explicit token, the file named by an explicit path, the
// GROVE_TOKEN environment variable, the file named by GROVE_TOKEN_FILE. Workers use the worker
// credential their launcher obtained (ResolveWorkerToken). TLS is used when a CA certificate file
// is given (the server's certificate must chain to it); a client certificate and key add mutual
// TLS. Files that are not PEM are refused with an error naming the option and the file.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include "core/status.h"
#include "proto/grove.grpc.pb.h"

namespace grove::rpc {

struct ClientOptions {
  std::string address = "127.0.0.1:7070";     // host:port
  std::string token;                          // bearer token (see ResolveToken)
  std::string tls_ca_file;                    // PEM root certificate; empty = plaintext
  std::string tls_server_name;                // overrides the name checked in the certificate
  std::string tls_cert_file;                  // PEM client certificate (mutual TLS)
  std::string tls_key_file;                   // PEM client private key (mutual TLS)
  std::chrono::milliseconds deadline{10000};  // per unary call
};

// Reads a token file (whitespace around the token is ignored); error naming the file.
StatusOr<std::string> ReadTokenFile(const std::string& path);
// The token from `token`, else `token_file`, else $GROVE_TOKEN, else $GROVE_TOKEN_FILE; empty
// when none is set.
StatusOr<std::string> ResolveToken(const std::string& token, const std::string& token_file);

// The worker credential: $GROVE_WORKER_TOKEN, else the file named by $GROVE_WORKER_TOKEN_FILE;
// empty when neither is set.
StatusOr<std::string> ResolveWorkerToken();

// A channel to options.address (TLS when tls_ca_file is set). Errors name the option and the
// file that is unreadable or not PEM, and a client certificate without its key (or the reverse).
StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& options);

// Sets the bearer token and a deadline `timeout` from now on `ctx`.
void PrepareContext(grpc::ClientContext* ctx, const std::string& token,
                    std::chrono::milliseconds timeout);

// "UNAVAILABLE: failed to connect to all addresses" style text for a failed call.
std::string DescribeStatus(const grpc::Status& status);
// What to check when a call failed to reach the coordinator at `options.address`: the TLS
// settings after a handshake failure, else whether it runs there. Empty for other errors.
std::string ConnectionHint(const grpc::Status& status, const ClientOptions& options);

// Job states as the CLI and messages print them ("RUNNING").
std::string StateName(grove::v1::JobState state);
bool IsTerminal(grove::v1::JobState state);

}  // namespace grove::rpc
