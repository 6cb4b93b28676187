// main() for single-process GPU test binaries (grove_test(... GPU)): every test runs as usual;
// without a CUDA device the binary exits with the skip code (tests/common/gpu_skip.h).
#include <gtest/gtest.h>

#include "tests/common/gpu_skip.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return grove::testing::gpu_test_exit_code(RUN_ALL_TESTS());
}
