// File helpers shared by the data library: atomic writes and a stable checksum.
//
// Invariant: a file written with AtomicWriteFile is either absent, the old version, or the
// complete new version (temp file in the same directory, fsync, rename, fsync of the directory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace grove::data {

// 64-bit FNV-1a. Stable across platforms; used for corpus and token checksums (not security).
class Fnv1a64 {
 public:
  void Update(const void* data, size_t n);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  uint64_t digest() const { return h_; }

 private:
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

// Writes `path` atomically; `write` receives a FILE-like sink and appends bytes to it.
// On any failure the temp file is removed and `path` is left untouched.
using ByteSink = std::function<Status(const void* data, size_t n)>;
Status AtomicWriteFile(const std::string& path,
                       const std::function<Status(const ByteSink&)>& write);

// Convenience: atomically write a whole string.
Status AtomicWriteString(const std::string& path, std::string_view contents);

// Reads a whole file. Error names the path.
StatusOr<std::string> ReadFileToString(const std::string& path);

// Renames `from` to `to` and fsyncs the destination directory.
Status DurableRename(const std::string& from, const std::string& to);

// Hex string of a 64-bit value, 16 digits, for JSON metadata.
std::string Hex64(uint64_t v);

}  // namespace grove::data
