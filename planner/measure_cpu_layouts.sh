#!/usr/bin/env bash
# Measures the step time of the demo model (configs/demo.json) at several CPU layouts with
# grove-worker under mpirun, one JSON line per layout on stdout:
#   {"name":"np2-tp2-ep2","np":2,"tp":2,"cp":1,"ep":2,"dp":1,"recompute":"selective","lsh":false,
#    "step_ms_median":..., "a2a_ms_median":..., "load_avg_1min":[before, after], "step_ms":[...]}
# (a2a_ms: rank 0's time in the expert all-to-alls, as the worker logs it; the load average of the
# machine before and after the run, since other processes share the cores).
# The first two steps (warm-up, first touch) are left out of the median. One OpenMP thread per
# rank: on this machine a rank is one core ("device" in configs/clusters/cpu-this-machine.json).
#
# Usage: planner/measure_cpu_layouts.sh BUILD_DIR OUT_DIR [STEPS] [LAYOUT_NAME...]
set -euo pipefail
build=${1:?usage: measure_cpu_layouts.sh BUILD_DIR OUT_DIR [STEPS] [LAYOUT...]}
out=${2:?usage: measure_cpu_layouts.sh BUILD_DIR OUT_DIR [STEPS] [LAYOUT...]}
steps=${3:-10}
shift 3 2>/dev/null || shift $#
src=$(cd "$(dirname "$0")/.." && pwd)
worker=$build/worker/grove-worker
[[ -x $worker ]] || { echo "measure_cpu_layouts: $worker is not built (cmake --build $build --target grove-worker)" >&2; exit 2; }
data=${GROVE_DATA_DIR:-$src/runs/data-brown-8192}
[[ -f $data/train.bin ]] || { echo "measure_cpu_layouts: no dataset in $data (run launch/setup.sh)" >&2; exit 2; }
mkdir -p "$out"

# name np tp cp ep dp recompute lsh
layouts=(
  "np1-base 1 1 1 1 1 selective false"
  "np2-tp2-ep2 2 2 1 2 1 selective false"
  "np2-dp2-ep2 2 1 1 2 2 selective false"
  "np2-dp2 2 1 1 1 2 selective false"
  "np2-cp2 2 1 2 1 1 selective false"
  "np2-dp2-full 2 1 1 1 2 full false"
  "np2-dp2-ep2-lsh 2 1 1 2 2 selective true"
  "np2-tp2-none 2 2 1 1 1 none false"
  "np4-tp2-ep2-dp2 4 2 1 2 2 selective false"
  "np4-dp4-ep4 4 1 1 4 4 selective false"
  "np4-tp2-cp2-ep2 4 2 2 2 1 selective false"
  "np4-dp4-ep4-lsh 4 1 1 4 4 selective true"
  "np4-tp4-full 4 4 1 1 1 full false"
  "np4-tp4-ep4 4 4 1 4 1 selective false"
  "np2-dp2-none 2 1 1 1 2 none false"
  "np4-dp4-ep4-none 4 1 1 4 4 none false"
)
want=("$@")
for l in "${layouts[@]}"; do
  read -r name np tp cp ep dp rc lsh <<<"$l"
  if ((${#want[@]})); then
    keep=0
    for w in "${want[@]}"; do [[ $w == "$name" ]] && keep=1; done
    ((keep)) || continue
  fi
  dir=$out/$name
  rm -rf "$dir"
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  if ! OMP_NUM_THREADS=1 timeout 900 mpirun --allow-run-as-root --oversubscribe --mca btl self,vader \
      -x OMP_NUM_THREADS -np "$np" "$worker" train -q --config "$src/configs/demo.json" \
      --tp "$tp" --cp "$cp" --ep "$ep" --dp "$dp" --set train.recompute="$rc" \
      --set model.moe.lsh.enabled="$lsh" --set train.steps="$steps" --set train.eval_every=100000 \
      --set train.checkpoint_every=0 --set train.keep_checkpoints=1 --set train.threads=1 \
      --set data.dir="$data" --set out_dir="$dir" >"$out/$name.log" 2>&1; then
    echo "measure_cpu_layouts: $name failed (log: $out/$name.log)" >&2
    continue
  fi
  load_after=$(cut -d' ' -f1 /proc/loadavg)
  /usr/bin/python3 - "$dir/metrics.jsonl" "$name" "$np" "$tp" "$cp" "$ep" "$dp" "$rc" "$lsh" \
      "$load_before" "$load_after" <<'EOF'
import json, statistics, sys
path, name, np_, tp, cp, ep, dp, rc, lsh, load0, load1 = sys.argv[1:]
ms, a2a_ms = [], []
for line in open(path):
    j = json.loads(line)
    if "ms" in j:
        ms.append(j["ms"])
        a2a_ms.append(j.get("moe", {}).get("a2a_ms", 0.0))
tail = ms[2:] if len(ms) > 3 else ms
a2a_tail = a2a_ms[2:] if len(ms) > 3 else a2a_ms
print(json.dumps({"name": name, "np": int(np_), "tp": int(tp), "cp": int(cp), "ep": int(ep),
                  "dp": int(dp), "recompute": rc, "lsh": lsh == "true",
                  "step_ms_median": round(statistics.median(tail), 2),
                  "a2a_ms_median": round(statistics.median(a2a_tail), 2),
                  "load_avg_1min": [float(load0), float(load1)],
                  "step_ms": [round(x, 1) for x in ms]}))
EOF
done
