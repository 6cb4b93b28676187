// Reading and writing safetensors files: an 8-byte little-endian header length, a JSON header
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
// little-endian data. Any safetensors reader (Python's safetensors, or 20 lines of numpy) can read
// what Grove writes; Grove adds a CRC-32 per tensor in the metadata ("crc32:<name>") so a corrupt
// or truncated file is detected and named, never loaded half-way.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace grove {

uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

struct NamedTensor {
  std::string name;
  Tensor tensor;  // host tensor
};

// Writes `path` (not atomically: callers that need atomicity write to a temp dir and rename).
// The file is fsync'ed before returning.
Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::vector<std::string> order;  // tensor names in file order
  std::map<std::string, std::string> metadata;
};

// Reads and validates the whole file: header bounds, offsets, dtypes, sizes and CRCs (when
// present). Errors name the file and the tensor.
StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

// Only the JSON header of a safetensors file and where its data starts (cheap: no data read).
struct SafetensorsHeader {
  nlohmann::json header;   // tensor entries and "__metadata__"
  uint64_t data_start = 0;  // byte offset of the data section
  uint64_t file_size = 0;
};
StatusOr<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path);

// Writes `contents` to `path` via a temporary file in the same directory, fsync and rename.
Status WriteFileAtomic(const std::string& path, const std::string& contents);
// fsyncs a directory so a rename inside it is durable.
Status FsyncDir(const std::string& dir);

}  // namespace grove
