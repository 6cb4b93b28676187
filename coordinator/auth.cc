#include "coordinator/auth.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <charconv>
#include <fstream>
#include <set>
#include <sstream>

namespace grove::coordinator {

namespace {

constexpr std::string_view kWorkerPrefix = "gw1.";

std::string Hex(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

}  // namespace

bool Principal::MayManage(const std::string& owner) const {
  if (unrestricted || role == Role::kAdmin) return true;
  if (role != Role::kUser) return false;
  return name == (owner.empty() ? "user" : owner);
}

bool SecretEquals(std::string_view got, std::string_view want) {
  unsigned char diff = got.size() == want.size() ? 0 : 1;
  for (size_t i = 0; i < want.size(); ++i)
    diff |= static_cast<unsigned char>(want[i] ^ (i < got.size() ? got[i] : 0));
  return diff == 0;
}

std::string RandomHex(size_t n) {
  std::string bytes(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), int(n)) != 1)
    throw Error("the system's random number generator failed");
  return Hex(reinterpret_cast<const unsigned char*>(bytes.data()), n);
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1)
    throw Error("SHA-256 failed");
  return Hex(md, len);
}

std::string NewWorkerToken(const std::string& job_id, int attempt) {
  return std::string(kWorkerPrefix) + job_id + "." + std::to_string(attempt) + "." + RandomHex(32);
}

bool ParseWorkerToken(std::string_view token, std::string* job_id, int* attempt) {
  if (token.substr(0, kWorkerPrefix.size()) != kWorkerPrefix) return false;
  token.remove_prefix(kWorkerPrefix.size());
  const size_t secret_dot = token.rfind('.');
  if (secret_dot == std::string_view::npos || token.size() - secret_dot - 1 != 64) return false;
  const std::string_view head = token.substr(0, secret_dot);
  const size_t attempt_dot = head.rfind('.');
  if (attempt_dot == std::string_view::npos || attempt_dot == 0) return false;
  const std::string_view a = head.substr(attempt_dot + 1);
  int value = -1;
  auto [p, ec] = std::from_chars(a.data(), a.data() + a.size(), value);
  if (ec != std::errc() || p != a.data() + a.size() || value < 0) return false;
  *job_id = std::string(head.substr(0, attempt_dot));
  *attempt = value;
  return job_id->size() <= 128;
}

StatusOr<Authenticator> Authenticator::Create(const AuthOptions& options) {
  Authenticator a;
  a.no_auth_ = options.no_auth;
  auto add = [&](const std::string& name, const std::string& token, Role role,
                 const std::string& where) -> Status {
    if (token.size() < 8)
      return Status::Error(where + ": the token of '" + name +
                           "' is shorter than 8 characters (use e.g. head -c 24 /dev/urandom | "
                           "od -An -tx1 | tr -d ' \\n')");
    if (token.substr(0, kWorkerPrefix.size()) == kWorkerPrefix)
      return Status::Error(where + ": the token of '" + name +
                           "' starts with 'gw1.', which marks worker credentials");
    for (const Entry& e : a.entries_) {
      if (e.name == name) return Status::Error(where + ": the name '" + name + "' appears twice");
      if (e.token == token)
        return Status::Error(where + ": '" + name + "' and '" + e.name + "' have the same token");
    }
    a.entries_.push_back(Entry{name, token, role});
    return Status::Ok();
  };
  if (!options.user_token.empty())
    if (Status st = add("user", options.user_token, Role::kUser, "--token-file"); !st.ok())
      return st;
  if (!options.users_file.empty()) {
    std::ifstream in(options.users_file);
    if (!in) return Status::Error("cannot read --users-file " + options.users_file);
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      const std::string where = options.users_file + ":" + std::to_string(n);
      std::istringstream ls(line);
      std::string name, token, extra;
      if (!(ls >> name) || name[0] == '#') continue;
      if (!(ls >> token) || (ls >> extra))
        return Status::Error(where + ": want 'NAME TOKEN'");
      if (name == "admin" || name.size() > 64)
        return Status::Error(where + ": user names are at most 64 bytes and not 'admin'");
      if (Status st = add(name, token, Role::kUser, where); !st.ok()) return st;
    }
  }
  if (!options.admin_token.empty())
    if (Status st = add("admin", options.admin_token, Role::kAdmin, "--admin-token-file");
        !st.ok())
      return st;
  if (a.entries_.empty() && !a.no_auth_)
    return Status::Error(
        "no auth token: pass --token-file FILE (or set GROVE_TOKEN / GROVE_TOKEN_FILE) or "
        "--users-file FILE; --no-auth disables authentication");
  return a;
}

std::optional<Principal> Authenticator::IdentifyToken(std::string_view token) const {
  if (no_auth_) return Principal::Unrestricted();
  std::optional<Principal> found;
  for (const Entry& e : entries_) {  // every entry is compared: no early exit on a match
    if (SecretEquals(token, e.token)) {
      Principal p;
      p.role = e.role;
      p.name = e.name;
      found = p;
    }
  }
  if (found) return found;
  Principal w;
  if (ParseWorkerToken(token, &w.job_id, &w.attempt)) {
    w.role = Role::kWorker;
    w.name = "worker of " + w.job_id;
    w.token = std::string(token);
    return w;
  }
  return std::nullopt;
}

std::optional<Principal> Authenticator::Identify(std::string_view authorization) const {
  if (no_auth_) return Principal::Unrestricted();
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.substr(0, kBearer.size()) != kBearer) return std::nullopt;
  return IdentifyToken(authorization.substr(kBearer.size()));
}

}  // namespace grove::coordinator
