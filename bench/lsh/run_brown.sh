#!/usr/bin/env bash
# LSH-compressed vs plain expert all-to-all on the MoE model trained on Brown (docs/lsh.md):
# grove-worker under mpirun with ep = ranks (one expert group per rank, dp = ranks), the same
# config, seed and batches, once with the plain dispatcher and once per num_hashes with
# model.moe.lsh.enabled, back to back in this one invocation. Prints JSON lines comparing each
# compressed run with the plain one:
#   all-to-all bytes ratio (plain / compressed, this rank, all steps), all-to-all time ratio and
#   step time ratio (compressed / plain, mean over the steps after the first), final validation
#   loss and its relative difference, compression ratio and relative residual of the last step.
# Usage: bench/lsh/run_brown.sh [--np 4] [--steps 200] [--hashes "1 2 3 4"] [--rotation-dim 8]
#        [--min-tokens 8] [--build build-lsh]
#        [--out runs/lsh-brown] [--set key=value ...]  (extra --set apply to every run)
# Needs the prepared dataset (launch/setup.sh: runs/data-brown-8192).
set -euo pipefail
cd "$(dirname "$0")/../.."
NP=4
STEPS=200
HASHES="1 2 3 4"
ROT=8
MIN_TOKENS=8
BUILD=${GROVE_BUILD_DIR:-build}
OUT=runs/lsh-brown
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --np) NP=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --hashes) HASHES=$2; shift 2 ;;
    --rotation-dim) ROT=$2; shift 2 ;;
    --min-tokens) MIN_TOKENS=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --set) EXTRA+=(--set "$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
WORKER="$BUILD/worker/grove-worker"
[ -x "$WORKER" ] || { echo "no $WORKER (build the grove-worker target)" >&2; exit 2; }
mkdir -p "$OUT"

# A tiny MoE model: 2 blocks, both MoE, 4 experts top-2, on Brown with the demo tokenizer.
cat > "$OUT/base.json" <<EOF
{
  "model": {"vocab_size": 8192, "d_model": 128, "n_layers": 2, "n_heads": 4, "max_seq_len": 128,
            "moe": {"num_experts": 4, "top_k": 2, "every": 1}},
  "train": {"batch_size": 16, "seq_len": 128, "steps": $STEPS, "lr": 2e-3, "min_lr": 2e-4,
            "beta2": 0.99, "warmup_steps": 20, "eval_every": $STEPS, "eval_batches": 16,
            "checkpoint_every": 0, "recompute": "none"},
  "data": {"dir": "runs/data-brown-8192"},
  "parallel": {"tp": 1, "ep": $NP},
  "out_dir": "$OUT/plain"
}
EOF

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export OMPI_MCA_btl_vader_single_copy_mechanism=none
run() {  # run <name> [--set ...]
  local name=$1
  shift
  rm -rf "${OUT:?}/$name"
  mpirun --allow-run-as-root --oversubscribe --mca btl self,vader -np "$NP" "$WORKER" train \
    --config "$OUT/base.json" --set "out_dir=$OUT/$name" "${EXTRA[@]}" "$@" > "$OUT/$name.log" 2>&1 ||
    { echo "run $name failed; see $OUT/$name.log" >&2; tail -5 "$OUT/$name.log" >&2; exit 1; }
}

run plain
for L in $HASHES; do
  run "lsh$L" --set model.moe.lsh.enabled=true --set "model.moe.lsh.num_hashes=$L" \
    --set "model.moe.lsh.rotation_dim=$ROT" --set "model.moe.lsh.min_tokens=$MIN_TOKENS"
done

/usr/bin/env python3 - "$OUT" "$NP" "$STEPS" "$ROT" "$MIN_TOKENS" $HASHES <<'PY'
import json, sys
out, np_, steps, rot, min_tokens = sys.argv[1], *map(int, sys.argv[2:6])
hashes = sys.argv[6:]

def load(name):
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    train = [r for r in rows if "loss" in r and "moe" in r]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    timed = train[1:] or train  # the first step pays the allocations
    mean = lambda k: sum(r["moe"][k] if k.startswith("a2a") else r[k] for r in timed) / len(timed)
    return {
        "bytes": sum(r["moe"]["a2a_bytes"] for r in train),
        "bytes_uncompressed": sum(r["moe"].get("lsh", {}).get("a2a_bytes_uncompressed", 0)
                                  for r in train),
        "a2a_ms": mean("a2a_ms"), "step_ms": mean("ms"), "val_loss": val[-1],
        "train_loss": train[-1]["loss"], "lsh": train[-1]["moe"].get("lsh"),
    }

plain = load("plain")
config = json.load(open(f"{out}/base.json"))
for L in hashes:
    c = load(f"lsh{L}")
    cfg = {"np": np_, "ep": np_, "steps": steps, "num_hashes": int(L),
           "model": config["model"], "batch_size": config["train"]["batch_size"],
           "seq_len": config["train"]["seq_len"], "rotation_dim": rot, "min_tokens": min_tokens}
    def line(name, value, unit, peer, peer_value, ratio):
        print(json.dumps({"name": name, "config": cfg, "value": value, "unit": unit,
                          "peer": peer, "peer_value": peer_value, "ratio": ratio}))
    line("brown_lsh_a2a_bytes", c["bytes"], "bytes", "plain_a2a_bytes", plain["bytes"],
         plain["bytes"] / c["bytes"])
    line("brown_lsh_a2a_ms", c["a2a_ms"], "ms", "plain_a2a_ms", plain["a2a_ms"],
         c["a2a_ms"] / plain["a2a_ms"])
    line("brown_lsh_step_ms", c["step_ms"], "ms", "plain_step_ms", plain["step_ms"],
         c["step_ms"] / plain["step_ms"])
    line("brown_lsh_final_val_loss", c["val_loss"], "nats", "plain_final_val_loss",
         plain["val_loss"], (c["val_loss"] - plain["val_loss"]) / plain["val_loss"])
    line("brown_lsh_compression_ratio", c["lsh"]["compression_ratio"], "token_rows_per_centroid",
         "plain", 1.0, c["lsh"]["compression_ratio"])
    line("brown_lsh_relative_residual", c["lsh"]["relative_residual"], "fraction", "plain", 0.0,
         0.0)
PY
