#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries here (CUDA on, sm_90) and copies them, with what they
# read at run time, into one folder to carry to a GPU machine (which has CUDA and PyTorch but not
# OpenBLAS, MPI or gRPC):
#
#   bench/gpu_pack.sh [dest]      (default: .gpu-carry, ignored by git)
#   then on the GPU machine:  bash bench/gpu_check.sh .gpu-carry
#
# The binaries that link only the CUDA libraries (kernel tests, GPU model test, the layouts of the
# model over the thread transport, benchmarks) run there as they are; the trainer's GPU test links MPI and OpenBLAS and is copied only to be tried.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu-carry}
BUILD=${GROVE_GPU_BUILD_DIR:-build-cuda}
cmake -S . -B "$BUILD" -G Ninja -DGROVE_CUDA=ON -DGROVE_TEST_DIRS="cuda;comm;model;worker" >/dev/null
TARGETS=(test_cuda_kernels test_gpu_transformer test_cuda_thread_equivalence
         bench_cuda_kernels bench_gpu_train bench_gpu_parallel test_gpu_train)
if [ -f "$BUILD/build.ninja" ] && ninja -C "$BUILD" -t targets all | grep -q "^test_cuda_nccl_equivalence:"; then
  TARGETS+=(test_cuda_nccl_equivalence)  # only when the build found NCCL
fi
if grep -q "test_cuda_attention" tests/cuda/CMakeLists.txt; then TARGETS+=(test_cuda_attention); fi
ninja -C "$BUILD" "${TARGETS[@]}"
rm -rf "$DEST"
mkdir -p "$DEST/tests" "$DEST/bench"
for t in "${TARGETS[@]}"; do
  f=$(find "$BUILD" -type f -name "$t" -perm -u+x | head -1)
  case "$t" in bench_*) cp "$f" "$DEST/bench/" ;; *) cp "$f" "$DEST/tests/" ;; esac
done
strip --strip-debug "$DEST"/tests/* "$DEST"/bench/* 2>/dev/null || true
grep -qx "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >> .git/info/exclude
du -sh "$DEST"
ls -l "$DEST"/tests "$DEST"/bench
# What the GPU machine lacks must not be needed: every binary but the trainer's test links no MPI,
# OpenBLAS or gRPC.
for f in "$DEST"/tests/* "$DEST"/bench/*; do
  case "$(basename "$f")" in test_gpu_train) continue ;; esac
  if ldd "$f" | grep -E "libmpi|openblas|libgrpc|libprotobuf"; then
    echo "gpu_pack: $f links a library the GPU machine does not have" >&2
    exit 1
  fi
done
