#!/usr/bin/env bash
# GPU check: on a machine with a GPU, run every GPU test and the GPU benchmarks, once, and print
# their output (device time is short, so nothing heavy is built there; docs/gpu.md).
#
#   bench/gpu_pack.sh                      (here: build and collect the binaries in .gpu-carry)
#   bash bench/gpu_check.sh [.gpu-carry]   (there, from the repository root)
#
# Runs: the CUDA kernel tests, the tensor-core attention tests, the GPU model against the PyTorch
# oracle (python3 with torch must be on that machine), every layout of the GPU model against one
# rank over the thread transport (and NCCL at one rank), the trainer's GPU test when its libraries
# load there, the kernel benchmark, the parallel benchmark (tree vs ring attention, LSH vs plain
# all-to-all, tp / ep step time, tree vs ring decode latency, on thread ranks), and the training
# benchmark (a ~1B dense model and an MoE model) next to PyTorch.
# Device time is the budget: GROVE_GPU_CHECK_BUDGET_S (default 480 s) for the whole check; each
# part runs under min(its own limit, what is left), and a part that would start with less than
# 20 s left is skipped with a line saying so. Each part prints how long it took; the end prints
# the table of parts and times.
# With $OUT set, the log goes to $OUT/gpu_check.log and each benchmark's JSON lines to
# $OUT/<bench>.jsonl. Exit status: non-zero when a test or a benchmark fails or was cut short.
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
BUDGET=${GROVE_GPU_CHECK_BUDGET_S:-480}
START=$SECONDS
TIMES=()
loads() { ! ldd "$1" 2>/dev/null | grep -q "not found"; }
run() {  # run NAME TIMEOUT CMD...: one line per result, the output kept
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ $left -lt 20 ]; then
    echo "== $name: skipped, ${left} s of the ${BUDGET} s budget left"
    TIMES+=("$name: skipped (budget)")
    status=1
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (limit $limit s)"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "-- $name: exit $rc in $((SECONDS - t0)) s"
  TIMES+=("$name: exit $rc, $((SECONDS - t0)) s")
  [ $rc -eq 0 ] || status=1
}

for t in "$DIR"/tests/*; do
  name=$(basename "$t")
  if ! loads "$t"; then
    echo "== $name: skipped, its libraries are not on this machine:"
    ldd "$t" | grep "not found" | head -5
    continue
  fi
  run "$name" 120 "$t" --gtest_brief=1
done

if [ -x "$DIR/bench/bench_gpu_parallel" ]; then
  # Thread ranks on this one device: tree vs ring attention (cp=4, 8k tokens), LSH vs plain
  # all-to-all (ep=2), tp=2 and ep=2 step time against one rank, tree vs ring decode latency
  # (cp=4, 64k context).
  J=${OUT:-/tmp}/bench_gpu_parallel.jsonl
  run bench_gpu_parallel 150 bash -c "set -o pipefail; '$DIR/bench/bench_gpu_parallel' \
      ${GROVE_GPU_PARALLEL_ARGS:-} | tee '$J'"
fi
if [ -x "$DIR/bench/bench_gpu_train" ]; then
  # The ~1B dense model, then an MoE model (8 experts, top-2, every other block), each next to
  # PyTorch training the same model in the same run.
  J=${OUT:-/tmp}/bench_gpu_train.jsonl
  run bench_gpu_train 150 bash -c "set -o pipefail; '$DIR/bench/bench_gpu_train' --python '$GROVE_TORCH_PYTHON' \
      --peer '$ROOT/bench/cuda/torch_train_peer.py' ${GROVE_GPU_TRAIN_ARGS:-} | tee '$J'"
  J=${OUT:-/tmp}/bench_gpu_train_moe.jsonl
  MOE_ARGS=${GROVE_GPU_TRAIN_MOE_ARGS:---d-model 1024 --heads 8 --experts 8 --top-k 2 --moe-every 2}
  run bench_gpu_train_moe 120 bash -c "set -o pipefail; '$DIR/bench/bench_gpu_train' --python '$GROVE_TORCH_PYTHON' \
      --peer '$ROOT/bench/cuda/torch_train_peer.py' $MOE_ARGS | tee '$J'"
fi
# Last: the kernel benchmark (what is left of the budget goes to it).
if [ -x "$DIR/bench/bench_cuda_kernels" ]; then
  J=${OUT:-/tmp}/bench_cuda_kernels.jsonl
  run bench_cuda_kernels 90 bash -c "set -o pipefail; '$DIR/bench/bench_cuda_kernels' | tee '$J'"
fi
echo "== times (budget $BUDGET s, used $((SECONDS - START)) s)"
printf '   %s\n' "${TIMES[@]}"
echo "== gpu_check done (status $status)"
exit $status
