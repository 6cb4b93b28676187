#!/usr/bin/env bash
# Runs the whole test suite: setup (packages, corpus, build, dataset), then every ctest entry.
# GPU tests (label gpu) report Skipped when no CUDA device is present. Without nvcc the GPU and
# CUDA-emulator tests are not built; ctest lists cuda_tests_not_built as Skipped, and the reason
# is printed after the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
BUILD_DIR=${GROVE_BUILD_DIR:-build}
printf '\n==> running tests\n'
cd "$BUILD_DIR"
rc=0
ctest --output-on-failure --timeout 900 "$@" || rc=$?
if [ -s grove_cuda_status.txt ]; then
  printf '\n==> note: %s\n' "$(cat grove_cuda_status.txt)"
fi
exit $rc
