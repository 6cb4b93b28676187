#!/usr/bin/env bash
# Reduced quality study (docs/lsh.md#quality-study): a dense model, the plain MoE model and
# LSH-MoE settings trained on Brown with grove-worker, one process per run (ep = 1: the groups
# and buckets are those of one rank holding the whole batch), the runs of one seed back to back,
# --jobs runs at a time. Writes <out>/<setting>-s<seed>/metrics.jsonl and then runs
# plot_study.py: validation curves (PNG), a Markdown table and JSON lines.
# Usage: bench/lsh/study.sh [--steps 300] [--seeds "1 2"] [--jobs 2] [--build build]
#        [--out runs/lsh-study] [--settings "dense plain lsh_l1_xc lsh_default"]
#        [--d-model 128] [--layers 2] [--heads 4] [--batch 8] [--seq 128] [--lr 2e-3]
#        [--warmup 20] [--eval-every 25] [--eval-batches 16] [--top-k 2]
#        [--expert-ffn N (default: 8/3·d rounded up to 64)]
# A d256 study (2000 steps, 3 seeds, top-1): --d-model 256 --layers 4 --batch 4 --steps 2000 --seeds "1 2 3"
#   --lr 1.5e-3 --warmup 100 --eval-every 100 --eval-batches 32 --top-k 1
# Needs the prepared dataset (launch/setup.sh: runs/data-brown-8192) and python3-matplotlib.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=300
SEEDS="1 2"
JOBS=2
BUILD=${GROVE_BUILD_DIR:-build}
OUT=runs/lsh-study
SETTINGS="dense plain lsh_l1_xc lsh_default"
D_MODEL=128
LAYERS=2
HEADS=4
BATCH=8
SEQ=128
LR=2e-3
WARMUP=20
EVAL_EVERY=25
EVAL_BATCHES=16
TOP_K=2
EXPERT_FFN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --settings) SETTINGS=$2; shift 2 ;;
    --d-model) D_MODEL=$2; shift 2 ;;
    --layers) LAYERS=$2; shift 2 ;;
    --heads) HEADS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --seq) SEQ=$2; shift 2 ;;
    --lr) LR=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --eval-every) EVAL_EVERY=$2; shift 2 ;;
    --eval-batches) EVAL_BATCHES=$2; shift 2 ;;
    --top-k) TOP_K=$2; shift 2 ;;
    --expert-ffn) EXPERT_FFN=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
WORKER="$BUILD/worker/grove-worker"
[ -x "$WORKER" ] || { echo "no $WORKER (build the grove-worker target)" >&2; exit 2; }
# The plots come after the runs: check for matplotlib before spending the hour on them.
/usr/bin/python3 -c "import matplotlib" 2>/dev/null || {
  echo "study.sh: /usr/bin/python3 has no matplotlib (apt-get install python3-matplotlib)" >&2
  exit 2
}
mkdir -p "$OUT"

# Every block MoE: 8 experts, top-k, each a SwiGLU of ffn 8/3·d rounded up to 64 (model.ffn_hidden's
# automatic value; 384 at d 128, 704 at d 256); dense: ffn = k times that, the active experts'
# hidden size, so dense and MoE have the same active parameters per token (top-1: each expert is
# as wide as the dense MLP, Switch Transformer's comparison).
[ "$EXPERT_FFN" -gt 0 ] || EXPERT_FFN=$(( (8 * D_MODEL / 3 + 63) / 64 * 64 ))
DENSE_FFN=$(( TOP_K * EXPERT_FFN ))
MIN_LR=$(/usr/bin/python3 -c "print($LR / 10)")
cat > "$OUT/base.json" <<JSON
{
  "model": {"vocab_size": 8192, "d_model": $D_MODEL, "n_layers": $LAYERS, "n_heads": $HEADS,
            "max_seq_len": $SEQ, "ffn_hidden": $EXPERT_FFN,
            "moe": {"num_experts": 8, "top_k": $TOP_K, "every": 1}},
  "train": {"batch_size": $BATCH, "seq_len": $SEQ, "steps": $STEPS, "lr": $LR, "min_lr": $MIN_LR,
            "beta2": 0.99, "warmup_steps": $WARMUP, "eval_every": $EVAL_EVERY, "eval_batches": $EVAL_BATCHES,
            "checkpoint_every": 0, "recompute": "none", "threads": 1},
  "data": {"dir": "runs/data-brown-8192"},
  "parallel": {"tp": 1, "ep": 1},
  "out_dir": "$OUT/unused"
}
JSON

settings_of() {  # the --set arguments of one setting
  local L="--set model.moe.lsh.enabled=true"
  case "$1" in
    dense) echo "--set model.moe.num_experts=0 --set model.ffn_hidden=$DENSE_FFN" ;;
    plain) echo "" ;;
    # the earlier default: one hash of 16 buckets, raw rows, x − c, no warm-up
    lsh_l1_xc) echo "$L --set model.moe.lsh.num_hashes=1 --set model.moe.lsh.center=false \
      --set model.moe.lsh.target_compression=0 --set model.moe.lsh.warmup_steps=0" ;;
    # three raw hashes from the first step: the collapse
    lsh_l3_xc) echo "$L --set model.moe.lsh.num_hashes=3 --set model.moe.lsh.center=false \
      --set model.moe.lsh.target_compression=0 --set model.moe.lsh.warmup_steps=0" ;;
    lsh_default) echo "$L" ;;
    lsh_default_l8) echo "$L --set model.moe.lsh.num_hashes=8" ;;
    lsh_default_l1) echo "$L --set model.moe.lsh.num_hashes=1" ;;
    lsh_default_t8) echo "$L --set model.moe.lsh.target_compression=8" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}

export OMP_NUM_THREADS=1
running=0
for seed in $SEEDS; do
  for s in $SETTINGS; do
    name="$s-s$seed"
    rm -rf "${OUT:?}/$name"
    # shellcheck disable=SC2046
    "$WORKER" train --config "$OUT/base.json" --set "out_dir=$OUT/$name" \
      --set "model.seed=$seed" --set "train.seed=$seed" $(settings_of "$s") \
      > "$OUT/$name.log" 2>&1 &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
      wait -n
      running=$((running - 1))
    fi
  done
done
wait
/usr/bin/python3 bench/lsh/plot_study.py "$OUT" $SETTINGS
