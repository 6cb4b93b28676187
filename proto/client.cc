#include "proto/client.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace grove::rpc {

namespace {

StatusOr<std::string> ReadFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot read " + what + " " + path + " (does it exist?)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

}  // namespace

StatusOr<std::string> ReadTokenFile(const std::string& path) {
  auto text = ReadFile(path, "token file");
  if (!text.ok()) return text.status();
  std::string token = Trim(text.value());
  if (token.empty()) return Status::Error("token file " + path + " is empty");
  if (token.find_first_of(" \t\r\n") != std::string::npos)
    return Status::Error("token file " + path + " must hold one token (found whitespace inside)");
  return token;
}

StatusOr<std::string> ResolveToken(const std::string& token, const std::string& token_file) {
  if (!token.empty()) return token;
  if (!token_file.empty()) return ReadTokenFile(token_file);
  if (const char* env = std::getenv("GROVE_TOKEN"); env != nullptr && *env != '\0')
    return Trim(env);
  if (const char* env = std::getenv("GROVE_TOKEN_FILE"); env != nullptr && *env != '\0')
    return ReadTokenFile(env);
  return std::string();
}

StatusOr<std::string> ResolveWorkerToken() {
  if (const char* env = std::getenv("GROVE_WORKER_TOKEN"); env != nullptr && *env != '\0')
    return Trim(env);
  if (const char* env = std::getenv("GROVE_WORKER_TOKEN_FILE"); env != nullptr && *env != '\0')
    return ReadTokenFile(env);
  return std::string();
}

namespace {

StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& option,
                                  const char* kind) {
  auto text = ReadFile(path, option);
  if (!text.ok()) return text.status();
  if (text.value().find(std::string("-----BEGIN ") + kind) == std::string::npos)
    return Status::Error(option + " " + path + " is not a PEM file with a " +
                         (std::string(kind) == "CERTIFICATE" ? "certificate" : "private key") +
                         " (-----BEGIN " + kind + "...)");
  return text;
}

}  // namespace

StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& options) {
  if (options.address.empty()) return Status::Error("coordinator address is empty");
  grpc::ChannelArguments args;
  // Reconnect quickly after a coordinator restart (the default backoff grows to 120 s).
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.tls_cert_file.empty() != options.tls_key_file.empty())
    return Status::Error("mutual TLS needs both --tls-cert and --tls-key");
  if (options.tls_ca_file.empty() && !options.tls_cert_file.empty())
    return Status::Error("--tls-cert needs --tls-ca (the CA of the coordinator's certificate)");
  if (options.tls_ca_file.empty()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    auto ca = ReadPemFile(options.tls_ca_file, "--tls-ca", "CERTIFICATE");
    if (!ca.ok()) return ca.status();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca.value();
    if (!options.tls_cert_file.empty()) {
      auto cert = ReadPemFile(options.tls_cert_file, "--tls-cert", "CERTIFICATE");
      if (!cert.ok()) return cert.status();
      auto key = ReadPemFile(options.tls_key_file, "--tls-key", "");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = cert.value();
      ssl.pem_private_key = key.value();
    }
    creds = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  return grpc::CreateCustomChannel(options.address, creds, args);
}

void PrepareContext(grpc::ClientContext* ctx, const std::string& token,
                    std::chrono::milliseconds timeout) {
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
}

std::string DescribeStatus(const grpc::Status& status) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int code = static_cast<int>(status.error_code());
  std::string name = (code >= 0 && code <= 16) ? kNames[code] : std::to_string(code);
  return status.error_message().empty() ? name : name + ": " + status.error_message();
}

std::string ConnectionHint(const grpc::Status& status, const ClientOptions& options) {
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return "";
  const std::string& m = status.error_message();
  const bool refused = m.find("onnection refused") != std::string::npos ||
                       m.find("esolution") != std::string::npos ||
                       m.find("No route") != std::string::npos;
  if (!refused && options.tls_ca_file.empty())
    return "does the coordinator at " + options.address +
           " use TLS? Then pass --tls-ca (and --tls-cert / --tls-key if it requires client "
           "certificates); else, is grove-coordinator running there?";
  if (!refused)
    return "the TLS handshake with " + options.address +
           " failed: check that the coordinator's certificate chains to --tls-ca" +
           (options.tls_server_name.empty() ? std::string(" and names this host")
                                            : " and names " + options.tls_server_name) +
           (options.tls_cert_file.empty()
                ? std::string(", and whether it requires a client certificate (--tls-cert, "
                              "--tls-key)")
                : ", and that it accepts the client certificate " + options.tls_cert_file);
  return "is grove-coordinator running at " + options.address + "?";
}

std::string StateName(grove::v1::JobState state) {
  switch (state) {
    case grove::v1::PENDING:
      return "PENDING";
    case grove::v1::RUNNING:
      return "RUNNING";
    case grove::v1::RESTARTING:
      return "RESTARTING";
    case grove::v1::SUCCEEDED:
      return "SUCCEEDED";
    case grove::v1::FAILED:
      return "FAILED";
    case grove::v1::CANCELLED:
      return "CANCELLED";
    case grove::v1::PREEMPTED:
      return "PREEMPTED";
    default:
      return "UNSPECIFIED";
  }
}

bool IsTerminal(grove::v1::JobState state) {
  return state == grove::v1::SUCCEEDED || state == grove::v1::FAILED ||
         state == grove::v1::CANCELLED;
}

}  // namespace grove::rpc
