#!/usr/bin/env bash
# Plain vs LSH-compressed expert all-to-all over bandwidth-limited links (docs/lsh.md#shaped-
# links): two ranks (ep = 2, dp = 2) in two network namespaces joined by a bridge in a third
# (tests/multihost/netns_setup.sh), each host's egress shaped by netem (rate, delay; tbf, rate
# only, where the kernel lacks netem); TCP only,
# every packet stays inside the namespaces this script creates and removes. The same config
# trains once with the plain dispatcher and once with model.moe.lsh.enabled (warm-up shortened to
# --lsh-warmup steps so the timed steps compress); JSON lines: mean step and all-to-all ms over
# the steps after --skip, LSH vs plain in the same run, bytes per step.
# Usage (root): bench/lsh/shaped_links.sh [--rate 50mbit] [--delay 1ms] [--steps 40] [--skip 10]
#        [--build build] [--out runs/lsh-shaped]
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=50mbit
DELAY=1ms
STEPS=40
SKIP=10
WARM=5
BUILD=${GROVE_BUILD_DIR:-build}
OUT=runs/lsh-shaped
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --delay) DELAY=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --lsh-warmup) WARM=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
WORKER=$(realpath "$BUILD/worker/grove-worker")
HERE=$(realpath tests/multihost)
OUT=$(realpath -m "$OUT")
mkdir -p "$OUT"
# shellcheck source=../../tests/multihost/netns_setup.sh
source "$HERE/netns_setup.sh"
P=glsh$$
trap 'netns_down $P' EXIT
netns_up "$P" || { echo "cannot create network namespaces (needs root)" >&2; exit 77; }
# netem (rate + delay) where the kernel has it; else tbf (rate only; the delay is reported "none").
for h in a b; do
  if ! ip netns exec "$P-$h" tc qdisc add dev eth0 root netem rate "$RATE" delay "$DELAY" \
    limit 10000 2>/dev/null; then
    ip netns exec "$P-$h" tc qdisc add dev eth0 root tbf rate "$RATE" burst 64kb latency 200ms
    DELAY=none
  fi
done
export GROVE_NETNS_MAP="10.218.0.2=$P-a=hosta 10.218.0.3=$P-b=hostb"
export OMP_NUM_THREADS=1

cat > "$OUT/base.json" <<JSON
{
  "model": {"vocab_size": 8192, "d_model": 128, "n_layers": 2, "n_heads": 4, "max_seq_len": 128,
            "moe": {"num_experts": 8, "top_k": 2, "every": 1}},
  "train": {"batch_size": 16, "seq_len": 128, "steps": $STEPS, "lr": 2e-3, "min_lr": 2e-4,
            "beta2": 0.99, "warmup_steps": 5, "eval_every": 0, "checkpoint_every": 0,
            "recompute": "none", "threads": 1},
  "data": {"dir": "$(realpath runs/data-brown-8192)"},
  "parallel": {"tp": 1, "ep": 2},
  "out_dir": "$OUT/unused"
}
JSON
run() {  # run <name> [--set ...]
  local name=$1
  shift
  rm -rf "${OUT:?}/$name"
  ip netns exec "$P-a" mpirun --allow-run-as-root --oversubscribe -np 2 \
    --host 10.218.0.2:1,10.218.0.3:1 --mca plm_rsh_agent "$HERE/netns_agent.sh" \
    --mca btl tcp,self --mca btl_tcp_if_include "$NETNS_SUBNET" \
    --mca oob_tcp_if_include "$NETNS_SUBNET" -x GROVE_NETNS_MAP -x OMP_NUM_THREADS \
    "$WORKER" train --config "$OUT/base.json" --set "out_dir=$OUT/$name" "$@" \
    > "$OUT/$name.log" 2>&1 || { echo "run $name failed; see $OUT/$name.log" >&2; exit 1; }
}
run plain
run lsh --set model.moe.lsh.enabled=true --set "model.moe.lsh.warmup_steps=$WARM"
/usr/bin/python3 - "$OUT" "$SKIP" "$RATE" "$DELAY" <<'PY'
import json, statistics, sys
out, skip, rate, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(name):
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    steps = [r for r in rows if "loss" in r and "moe" in r and r["step"] > skip]
    ms = [r["ms"] for r in steps]
    a2a = [r["moe"]["a2a_ms"] for r in steps]
    return {"ms": statistics.median(ms), "ms_min": min(ms), "ms_max": max(ms),
            "a2a_ms": statistics.median(a2a), "bytes": statistics.mean(r["moe"]["a2a_bytes"] for r in steps),
            "n": len(ms), "lsh": steps[-1]["moe"].get("lsh")}
p, l = load("plain"), load("lsh")
cfg = {"rate": rate, "delay": delay, "ranks": 2, "ep": 2, "timed_steps": p["n"],
       "note": "2 shared cores, other sessions building: noisy"}
for k, unit in (("ms", "ms/step"), ("a2a_ms", "ms/step")):
    print(json.dumps({"name": f"shaped_lsh_{k}", "config": cfg, "value": l[k], "unit": unit,
                      "peer": f"plain_{k}", "peer_value": p[k], "ratio": p[k] / l[k],
                      "spread": [l["ms_min"], l["ms_max"]] if k == "ms" else None,
                      "peer_spread": [p["ms_min"], p["ms_max"]] if k == "ms" else None}))
print(json.dumps({"name": "shaped_a2a_share_plain", "value": p["a2a_ms"] / p["ms"],
                  "bytes_per_step_plain": p["bytes"], "bytes_per_step_lsh": l["bytes"],
                  "lsh": l["lsh"]}))
PY
