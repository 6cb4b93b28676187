// Who is calling: the coordinator's principals and their credentials (docs/coordinator.md).
//
// Roles: users submit, read, cancel and checkpoint their own jobs and obtain worker credentials
// for them; the optional admin may do so on every job; a worker holds a credential for one
// attempt of one job and may only register, heartbeat and report exits for it. User and admin
// tokens come from files given to grove-coordinator; worker credentials are issued per job attempt
// by the JobManager (IssueWorkerToken), which stores only their SHA-256 and verifies them.
//
// The Authenticator maps a bearer token to a Principal: a user or admin by constant-time
// comparison with every configured token; a worker credential by its shape
// ("gw1.<job_id>.<attempt>.<64 hex>"), to be verified against the job by the JobManager.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace grove::coordinator {

enum class Role { kUser, kAdmin, kWorker };

struct Principal {
  Role role = Role::kUser;
  std::string name;      // user or admin name ("user" for --token-file, "admin")
  std::string job_id;    // worker: the job the credential names
  int attempt = -1;      // worker: the attempt it names
  std::string token;     // worker: the credential itself, verified by the JobManager
  bool unrestricted = false;  // --no-auth (testing) and in-process callers: every check passes

  static Principal Unrestricted() {
    Principal p;
    p.role = Role::kAdmin;
    p.name = "unrestricted";
    p.unrestricted = true;
    return p;
  }
  static Principal User(std::string name) {
    Principal p;
    p.name = std::move(name);
    return p;
  }
  bool is_worker() const { return role == Role::kWorker && !unrestricted; }
  // May act on (cancel, checkpoint, launch) a job owned by `owner` ("" counts as "user").
  bool MayManage(const std::string& owner) const;
};

struct AuthOptions {
  std::string user_token;       // the shared user token (--token-file), named "user"
  std::string users_file;       // lines "NAME TOKEN" (blank lines and # comments ignored)
  std::string admin_token;      // optional (--admin-token-file)
  bool no_auth = false;         // testing only: every caller is unrestricted
};

class Authenticator {
 public:
  // Errors name the file and line (unreadable users file, duplicate names or tokens, a token
  // shorter than 8 characters or shaped like a worker credential, no token at all without
  // no_auth).
  static StatusOr<Authenticator> Create(const AuthOptions& options);

  // The principal presenting `authorization` (the metadata value, "Bearer TOKEN"); nullopt when
  // the header is malformed or the token unknown. A worker credential is returned unverified.
  std::optional<Principal> Identify(std::string_view authorization) const;
  // The same for a bare token (the dashboard's sign-in).
  std::optional<Principal> IdentifyToken(std::string_view token) const;
  bool no_auth() const { return no_auth_; }

 private:
  struct Entry {
    std::string name;
    std::string token;
    Role role;
  };
  std::vector<Entry> entries_;
  bool no_auth_ = false;
};

// Constant-time comparison (in the length of `want`).
bool SecretEquals(std::string_view got, std::string_view want);

// A fresh worker credential "gw1.<job_id>.<attempt>.<64 hex digits>" (256 random bits).
std::string NewWorkerToken(const std::string& job_id, int attempt);
// Splits a worker credential; false when `token` does not have that shape.
bool ParseWorkerToken(std::string_view token, std::string* job_id, int* attempt);
// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);
// `n` random bytes from the system's CSPRNG, as lower-case hex.
std::string RandomHex(size_t n);

}  // namespace grove::coordinator
