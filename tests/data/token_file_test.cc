#include "data/token_file.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "tests/data/test_util.h"

namespace grove::data {
namespace {

using testing::ScratchDir;

std::vector<int32_t> Iota(size_t n, int32_t mod) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>((i * 7919) % mod);
  return v;
}

TEST(TokenFile, RoundTripUint16) {
  ScratchDir dir("tf");
  const auto tokens = Iota(100003, 65536);
  auto info = WriteTokenFile(dir.file("a.bin"), tokens, TokenDtype::kUint16);
  ASSERT_TRUE(info.ok()) << info.status().message();
  EXPECT_EQ(std::filesystem::file_size(dir.file("a.bin")), 32 + 2 * tokens.size());
  auto ds = TokenDataset::Open(dir.file("a.bin"));
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  ASSERT_EQ(ds->size(), tokens.size());
  EXPECT_EQ(ds->dtype(), TokenDtype::kUint16);
  EXPECT_EQ(ds->checksum(), info->checksum);
  std::vector<int32_t> back(tokens.size());
  ds->Copy(0, back.size(), back.data());
  EXPECT_EQ(back, tokens);
  EXPECT_EQ(ds.value()[12345], tokens[12345]);
}

TEST(TokenFile, RoundTripInt32AndEmpty) {
  ScratchDir dir("tf");
  std::vector<int32_t> tokens = {0, 70000, 1 << 30, 5};
  ASSERT_TRUE(WriteTokenFile(dir.file("b.bin"), tokens, TokenDtype::kInt32).ok());
  auto ds = TokenDataset::Open(dir.file("b.bin"));
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  std::vector<int32_t> back(4);
  ds->Copy(0, 4, back.data());
  EXPECT_EQ(back, tokens);

  ASSERT_TRUE(WriteTokenFile(dir.file("e.bin"), {}, TokenDtype::kUint16).ok());
  auto empty = TokenDataset::Open(dir.file("e.bin"));
  ASSERT_TRUE(empty.ok()) << empty.status().message();
  EXPECT_EQ(empty->size(), 0u);
}

TEST(TokenFile, MoveKeepsMapping) {
  ScratchDir dir("tf");
  const auto tokens = Iota(1000, 8192);
  ASSERT_TRUE(WriteTokenFile(dir.file("a.bin"), tokens, TokenDtype::kUint16).ok());
  auto ds = TokenDataset::Open(dir.file("a.bin"));
  ASSERT_TRUE(ds.ok());
  TokenDataset moved = std::move(ds).value();
  EXPECT_EQ(moved.size(), tokens.size());
  EXPECT_EQ(moved[999], tokens[999]);
}

TEST(TokenFile, TokenTooLargeForDtype) {
  ScratchDir dir("tf");
  auto info = WriteTokenFile(dir.file("a.bin"), {1, 2, 65536}, TokenDtype::kUint16);
  ASSERT_FALSE(info.ok());
  EXPECT_NE(info.status().message().find("index 2"), std::string::npos) << info.status().message();
  EXPECT_FALSE(std::filesystem::exists(dir.file("a.bin")));
  EXPECT_EQ(DtypeForVocab(8192), TokenDtype::kUint16);
  EXPECT_EQ(DtypeForVocab(100000), TokenDtype::kInt32);
}

TEST(TokenFile, TruncatedFileDetected) {
  ScratchDir dir("tf");
  const std::string path = dir.file("t.bin");
  ASSERT_TRUE(WriteTokenFile(path, Iota(1000, 500), TokenDtype::kUint16).ok());
  std::filesystem::resize_file(path, 32 + 2 * 1000 - 1);
  auto ds = TokenDataset::Open(path);
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find(path), std::string::npos) << ds.status().message();
  EXPECT_NE(ds.status().message().find("truncated"), std::string::npos) << ds.status().message();

  std::filesystem::resize_file(path, 10);  // not even a header
  ds = TokenDataset::Open(path);
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find("truncated"), std::string::npos) << ds.status().message();
}

void FlipByte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(at);
  f.write(&c, 1);
}

TEST(TokenFile, GarbledFileDetected) {
  ScratchDir dir("tf");
  const std::string path = dir.file("g.bin");
  ASSERT_TRUE(WriteTokenFile(path, Iota(1000, 500), TokenDtype::kUint16).ok());
  FlipByte(path, 32 + 777);  // a token byte: the checksum catches it
  auto ds = TokenDataset::Open(path);
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find(path), std::string::npos);
  EXPECT_NE(ds.status().message().find("checksum"), std::string::npos) << ds.status().message();
  EXPECT_TRUE(TokenDataset::Open(path, /*verify_checksum=*/false).ok());

  FlipByte(path, 0);  // the magic
  ds = TokenDataset::Open(path);
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find("magic"), std::string::npos) << ds.status().message();

  auto missing = TokenDataset::Open(dir.file("nope.bin"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(dir.file("nope.bin")), std::string::npos);
}

TEST(TokenFile, UnigramEntropy) {
  ScratchDir dir("tf");
  std::vector<int32_t> uniform4;
  for (int i = 0; i < 4000; ++i) uniform4.push_back(i % 4);
  ASSERT_TRUE(WriteTokenFile(dir.file("u.bin"), uniform4, TokenDtype::kUint16).ok());
  auto u = TokenDataset::Open(dir.file("u.bin"));
  ASSERT_TRUE(u.ok());
  EXPECT_NEAR(UnigramEntropy(u.value()), std::log(4.0), 1e-12);

  // p = (1/2, 1/4, 1/4): H = 1.5 ln 2.
  ASSERT_TRUE(WriteTokenFile(dir.file("s.bin"), {7, 7, 9, 3000}, TokenDtype::kUint16).ok());
  auto s = TokenDataset::Open(dir.file("s.bin"));
  ASSERT_TRUE(s.ok());
  EXPECT_NEAR(UnigramEntropy(s.value()), 1.5 * std::log(2.0), 1e-12);

  ASSERT_TRUE(WriteTokenFile(dir.file("c.bin"), {5, 5, 5}, TokenDtype::kUint16).ok());
  auto c = TokenDataset::Open(dir.file("c.bin"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(UnigramEntropy(c.value()), 0.0);
}

}  // namespace
}  // namespace grove::data
