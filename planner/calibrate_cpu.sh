#!/usr/bin/env bash
# Calibrates the cost model on this machine and writes its cluster description
# (docs/planning.md#calibration): runs Grove's own benchmarks with one OpenMP thread per rank
# (bench_sgemm: GEMM throughput by shape, and two at once for the compute capacity the ranks
# share; bench_attention: the attention kernels; comm_bench
# under mpirun -np 2 and 4: the MPI collectives), one single-rank training run of
# configs/demo.json (its median step fixes the bandwidth of the memory-bound passes), one 2-rank
# run (its all-to-all time per call is the latency of a collective inside a step), and fits them
# with `grove calibrate`.
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
# The compute capacity the ranks share: two single-thread bench_sgemm at once against one alone
# (two vCPUs need not give two cores' throughput: host SMT siblings, other tenants).
# Three interleaved rounds of (one alone, two at once); the ratio of the medians.
echo "calibrate_cpu: sgemm, 2 at once" >&2
for r in 1 2 3; do
  "$build/bench/kernels/bench_sgemm" 0.3 >"$work/sgemm-solo$r.jsonl"
  "$build/bench/kernels/bench_sgemm" 0.3 >"$work/sgemm-pair$r-a.jsonl" &
  "$build/bench/kernels/bench_sgemm" 0.3 >"$work/sgemm-pair$r-b.jsonl"
  wait
done
cores=$(/usr/bin/python3 - "$work" <<'EOF'
import glob, json, statistics, sys
def gflops(pattern):
    return [json.loads(l)["value"] for f in sorted(glob.glob(sys.argv[1] + "/" + pattern))
            for l in open(f) if '"sgemm"' in l]
print(round(2 * statistics.median(gflops("sgemm-pair*")) / statistics.median(gflops("sgemm-solo*")), 3))
EOF
)
echo "calibrate_cpu: compute capacity $cores cores" >&2
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
# The latency a blocking collective sees inside a step: a 2-rank dp2 ep2 run's expert all-to-all
# time per call (5 per MoE layer and micro-batch: counts, dispatch, combine, two backward; their
# bytes take ~0.2 ms of the ~20 ms a call costs on the loaded machine and are not subtracted).
echo "calibrate_cpu: in-step collective latency (2 ranks, dp2 ep2)" >&2
"$src/planner/measure_cpu_layouts.sh" "$build" "$work/steps" 12 np2-dp2-ep2 >"$work/a2a.jsonl"
latency_us=$(/usr/bin/python3 - "$work/a2a.jsonl" "$src/configs/demo.json" <<'EOF'
import json, sys
run = json.loads(open(sys.argv[1]).readline())
cfg = json.load(open(sys.argv[2]))
m, t = cfg["model"], cfg["train"]
every = m["moe"].get("every", 1)
moe_layers = sum(1 for l in range(m["n_layers"]) if (l + 1) % every == 0)
calls = 5 * moe_layers * t.get("grad_accum", 1)
print(round(run["a2a_ms_median"] / calls * 1000.0, 1))
EOF
)
echo "calibrate_cpu: $latency_us us per in-step collective" >&2
"$build/coordinator/grove" calibrate --bench "$bench" --config "$src/configs/demo.json" \
  --set parallel.tp=1 --set parallel.ep=1 --step-ms "$step_ms" --out "$out" \
  --cores "$cores" --name cpu-this-machine --step-latency-us "$latency_us"
