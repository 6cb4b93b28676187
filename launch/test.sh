#!/usr/bin/env bash
# Runs the whole test suite: setup (packages, corpus, build, dataset), then every ctest entry.
# GPU tests (label gpu) skip with a message when no CUDA device is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
BUILD_DIR=${GROVE_BUILD_DIR:-build}
printf '\n==> running tests\n'
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 900 "$@"
