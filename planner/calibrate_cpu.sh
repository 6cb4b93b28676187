#!/usr/bin/env bash
# Calibrates the cost model on this machine and writes its cluster description
# (docs/planning.md#calibration): runs Grove's own benchmarks with one OpenMP thread per rank
# (bench_sgemm: GEMM throughput by shape, and two at once for the compute capacity the ranks
# share; bench_attention: the attention kernels; comm_bench
# under mpirun -np 2 and 4: the MPI collectives), one single-rank training run of
# configs/demo.json (its median step fixes the bandwidth of the memory-bound passes), one 2-rank
# tp2 run (the latency of a blocking collective inside a step is solved so that the model predicts
# that step), and fits them with `grove calibrate`.
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
# The 1-rank step of configs/demo.json (its median fixes the bandwidth of the memory-bound passes)
# and a 2-rank tp2 step without recompute (its tensor-parallel collectives fix the latency a
# blocking collective sees inside a step), three interleaved rounds of the two. Each round gives a
# layout the median of its steps; the calibration takes the fastest round's, since whatever else
# runs on the machine only slows a step (on the idle 2-vCPU VM the tp2 step measured 300 ms in one
# round and 509 and 521 ms in the next two, each round steady within itself: for minutes the two
# ranks got one core's worth of time). Rounds that differ by more than 20% are reported.
for r in 1 2 3; do
  echo "calibrate_cpu: steps, round $r of 3 (1 rank; 2 ranks tp2)" >&2
  "$src/planner/measure_cpu_layouts.sh" "$build" "$work/steps" 12 np1-base np2-tp2-none \
    >"$work/steps$r.jsonl"
done
read -r step_ms tp2_ms < <(/usr/bin/python3 - "$work" <<'EOF'
import glob, json, statistics, sys
runs = [json.loads(l) for f in sorted(glob.glob(sys.argv[1] + "/steps[123].jsonl")) for l in open(f)]
def fastest_round(name):
    rounds = [r["step_ms_median"] for r in runs if r["name"] == name]
    if not rounds:
        sys.exit(f"calibrate_cpu: {name} failed in every round (logs: {sys.argv[1]}/steps/{name}.log)")
    if max(rounds) > 1.2 * min(rounds):
        print(f"calibrate_cpu: warning: {name}'s rounds differ by more than 20% (medians "
              f"{', '.join(f'{x:.0f}' for x in rounds)} ms): something else took the cores; the "
              "fastest round is used, rerun on an idle machine if in doubt", file=sys.stderr)
    return min(rounds)
print(fastest_round("np1-base"), fastest_round("np2-tp2-none"))
EOF
)
[[ -n ${step_ms:-} && -n ${tp2_ms:-} ]] || exit 1
echo "calibrate_cpu: step $step_ms ms (1 rank), $tp2_ms ms (2 ranks, tp2): the fastest round's median" >&2
calibrate() {  # calibrate OUT STEP_LATENCY_US
  "$build/coordinator/grove" calibrate --bench "$bench" --config "$src/configs/demo.json" \
    --set parallel.tp=1 --set parallel.ep=1 --step-ms "$step_ms" --out "$1" \
    --cores "$cores" --name cpu-this-machine --step-latency-us "$2"
}
# The in-step latency sigma: the tp2 step is linear in it (the collectives are blocking, no
# overlap on this machine), so two predictions (sigma 0 and 1 ms) give the line, and sigma is
# where it meets the measured step. A step faster than the prediction at sigma 0 gives 0.
calibrate "$work/cluster0.json" 0
latency_us=$(/usr/bin/python3 - "$build/coordinator/grove" "$work" "$src/configs/demo.json" \
    "$tp2_ms" <<'EOF'
import json, subprocess, sys
grove, work, model, measured_ms = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
base = json.load(open(work + "/cluster0.json"))
def predict_ms(sync_us):
    c = json.loads(json.dumps(base))
    c["intra_node"]["sync_latency_us"] = sync_us
    path = f"{work}/cluster-sync{sync_us}.json"
    json.dump(c, open(path, "w"))
    out = subprocess.run([grove, "--json", "plan", "--model", model, "--cluster", path,
                          "--gpus", "2", "--tp", "2", "--cp", "1", "--ep", "1", "--dp", "1",
                          "--recompute", "none", "--set", "model.moe.lsh.enabled=false",
                          "--top", "1"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["layouts"][0]["step_s"] * 1e3
p0, p1 = predict_ms(0), predict_ms(1000)
sync_us = max(0.0, (measured_ms - p0) / (p1 - p0) * 1000)
print(round(sync_us + base["intra_node"]["latency_us"], 1))
print(f"calibrate_cpu: tp2 predicted {p0:.1f} ms at sigma 0, {p1:.1f} ms at 1 ms; measured "
      f"{measured_ms:.1f} ms: sigma {sync_us:.0f} us", file=sys.stderr)
EOF
)
echo "calibrate_cpu: $latency_us us per in-step collective" >&2
calibrate "$out" "$latency_us"
# Where and when: the description records the date, the CPU, the OpenBLAS kernel choice and the
# two steps the fit used, so a cluster file read later says what it was measured on.
/usr/bin/python3 - "$out" "$step_ms" "$tp2_ms" "$cores" <<'EOF'
import json, os, platform, sys, time
path, step_ms, tp2_ms, cores = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
cpu = platform.processor() or "unknown CPU"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
blas = os.environ.get("OPENBLAS_CORETYPE")
blas = f"OpenBLAS {blas} kernels (OPENBLAS_CORETYPE)" if blas else "OpenBLAS's own kernel choice"
c = json.load(open(path))
c["description"] = (f"{os.cpu_count()}-vCPU {cpu}, {blas}, OpenMPI shared memory; calibrated by "
                    f"planner/calibrate_cpu.sh at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
                    f"{c['description'].removeprefix('calibrated ')}; {cores} cores of compute "
                    f"capacity, 1-rank step {step_ms:.0f} ms, 2-rank tp2 step {tp2_ms:.0f} ms "
                    "(fastest of 3 rounds)")
json.dump(c, open(path, "w"), indent=2, sort_keys=True)
open(path, "a").write("\n")
EOF
