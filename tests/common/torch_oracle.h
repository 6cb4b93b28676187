// Runs a PyTorch oracle script (tests use Debian's python3-torch through GROVE_TORCH_PYTHON, set
// by ctest) that writes reference tensors to a safetensors file, and reads that file back.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/safetensors.h"

namespace grove::testing {

// `script` relative to the source root; `args` follow the output path on the command line.
// On failure: a test failure naming the command, and an empty file.
inline SafetensorsFile RunTorchOracle(const std::string& script, const std::string& tag,
                                      const std::string& args) {
  const char* py = std::getenv("GROVE_TORCH_PYTHON");
  const char* src = std::getenv("GROVE_SOURCE_DIR");
  if (!py || !src) {
    ADD_FAILURE() << "GROVE_TORCH_PYTHON / GROVE_SOURCE_DIR not set (run through ctest)";
    return {};
  }
  const std::string out =
      (std::filesystem::temp_directory_path() / ("grove_oracle_" + tag + ".safetensors")).string();
  const std::string cmd = std::string(py) + " " + src + "/" + script + " " + out + " " + args;
  const int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << "oracle failed: " << cmd
                   << " (is python3-torch installed? launch/setup.sh installs it)";
  auto f = ReadSafetensors(out);
  EXPECT_TRUE(f.ok()) << f.status().message();
  std::filesystem::remove(out);
  return f.ok() ? std::move(f).value() : SafetensorsFile{};
}

}  // namespace grove::testing
