// Token files: the on-disk format of train.bin / val.bin, a reader and a writer.
//
// Layout, all little-endian (32-byte header, then the tokens):
//   0  char[8]  magic "GRVTOK01"
//   8  uint32   version (1)
//  12  uint32   dtype: 1 = uint16, 2 = int32
//  16  uint64   count (number of tokens)
//  24  uint64   checksum: FNV-1a 64 over the token bytes exactly as stored
//  32  count * sizeof(dtype) bytes of tokens
// Documents are concatenated, each followed by the tokenizer's EOS id.
// Invariants: a TokenDataset that opened successfully has a valid header, a file size equal to
// 32 + count * sizeof(dtype), and (unless verification was skipped) a matching checksum.
// Files are written atomically, so a crash never leaves a file that passes these checks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace grove::data {

enum class TokenDtype : uint32_t { kUint16 = 1, kInt32 = 2 };

inline constexpr char kTokenFileMagic[8] = {'G', 'R', 'V', 'T', 'O', 'K', '0', '1'};
inline constexpr uint32_t kTokenFileVersion = 1;
inline constexpr size_t kTokenFileHeaderBytes = 32;

size_t DtypeBytes(TokenDtype dtype);
// The smallest dtype that holds every id of a vocabulary of `vocab_size` pieces.
TokenDtype DtypeForVocab(int vocab_size);

// Header fields, as read from or written to a file.
struct TokenFileInfo {
  TokenDtype dtype = TokenDtype::kUint16;
  uint64_t count = 0;
  uint64_t checksum = 0;
  uint64_t file_bytes() const { return kTokenFileHeaderBytes + count * DtypeBytes(dtype); }
};

// Writes `tokens` atomically. Error if a token does not fit `dtype` (names the index and value).
StatusOr<TokenFileInfo> WriteTokenFile(const std::string& path, const std::vector<int32_t>& tokens,
                                       TokenDtype dtype);

// Reads and validates only the header and the file size (cheap; no checksum pass).
StatusOr<TokenFileInfo> ReadTokenFileInfo(const std::string& path);

// A read-only, memory-mapped token file. Move-only; unmaps on destruction.
class TokenDataset {
 public:
  // Opens and validates `path`. verify_checksum=false skips the full pass over the tokens.
  static StatusOr<TokenDataset> Open(const std::string& path, bool verify_checksum = true);

  TokenDataset(TokenDataset&& other) noexcept;
  TokenDataset& operator=(TokenDataset&& other) noexcept;
  TokenDataset(const TokenDataset&) = delete;
  TokenDataset& operator=(const TokenDataset&) = delete;
  ~TokenDataset();

  size_t size() const { return count_; }
  int32_t operator[](size_t i) const;  // GROVE_CHECKs i < size()
  // Copies tokens [offset, offset + n) into out as int32. GROVE_CHECKs the range.
  void Copy(size_t offset, size_t n, int32_t* out) const;
  TokenDtype dtype() const { return dtype_; }
  uint64_t checksum() const { return checksum_; }
  const std::string& path() const { return path_; }

 private:
  TokenDataset() = default;
  void Release();

  std::string path_;
  void* map_ = nullptr;  // whole file, read-only
  size_t map_bytes_ = 0;
  const unsigned char* tokens_ = nullptr;  // map_ + header
  size_t count_ = 0;
  TokenDtype dtype_ = TokenDtype::kUint16;
  uint64_t checksum_ = 0;
};

// Entropy (nats per token) of the empirical unigram distribution of the dataset's tokens:
// -sum_v p(v) log p(v). A language model that beats this has learned more than frequencies.
double UnigramEntropy(const TokenDataset& dataset);

}  // namespace grove::data
