// How a GPU test binary (ctest label gpu) ends on a machine without a CUDA device: its test
// cases skip one by one (GTEST_SKIP with a line saying why), and the binary then exits with
// kSkipExitCode, which ctest reports as "Skipped" (the tests' SKIP_RETURN_CODE property), not as
// "Passed". Host-only cases in the same binary still run; a failure among them is a failure.
// Under GROVE_REQUIRE_GPU=1 (a machine that must have a GPU, e.g. bench/gpu_check.sh) a missing
// device fails the tests instead, so the exit code is theirs.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/tensor.h"

namespace grove::testing {

// The exit code ctest takes as "skipped" (SKIP_RETURN_CODE; 77 as in Automake).
inline constexpr int kSkipExitCode = 77;

inline bool gpu_required_by_env() {
  const char* v = std::getenv("GROVE_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

// The exit code of a GPU test binary whose RUN_ALL_TESTS() returned `rc`: rc itself when a test
// failed, when a device is present or when one is required; otherwise kSkipExitCode, after one
// line naming what was skipped (printed when `print`).
inline int gpu_test_exit_code(int rc, bool print = true) {
  if (rc != 0 || cuda_device_available() || gpu_required_by_env()) return rc;
  if (print) {
    const ::testing::UnitTest& u = *::testing::UnitTest::GetInstance();
    std::printf(
        "no CUDA device: %d GPU test(s) skipped, %d host-only test(s) passed; exiting with %d so "
        "that ctest reports this test as skipped\n",
        u.skipped_test_count(), u.successful_test_count(), kSkipExitCode);
    std::fflush(stdout);
  }
  return kSkipExitCode;
}

}  // namespace grove::testing
