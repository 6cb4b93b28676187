#include "coordinator/path_policy.h"

#include <filesystem>

namespace grove::coordinator {

namespace fs = std::filesystem;

std::string ResolvePath(const std::string& absolute_path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::path(absolute_path).lexically_normal(), ec);
  if (ec) p = fs::path(absolute_path).lexically_normal();
  std::string s = p.string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

bool PathInside(const std::string& path, const std::string& root) {
  if (root == "/") return !path.empty() && path[0] == '/';
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

StatusOr<PathPolicy> PathPolicy::Create(const std::vector<std::string>& data_roots,
                                        const std::vector<std::string>& run_roots) {
  PathPolicy p;
  p.confined_ = true;
  auto add = [](const std::vector<std::string>& in, std::vector<std::string>* out,
                const char* flag) -> Status {
    for (const auto& r : in) {
      std::error_code ec;
      const fs::path abs = fs::absolute(r, ec);
      if (ec || !fs::is_directory(abs, ec))
        return Status::Error(std::string(flag) + " " + r + " is not a directory");
      out->push_back(ResolvePath(abs.string()));
    }
    if (out->empty()) return Status::Error(std::string("give at least one ") + flag);
    return Status::Ok();
  };
  if (Status st = add(data_roots, &p.data_roots_, "--data-root"); !st.ok()) return st;
  if (Status st = add(run_roots, &p.run_roots_, "--run-root"); !st.ok()) return st;
  return p;
}

StatusOr<std::string> PathPolicy::Check(const std::string& field, const std::string& path,
                                        const std::vector<std::string>& roots, bool allow_root,
                                        const char* flag) const {
  if (path.empty()) return Status::Error(field + " is empty");
  if (path.size() > 4096) return Status::Error(field + " is longer than 4096 bytes");
  if (path.find('\0') != std::string::npos) return Status::Error(field + " contains a NUL byte");
  if (path[0] != '/')
    return Status::Error(field + " '" + path +
                         "' is relative; give an absolute path (grove submit makes relative "
                         "paths absolute against its working directory)");
  const std::string resolved = ResolvePath(path);
  if (!confined_) return resolved;
  std::string list;
  for (const auto& r : roots) {
    if (PathInside(resolved, r) && (allow_root || resolved != r)) return resolved;
    list += (list.empty() ? "" : ", ") + r;
  }
  return Status::Error(field + " '" + path + "'" +
                       (resolved != path ? " (resolves to " + resolved + ")" : std::string()) +
                       " is outside the coordinator's " + flag + " (" + list + ")" +
                       (allow_root ? "" : "; give a folder below it"));
}

StatusOr<std::string> PathPolicy::CheckData(const std::string& field,
                                            const std::string& path) const {
  return Check(field, path, data_roots_, /*allow_root=*/true, "--data-root");
}

StatusOr<std::string> PathPolicy::CheckRun(const std::string& field,
                                           const std::string& path) const {
  return Check(field, path, run_roots_, /*allow_root=*/false, "--run-root");
}

}  // namespace grove::coordinator
