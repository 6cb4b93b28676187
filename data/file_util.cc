#include "data/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace grove::data {
namespace {

std::string ErrnoText() {
  return std::strerror(errno);
}

Status WriteAll(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::Error("writing " + path + " failed: " + ErrnoText() +
                           " (check free disk space and permissions)");
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

Status FsyncDir(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return Status::Error("cannot open directory " + dir.string() + ": " + ErrnoText());
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0)
    return Status::Error("fsync of directory " + dir.string() + " failed: " + ErrnoText());
  return Status::Ok();
}

}  // namespace

void Fnv1a64::Update(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = h_;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  h_ = h;
}

Status AtomicWriteFile(const std::string& path,
                       const std::function<Status(const ByteSink&)>& write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return Status::Error("cannot create " + tmp + ": " + ErrnoText() +
                         " (does the output directory exist and is it writable?)");
  }
  // Buffer small appends; flush in 1 MiB chunks.
  std::vector<char> buf;
  buf.reserve(1 << 20);
  Status flush_status;
  ByteSink sink = [&](const void* data, size_t n) -> Status {
    const char* p = static_cast<const char*>(data);
    if (buf.size() + n > buf.capacity()) {
      GROVE_RETURN_IF_ERROR(WriteAll(fd, buf.data(), buf.size(), tmp));
      buf.clear();
      if (n >= buf.capacity()) return WriteAll(fd, p, n, tmp);
    }
    buf.insert(buf.end(), p, p + n);
    return Status::Ok();
  };
  Status st = write(sink);
  if (st.ok()) st = WriteAll(fd, buf.data(), buf.size(), tmp);
  if (st.ok() && ::fsync(fd) != 0)
    st = Status::Error("fsync of " + tmp + " failed: " + ErrnoText());
  if (::close(fd) != 0 && st.ok())
    st = Status::Error("close of " + tmp + " failed: " + ErrnoText());
  if (st.ok()) st = DurableRename(tmp, path);
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

Status AtomicWriteString(const std::string& path, std::string_view contents) {
  return AtomicWriteFile(
      path, [&](const ByteSink& sink) { return sink(contents.data(), contents.size()); });
}

StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot open " + path + ": " + ErrnoText());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Status::Error("reading " + path + " failed: " + ErrnoText());
  return ss.str();
}

Status DurableRename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return Status::Error("rename " + from + " -> " + to + " failed: " + ErrnoText());
  }
  return FsyncDir(to);
}

std::string Hex64(uint64_t v) {
  char s[17];
  std::snprintf(s, sizeof(s), "%016llx", static_cast<unsigned long long>(v));
  return s;
}

}  // namespace grove::data
