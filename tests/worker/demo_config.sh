#!/usr/bin/env bash
# The demo (configs/demo.json, what launch/quickstart.sh trains) on its 4 ranks, 4 steps with the
# LSH warm-up shortened to 2: the layout is tp=2 + SP x cp=2 (tree attention), ep=2 with the LSH
# all-to-all, selective recompute; steps 1-2 (uncompressed) follow a single-rank run of the same
# config within 1e-4 relative; steps 3-4 compress (> 2x fewer rows, < half the bytes).
# usage: demo_config.sh GROVE_WORKER MPIEXEC DATA_DIR SOURCE_DIR
set -euo pipefail
worker=$1 mpiexec=$2 data=$3 src=$4
if [ ! -f "$data/train.bin" ]; then
  echo "SKIP: no prepared dataset in $data (run launch/setup.sh)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
args=(train -q --config "$src/configs/demo.json" --set train.steps=4 --set train.eval_every=0
      --set train.checkpoint_every=0 --set model.moe.lsh.warmup_steps=2 --set "data.dir=$data")
"$mpiexec" --allow-run-as-root --oversubscribe --mca btl self,vader -np 4 "$worker" "${args[@]}" \
  --set "out_dir=$tmp/demo"
"$worker" "${args[@]}" --tp 1 --cp 1 --ep 1 --set train.threads=2 --set "out_dir=$tmp/single"

/usr/bin/python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
cfg = json.load(open(f"{tmp}/demo/config.json"))
p, m, t = cfg["parallel"], cfg["model"], cfg["train"]
layout = (p["tp"], p["cp"], p["ep"], p["dp"], p["sequence_parallel"], p["cp_attention"],
          m["moe"]["lsh"]["enabled"], t["recompute"])
print("demo layout (tp, cp, ep, dp, sp, cp_attention, lsh, recompute):", layout)
assert layout == (2, 2, 2, 1, True, "tree", True, "selective"), "configs/demo.json left the demo layout"
def rows(run):
    return {r["step"]: r for r in map(json.loads, open(f"{tmp}/{run}/metrics.jsonl")) if "loss" in r}
demo, single = rows("demo"), rows("single")
assert sorted(demo) == [1, 2, 3, 4], f"demo run logged steps {sorted(demo)}"
for s in (1, 2):
    rel = abs(demo[s]["loss"] - single[s]["loss"]) / single[s]["loss"]
    lsh = demo[s]["moe"]["lsh"]
    print(f"step {s} (warm-up): loss {demo[s]['loss']:.6f} vs single rank {single[s]['loss']:.6f}"
          f" (rel {rel:.2e}), rows ratio {lsh['compression_ratio']:.2f}")
    assert rel <= 1e-4, f"step {s}: the demo layout left the single-rank loss"
    assert lsh["compression_ratio"] == 1.0, f"step {s} is in the warm-up but compressed"
for s in (3, 4):
    moe = demo[s]["moe"]
    sent, raw = moe["a2a_bytes"], moe["lsh"]["a2a_bytes_uncompressed"]
    ratio = moe["lsh"]["compression_ratio"]
    print(f"step {s}: loss {demo[s]['loss']:.6f}, rows ratio {ratio:.2f}, bytes {sent} of {raw}")
    assert ratio > 2 and 0 < 2 * sent < raw, f"step {s}: the LSH all-to-all did not compress"
print("PASS (demo config)")
PY
