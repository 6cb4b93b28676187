#include "data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "data/file_util.h"

namespace grove::data {

static_assert(std::endian::native == std::endian::little,
              "token files are little-endian; add byte swapping for big-endian hosts");

namespace {

template <typename T>
void Put(unsigned char* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <typename T>
T Get(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

const char* kRegenerate = " (delete it and run grove-prepare-data again)";

// Parses the header; file_bytes is the actual size on disk.
StatusOr<TokenFileInfo> ParseHeader(const std::string& path, const unsigned char* h,
                                    uint64_t file_bytes) {
  if (file_bytes < kTokenFileHeaderBytes) {
    return Status::Error("token file " + path + " is truncated: " + std::to_string(file_bytes) +
                         " bytes, shorter than the 32-byte header" + kRegenerate);
  }
  if (std::memcmp(h, kTokenFileMagic, 8) != 0) {
    return Status::Error("token file " + path + " has a bad magic (expected \"GRVTOK01\"); " +
                         "it is not a Grove token file or is corrupted" + kRegenerate);
  }
  const uint32_t version = Get<uint32_t>(h + 8);
  if (version != kTokenFileVersion) {
    return Status::Error("token file " + path + " has version " + std::to_string(version) +
                         ", this build reads version " + std::to_string(kTokenFileVersion) +
                         kRegenerate);
  }
  const uint32_t dtype = Get<uint32_t>(h + 12);
  if (dtype != 1 && dtype != 2) {
    return Status::Error("token file " + path + " has unknown dtype " + std::to_string(dtype) +
                         " (1 = uint16, 2 = int32)" + kRegenerate);
  }
  TokenFileInfo info;
  info.dtype = static_cast<TokenDtype>(dtype);
  info.count = Get<uint64_t>(h + 16);
  info.checksum = Get<uint64_t>(h + 24);
  const uint64_t max_count = (file_bytes - kTokenFileHeaderBytes) / DtypeBytes(info.dtype) + 1;
  if (info.count > max_count || info.file_bytes() != file_bytes) {
    return Status::Error("token file " + path + " is truncated or garbled: header says " +
                         std::to_string(info.count) + " tokens, but the file has " +
                         std::to_string(file_bytes) + " bytes" + kRegenerate);
  }
  return info;
}

}  // namespace

size_t DtypeBytes(TokenDtype dtype) {
  return dtype == TokenDtype::kUint16 ? 2 : 4;
}

TokenDtype DtypeForVocab(int vocab_size) {
  return vocab_size <= 65536 ? TokenDtype::kUint16 : TokenDtype::kInt32;
}

StatusOr<TokenFileInfo> WriteTokenFile(const std::string& path, const std::vector<int32_t>& tokens,
                                       TokenDtype dtype) {
  TokenFileInfo info;
  info.dtype = dtype;
  info.count = tokens.size();
  // Convert to the stored representation first: the checksum goes in the header.
  std::vector<unsigned char> body(tokens.size() * DtypeBytes(dtype));
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t t = tokens[i];
    if (t < 0 || (dtype == TokenDtype::kUint16 && t > 65535)) {
      return Status::Error("cannot write token " + std::to_string(t) + " at index " +
                           std::to_string(i) + " to " + path + ": it does not fit " +
                           (dtype == TokenDtype::kUint16 ? "uint16" : "int32 >= 0"));
    }
    if (dtype == TokenDtype::kUint16) {
      Put<uint16_t>(body.data() + 2 * i, static_cast<uint16_t>(t));
    } else {
      Put<int32_t>(body.data() + 4 * i, t);
    }
  }
  Fnv1a64 hash;
  hash.Update(body.data(), body.size());
  info.checksum = hash.digest();

  unsigned char header[kTokenFileHeaderBytes] = {};
  std::memcpy(header, kTokenFileMagic, 8);
  Put<uint32_t>(header + 8, kTokenFileVersion);
  Put<uint32_t>(header + 12, static_cast<uint32_t>(dtype));
  Put<uint64_t>(header + 16, info.count);
  Put<uint64_t>(header + 24, info.checksum);
  Status st = AtomicWriteFile(path, [&](const ByteSink& sink) {
    GROVE_RETURN_IF_ERROR(sink(header, sizeof(header)));
    return sink(body.data(), body.size());
  });
  if (!st.ok()) return st;
  return info;
}

StatusOr<TokenFileInfo> ReadTokenFileInfo(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status::Error("cannot open token file " + path + ": " + std::strerror(errno) +
                         " (run grove-prepare-data to create it)");
  }
  struct stat sb;
  unsigned char h[kTokenFileHeaderBytes] = {};
  ssize_t got = 0;
  const bool stat_ok = ::fstat(fd, &sb) == 0;
  if (stat_ok) got = ::pread(fd, h, sizeof(h), 0);
  ::close(fd);
  if (!stat_ok || got < 0) {
    return Status::Error("cannot read token file " + path + ": " + std::strerror(errno));
  }
  return ParseHeader(path, h, static_cast<uint64_t>(sb.st_size));
}

StatusOr<TokenDataset> TokenDataset::Open(const std::string& path, bool verify_checksum) {
  StatusOr<TokenFileInfo> info = ReadTokenFileInfo(path);
  if (!info.ok()) return info.status();
  TokenDataset ds;
  ds.path_ = path;
  ds.dtype_ = info->dtype;
  ds.count_ = info->count;
  ds.checksum_ = info->checksum;
  ds.map_bytes_ = info->file_bytes();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Error("cannot open token file " + path + ": " + std::strerror(errno));
  void* m = ::mmap(nullptr, ds.map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) {
    return Status::Error("cannot mmap token file " + path + ": " + std::strerror(errno));
  }
  ds.map_ = m;
  ds.tokens_ = static_cast<const unsigned char*>(m) + kTokenFileHeaderBytes;
  // Re-parse from the mapping: the file could have changed between the two opens.
  StatusOr<TokenFileInfo> mapped =
      ParseHeader(path, static_cast<const unsigned char*>(m), ds.map_bytes_);
  if (!mapped.ok()) return mapped.status();
  if (mapped->count != ds.count_ || mapped->dtype != ds.dtype_) {
    return Status::Error("token file " + path + " changed while being opened; retry");
  }
  if (verify_checksum) {
    Fnv1a64 hash;
    hash.Update(ds.tokens_, ds.count_ * DtypeBytes(ds.dtype_));
    if (hash.digest() != ds.checksum_) {
      return Status::Error("token file " + path + " is corrupted: checksum " +
                           Hex64(hash.digest()) + " does not match the header's " +
                           Hex64(ds.checksum_) + kRegenerate);
    }
  }
  return ds;
}

TokenDataset::TokenDataset(TokenDataset&& o) noexcept {
  *this = std::move(o);
}

TokenDataset& TokenDataset::operator=(TokenDataset&& o) noexcept {
  if (this != &o) {
    Release();
    path_ = std::move(o.path_);
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    tokens_ = o.tokens_;
    count_ = o.count_;
    dtype_ = o.dtype_;
    checksum_ = o.checksum_;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
    o.tokens_ = nullptr;
    o.count_ = 0;
  }
  return *this;
}

TokenDataset::~TokenDataset() {
  Release();
}

void TokenDataset::Release() {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
  map_ = nullptr;
}

int32_t TokenDataset::operator[](size_t i) const {
  GROVE_CHECK(i < count_) << "token index " << i << " out of range for " << path_ << " (" << count_
                          << " tokens)";
  if (dtype_ == TokenDtype::kUint16) return Get<uint16_t>(tokens_ + 2 * i);
  return Get<int32_t>(tokens_ + 4 * i);
}

void TokenDataset::Copy(size_t offset, size_t n, int32_t* out) const {
  GROVE_CHECK(offset <= count_ && n <= count_ - offset)
      << "token range [" << offset << ", " << offset + n << ") out of range for " << path_ << " ("
      << count_ << " tokens)";
  if (dtype_ == TokenDtype::kUint16) {
    const unsigned char* p = tokens_ + 2 * offset;
    for (size_t i = 0; i < n; ++i) out[i] = Get<uint16_t>(p + 2 * i);
  } else {
    std::memcpy(out, tokens_ + 4 * offset, 4 * n);
  }
}

double UnigramEntropy(const TokenDataset& dataset) {
  const size_t n = dataset.size();
  if (n == 0) return 0.0;
  std::vector<uint64_t> counts;
  std::vector<int32_t> chunk(1 << 16);
  for (size_t off = 0; off < n; off += chunk.size()) {
    const size_t m = std::min(chunk.size(), n - off);
    dataset.Copy(off, m, chunk.data());
    for (size_t i = 0; i < m; ++i) {
      GROVE_CHECK(chunk[i] >= 0) << "negative token " << chunk[i] << " in " << dataset.path();
      const auto t = static_cast<size_t>(chunk[i]);
      if (t >= counts.size()) counts.resize(t + 1, 0);
      ++counts[t];
    }
  }
  double h = 0.0;
  const double total = static_cast<double>(n);
  for (uint64_t c : counts) {
    if (c == 0) continue;
    const double p = static_cast<double>(c) / total;
    h -= p * std::log(p);
  }
  return h;
}

}  // namespace grove::data
