#!/usr/bin/env bash
# GPU check: on a machine with a GPU, run the GPU-labelled tests and the CUDA kernel benchmark and
# print their output. Uses the carried build directory when its binaries load there; otherwise
# rebuilds just the CUDA kernels, their test and the benchmark with the local nvcc (the GPU machine
# may lack OpenBLAS, MPI and gRPC, so the full CMake configure may not work there).
#
#   bench/gpu_check.sh [build-dir]        (default: build-cuda, relative to the repository root)
#
# With $OUT set, a copy of everything goes to $OUT/gpu_check.log and the benchmark's JSON lines to
# $OUT/bench_cuda_kernels.jsonl. Exit status: non-zero when a test fails or the benchmark fails.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${1:-build-cuda}
LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && LOG=$OUT/gpu_check.log; fi
exec > >(tee -a "$LOG") 2>&1
# Tests fail instead of skipping when this machine's GPU cannot be used (e.g. driver too old).
export GROVE_REQUIRE_GPU=1

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
if command -v nvcc >/dev/null; then nvcc --version | tail -1; else echo "nvcc: not on PATH"; fi
if command -v cmake >/dev/null; then cmake --version | head -1; else echo "cmake: not available"; fi
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)   date: $(date -u +%FT%TZ)"

TEST=$BUILD/tests/cuda/test_cuda_kernels
BENCH=$BUILD/bench/cuda/bench_cuda_kernels
loads() { [ -x "$1" ] && ! ldd "$1" 2>/dev/null | grep -q "not found"; }

if ! loads "$TEST" || ! loads "$BENCH"; then
  echo "== carried binaries missing or not loadable here:"
  for b in "$TEST" "$BENCH"; do [ -e "$b" ] && ldd "$b" | grep "not found"; done
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  if [ ! -x "$NVCC" ]; then echo "no nvcc to rebuild with"; exit 2; fi
  echo "== rebuilding the CUDA kernels, test and benchmark with $NVCC (sm_90)"
  FB=$(mktemp -d /tmp/grove-gpu-build.XXXX)
  FLAGS=(-O3 -std=c++20 -arch=sm_90 -I"$ROOT" -DGROVE_HAVE_CUDA=1 --expt-relaxed-constexpr)
  LIB_SRC=("$ROOT"/kernels/cuda/*.cu "$ROOT"/kernels/cuda/blas_handle.cc "$ROOT"/core/tensor.cc)
  "$NVCC" "${FLAGS[@]}" "${LIB_SRC[@]}" "$ROOT"/bench/cuda/bench_cuda_kernels.cu \
      -lcublas -lcublasLt -o "$FB/bench_cuda_kernels" || exit 2
  BENCH=$FB/bench_cuda_kernels
  if [ -f /usr/include/gtest/gtest.h ]; then
    "$NVCC" "${FLAGS[@]}" "${LIB_SRC[@]}" "$ROOT"/tests/cuda/test_cuda_kernels.cc \
        "$ROOT"/tests/cuda/test_reference.cc -lcublas -lcublasLt -lgtest -lgtest_main -lpthread \
        -o "$FB/test_cuda_kernels" || exit 2
    TEST=$FB/test_cuda_kernels
  else
    echo "GoogleTest not installed here: tests cannot be rebuilt"; TEST=""
  fi
fi

status=0
echo "== GPU tests"
if [ -n "$TEST" ]; then
  # ctest -L gpu when the build tree was configured at this path (its test paths are absolute).
  if command -v ctest >/dev/null && [ -f "$BUILD/CTestTestfile.cmake" ] &&
      grep -q "$ROOT/$BUILD" "$BUILD/CTestTestfile.cmake" 2>/dev/null; then
    ctest --test-dir "$BUILD" -L gpu --output-on-failure || status=1
  else
    "$TEST" || status=1
  fi
else
  status=1
fi

echo "== CUDA kernel benchmark"
if [ -n "${OUT:-}" ]; then
  "$BENCH" | tee "$OUT/bench_cuda_kernels.jsonl" || status=1
else
  "$BENCH" || status=1
fi
echo "== gpu_check done (status $status)"
exit $status
