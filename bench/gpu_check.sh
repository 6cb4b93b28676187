#!/usr/bin/env bash
# GPU check: on a machine with a GPU, run every GPU test and the GPU benchmarks, once, and print
# their output (device time is short, so nothing heavy is built there; docs/gpu.md).
#
#   bench/gpu_pack.sh                      (here: build and collect the binaries in .gpu-carry)
#   bash bench/gpu_check.sh [.gpu-carry]   (there, from the repository root)
#
# Runs: the CUDA kernel tests, the tensor-core attention tests, the GPU model against the PyTorch
# oracle (python3 with torch must be on that machine), the trainer's GPU test when its libraries
# load there, the kernel benchmark, and the training benchmark (a ~1B dense model and an MoE
# model) next to PyTorch.
# With $OUT set, the log goes to $OUT/gpu_check.log and each benchmark's JSON lines to
# $OUT/<bench>.jsonl. Exit status: non-zero when a test or a benchmark fails.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${1:-.gpu-carry}
LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && LOG=$OUT/gpu_check.log; fi
exec > >(tee -a "$LOG") 2>&1
# Tests fail instead of skipping when this machine's GPU cannot be used (e.g. driver too old).
export GROVE_REQUIRE_GPU=${GROVE_REQUIRE_GPU:-1}
export GROVE_SOURCE_DIR=$ROOT
export GROVE_TORCH_PYTHON=${GROVE_TORCH_PYTHON:-python3}
# The CUDA libraries the binaries link: the toolkit's, else those of the pip CUDA wheels.
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib \
    $(python3 -c 'import nvidia, os; p = nvidia.__path__[0]; print(" ".join(os.path.join(p, x, "lib") for x in os.listdir(p)))' 2>/dev/null); do
  [ -d "$d" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
done
export LD_LIBRARY_PATH

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 ||
  echo "nvidia-smi: not available"
if command -v nvcc >/dev/null; then nvcc --version | tail -1; else echo "nvcc: not on PATH"; fi
$GROVE_TORCH_PYTHON -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)   date: $(date -u +%FT%TZ)"
if [ ! -d "$DIR/tests" ]; then
  echo "no $DIR/tests: run bench/gpu_pack.sh on the build machine and carry $DIR"
  exit 2
fi

status=0
loads() { ! ldd "$1" 2>/dev/null | grep -q "not found"; }
run() {  # run NAME TIMEOUT CMD...: one line per result, the output kept
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "-- $name: exit $rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}

for t in "$DIR"/tests/*; do
  name=$(basename "$t")
  if ! loads "$t"; then
    echo "== $name: skipped, its libraries are not on this machine:"
    ldd "$t" | grep "not found" | head -5
    continue
  fi
  run "$name" 300 "$t" --gtest_brief=1
done

if [ -x "$DIR/bench/bench_cuda_kernels" ]; then
  J=${OUT:-/tmp}/bench_cuda_kernels.jsonl
  run bench_cuda_kernels 300 bash -c "set -o pipefail; '$DIR/bench/bench_cuda_kernels' | tee '$J'"
fi
if [ -x "$DIR/bench/bench_gpu_train" ]; then
  # The ~1B dense model, then an MoE model (8 experts, top-2, every other block), each next to
  # PyTorch training the same model in the same run.
  J=${OUT:-/tmp}/bench_gpu_train.jsonl
  run bench_gpu_train 420 bash -c "set -o pipefail; '$DIR/bench/bench_gpu_train' --python '$GROVE_TORCH_PYTHON' \
      --peer '$ROOT/bench/cuda/torch_train_peer.py' ${GROVE_GPU_TRAIN_ARGS:-} | tee '$J'"
  J=${OUT:-/tmp}/bench_gpu_train_moe.jsonl
  MOE_ARGS=${GROVE_GPU_TRAIN_MOE_ARGS:---d-model 1024 --heads 8 --experts 8 --top-k 2 --moe-every 2}
  run bench_gpu_train_moe 420 bash -c "set -o pipefail; '$DIR/bench/bench_gpu_train' --python '$GROVE_TORCH_PYTHON' \
      --peer '$ROOT/bench/cuda/torch_train_peer.py' $MOE_ARGS | tee '$J'"
fi
echo "== gpu_check done (status $status)"
exit $status
