// PathPolicy: where a job may read data and write its run (docs/coordinator.md, "Confined
// paths"). grove-coordinator is started with the roots (--data-root, --run-root); a submitted
// job's data.dir must lie under a data root and its out_dir under a run root, checked on the
// parsed config's fields before the job is accepted.
//
// Paths must be absolute (`grove submit` makes the config's relative paths absolute against its
// working directory). They are normalised lexically ("." and ".." removed) and the longest
// existing prefix is resolved through symbolic links, so neither `..` nor a link inside a root
// leads out of it. A path equal to a root is refused for out_dir (a run gets its own folder).
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace grove::coordinator {

class PathPolicy {
 public:
  // Roots are made absolute and resolved; errors name the root that does not exist.
  static StatusOr<PathPolicy> Create(const std::vector<std::string>& data_roots,
                                     const std::vector<std::string>& run_roots);
  // No roots: every absolute path is accepted (in-process tests).
  PathPolicy() = default;

  // The canonical form of `path` if it lies under one of the data roots, else an error naming
  // `field` (e.g. "data.dir") and the roots.
  StatusOr<std::string> CheckData(const std::string& field, const std::string& path) const;
  StatusOr<std::string> CheckRun(const std::string& field, const std::string& path) const;

  const std::vector<std::string>& data_roots() const { return data_roots_; }
  const std::vector<std::string>& run_roots() const { return run_roots_; }

 private:
  StatusOr<std::string> Check(const std::string& field, const std::string& path,
                              const std::vector<std::string>& roots, bool allow_root,
                              const char* flag) const;
  std::vector<std::string> data_roots_, run_roots_;
  bool confined_ = false;
};

// The lexically normalised, link-resolved (longest existing prefix) form of an absolute path.
std::string ResolvePath(const std::string& absolute_path);
// Whether `path` is `root` or lies below it (both already resolved).
bool PathInside(const std::string& path, const std::string& root);

}  // namespace grove::coordinator
