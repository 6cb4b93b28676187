#!/usr/bin/env bash
# Calibrates the cost model on this machine and writes its cluster description
# (docs/planning.md#calibration): runs Grove's own benchmarks with one OpenMP thread per rank
# (bench_sgemm: GEMM throughput by shape; bench_attention: the attention kernels; comm_bench
# under mpirun -np 2 and 4: the MPI collectives), one single-rank training run of
# configs/demo.json (its median step fixes the bandwidth of the memory-bound passes), and fits
# them with `grove calibrate`.
#
# Usage: planner/calibrate_cpu.sh BUILD_DIR OUT_JSON [WORK_DIR]
# Needs the targets grove, grove-worker, bench_sgemm, bench_attention, comm_bench.
set -euo pipefail
build=${1:?usage: calibrate_cpu.sh BUILD_DIR OUT_JSON [WORK_DIR]}
out=${2:?usage: calibrate_cpu.sh BUILD_DIR OUT_JSON [WORK_DIR]}
work=${3:-$build/calibration}
src=$(cd "$(dirname "$0")/.." && pwd)
for t in coordinator/grove worker/grove-worker bench/kernels/bench_sgemm \
         bench/kernels/bench_attention bench/comm/comm_bench; do
  [[ -x $build/$t ]] || { echo "calibrate_cpu: $build/$t is not built" >&2; exit 2; }
done
mkdir -p "$work"
bench=$work/bench.jsonl
: >"$bench"
export OMP_NUM_THREADS=1
echo "calibrate_cpu: sgemm" >&2
"$build/bench/kernels/bench_sgemm" 0.3 >>"$bench"
echo "calibrate_cpu: attention" >&2
"$build/bench/kernels/bench_attention" 5 >>"$bench"
for np in 2 4; do
  echo "calibrate_cpu: collectives, $np ranks" >&2
  mpirun --allow-run-as-root --oversubscribe --mca btl self,vader -x OMP_NUM_THREADS -np "$np" \
    "$build/bench/comm/comm_bench" --min-bytes 4096 --max-bytes 4194304 --rounds 3 >>"$bench"
done
echo "calibrate_cpu: one-rank step of configs/demo.json" >&2
"$src/planner/measure_cpu_layouts.sh" "$build" "$work/steps" 12 np1-base >"$work/step.jsonl"
step_ms=$(/usr/bin/python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["step_ms_median"])' "$work/step.jsonl")
echo "calibrate_cpu: median step $step_ms ms" >&2
"$build/coordinator/grove" calibrate --bench "$bench" --config "$src/configs/demo.json" \
  --set parallel.tp=1 --set parallel.ep=1 --step-ms "$step_ms" --out "$out" \
  --cores "$(getconf _NPROCESSORS_ONLN)" --name cpu-this-machine
