#include "core/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace grove {
namespace {

using json = nlohmann::json;

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

const char* st_dtype(DType d) {
  switch (d) {
    case DType::kF32:
      return "F32";
    case DType::kF64:
      return "F64";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
    case DType::kU8:
      return "U8";
  }
  return "?";
}

bool parse_dtype(const std::string& s, DType* out) {
  static const std::map<std::string, DType> m = {{"F32", DType::kF32},   {"F64", DType::kF64},
                                                 {"BF16", DType::kBF16}, {"I32", DType::kI32},
                                                 {"I64", DType::kI64},   {"U8", DType::kU8}};
  auto it = m.find(s);
  if (it == m.end()) return false;
  *out = it->second;
  return true;
}

Status write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::Error("writing " + path + ": " + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

// RAII file descriptor.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

uint32_t crc32(const void* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  json meta = json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  size_t offset = 0;
  for (const auto& nt : tensors) {
    GROVE_CHECK(nt.tensor.device() == Device::kCPU) << "WriteSafetensors needs host tensors";
    if (header.contains(nt.name)) return Status::Error("duplicate tensor name '" + nt.name + "'");
    header[nt.name] = {{"dtype", st_dtype(nt.tensor.dtype())},
                       {"shape", nt.tensor.shape()},
                       {"data_offsets", {offset, offset + nt.tensor.bytes()}}};
    char crc[16];
    std::snprintf(crc, sizeof(crc), "%08x", crc32(nt.tensor.raw(), nt.tensor.bytes()));
    meta["crc32:" + nt.name] = crc;
    offset += nt.tensor.bytes();
  }
  header["__metadata__"] = meta;
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data section to 8 bytes
  uint64_t hlen = h.size();
  unsigned char lenbuf[8];
  for (int i = 0; i < 8; ++i) lenbuf[i] = static_cast<unsigned char>(hlen >> (8 * i));

  Fd f;
  f.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f.fd < 0) return Status::Error("cannot create " + path + ": " + std::strerror(errno));
  GROVE_RETURN_IF_ERROR(write_all(f.fd, lenbuf, 8, path));
  GROVE_RETURN_IF_ERROR(write_all(f.fd, h.data(), h.size(), path));
  for (const auto& nt : tensors)
    GROVE_RETURN_IF_ERROR(write_all(f.fd, nt.tensor.raw(), nt.tensor.bytes(), path));
  if (::fsync(f.fd) != 0) return Status::Error("fsync " + path + ": " + std::strerror(errno));
  return Status::Ok();
}

StatusOr<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot open " + path + ": " + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (file_size < 8) return Status::Error(path + ": truncated (no safetensors header)");
  unsigned char lenbuf[8];
  in.read(reinterpret_cast<char*>(lenbuf), 8);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= static_cast<uint64_t>(lenbuf[i]) << (8 * i);
  if (hlen > file_size - 8 || hlen > (1u << 28))
    return Status::Error(path + ": corrupt or truncated header (header length " +
                         std::to_string(hlen) + ", file size " + std::to_string(file_size) + ")");
  std::string h(hlen, '\0');
  in.read(h.data(), static_cast<std::streamsize>(hlen));
  json header = json::parse(h, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object())
    return Status::Error(path + ": header is not valid JSON (corrupt file?)");
  return SafetensorsHeader{std::move(header), 8 + hlen, file_size};
}

StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  auto hdr = ReadSafetensorsHeader(path);
  if (!hdr.ok()) return hdr.status();
  json& header = hdr.value().header;
  const uint64_t file_size = hdr.value().file_size;
  const uint64_t data_start = hdr.value().data_start;
  const uint64_t data_size = file_size - data_start;
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot open " + path + ": " + std::strerror(errno));

  SafetensorsFile out;
  if (header.contains("__metadata__")) {
    for (auto& [k, v] : header["__metadata__"].items())
      if (v.is_string()) out.metadata[k] = v.get<std::string>();
  }
  // Tensors in data-offset order so the file is read sequentially.
  std::vector<std::pair<uint64_t, std::string>> by_offset;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets"))
      return Status::Error(path + ": tensor '" + name + "' has an incomplete header entry");
    by_offset.emplace_back(info["data_offsets"][0].get<uint64_t>(), name);
  }
  std::sort(by_offset.begin(), by_offset.end());
  for (const auto& [begin_off, name] : by_offset) {
    const json& info = header[name];
    DType dtype;
    if (!parse_dtype(info["dtype"].get<std::string>(), &dtype))
      return Status::Error(path + ": tensor '" + name + "' has unsupported dtype " +
                           info["dtype"].dump());
    Shape shape = info["shape"].get<Shape>();
    uint64_t begin = info["data_offsets"][0].get<uint64_t>();
    uint64_t end = info["data_offsets"][1].get<uint64_t>();
    Tensor t = Tensor::empty(shape, dtype);
    if (end < begin || end - begin != t.bytes())
      return Status::Error(path + ": tensor '" + name + "' offsets do not match its shape " +
                           shape_str(shape));
    if (end > data_size)
      return Status::Error(path + ": truncated: tensor '" + name + "' ends at byte " +
                           std::to_string(data_start + end) + " but the file has " +
                           std::to_string(file_size));
    in.seekg(static_cast<std::streamoff>(data_start + begin));
    in.read(static_cast<char*>(t.raw()), static_cast<std::streamsize>(t.bytes()));
    if (!in) return Status::Error(path + ": read error in tensor '" + name + "'");
    auto crc_it = out.metadata.find("crc32:" + name);
    if (crc_it != out.metadata.end()) {
      char crc[16];
      std::snprintf(crc, sizeof(crc), "%08x", crc32(t.raw(), t.bytes()));
      if (crc_it->second != crc)
        return Status::Error(path + ": checksum mismatch in tensor '" + name +
                             "' (file is corrupt; use an earlier checkpoint)");
    }
    out.tensors[name] = t;
    out.order.push_back(name);
  }
  return out;
}

Status WriteFileAtomic(const std::string& path, const std::string& contents) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f.fd < 0) return Status::Error("cannot create " + tmp + ": " + std::strerror(errno));
    GROVE_RETURN_IF_ERROR(write_all(f.fd, contents.data(), contents.size(), tmp));
    if (::fsync(f.fd) != 0) return Status::Error("fsync " + tmp + ": " + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    return Status::Error("rename " + tmp + " -> " + path + ": " + err);
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  return FsyncDir(dir.empty() ? "." : dir);
}

Status FsyncDir(const std::string& dir) {
  Fd f;
  f.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (f.fd < 0) return Status::Error("cannot open directory " + dir + ": " + std::strerror(errno));
  if (::fsync(f.fd) != 0) return Status::Error("fsync " + dir + ": " + std::strerror(errno));
  return Status::Ok();
}

}  // namespace grove
