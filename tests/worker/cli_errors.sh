#!/usr/bin/env bash
# Bad input to the command-line tools: each case must exit non-zero with exactly one error line
# that names the field or file, and must leave existing files untouched.
# usage: cli_errors.sh GROVE_WORKER GROVE_PREPARE_DATA DATA_DIR
set -u
worker=$1 prepare=$2 data=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# expect_error NAME PATTERN CMD...: CMD fails, stderr is one line matching PATTERN.
expect_error() {
  local name=$1 pattern=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  if [ $rc -eq 0 ] || [ "$lines" -ne 1 ] || ! grep -q -- "$pattern" "$tmp/err"; then
    echo "FAIL $name: rc=$rc, $lines stderr lines, want /$pattern/:"
    cat "$tmp/err"
    failures=$((failures + 1))
  else
    echo "ok   $name: $(cat "$tmp/err")"
  fi
}

tiny=(--set model.d_model=32 --set model.n_layers=1 --set model.n_heads=2
      --set model.max_seq_len=32 --set train.seq_len=32 --set train.batch_size=2
      --set train.eval_batches=1 --set "data.dir=$data")

expect_error missing-corpus "/nonexistent/brown" \
  "$prepare" --corpus /nonexistent/brown --out "$tmp/prep"
expect_error missing-config-file "cannot read config file $tmp/none.json" \
  "$worker" train --config "$tmp/none.json"
expect_error unknown-key "unknown config key 'train.lrr'" \
  "$worker" train "${tiny[@]}" --set train.lrr=1
expect_error heads-not-dividing "model.n_heads=3 does not divide model.d_model=32" \
  "$worker" train "${tiny[@]}" --set model.n_heads=3
expect_error seq-longer-than-rope "train.seq_len=64 is longer than model.max_seq_len=32" \
  "$worker" train "${tiny[@]}" --set train.seq_len=64
expect_error missing-dataset "dataset directory '/nonexistent/data' (data.dir) does not exist" \
  "$worker" train "${tiny[@]}" --set data.dir=/nonexistent/data
expect_error vocab-mismatch "model.vocab_size=1000 but the dataset" \
  "$worker" train "${tiny[@]}" --set model.vocab_size=1000
expect_error missing-checkpoint "checkpoint /nonexistent/ckpt does not exist" \
  "$worker" train "${tiny[@]}" --set "out_dir=$tmp/run0" --resume-from /nonexistent/ckpt

# train.device=cuda on a machine without a GPU (or a build without CUDA): one line saying so.
if ! nvidia-smi -L >/dev/null 2>&1; then
  expect_error cuda-without-device "train.device=cuda but this" \
    "$worker" train "${tiny[@]}" --set train.device=cuda --set "out_dir=$tmp/cuda"
fi
# bf16 on a CPU without bf16 GEMMs: oneDNN is capped at AVX2 (DNNL_MAX_CPU_ISA), as on such a CPU.
expect_error bf16-on-cpu-without-bf16 "train.precision=bf16 on train.device=cpu needs a CPU with" \
  env DNNL_MAX_CPU_ISA=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
  "$worker" train "${tiny[@]}" --set train.precision=bf16 --set "out_dir=$tmp/bf16"
[ ! -e "$tmp/bf16" ] || { echo "FAIL bf16-on-cpu-without-bf16: created $tmp/bf16"; failures=$((failures + 1)); }

touch "$tmp/a-file"
expect_error out-dir-not-creatable "cannot create out_dir $tmp/a-file/run" \
  "$worker" train "${tiny[@]}" --set "out_dir=$tmp/a-file/run"

# A real run with a checkpoint, then damage and misuse it.
if ! "$worker" train "${tiny[@]}" --set "out_dir=$tmp/run" --set train.steps=2 -q; then
  echo "FAIL: the tiny training run did not complete"
  exit 1
fi
ckpt=$(ls -d "$tmp"/run/checkpoints/step_* | tail -1)
snapshot() { find "$tmp/run" -type f -print0 | sort -z | xargs -0 md5sum; }
before=$(snapshot)
expect_error existing-run "already holds checkpoints" \
  "$worker" train "${tiny[@]}" --set "out_dir=$tmp/run" --set train.steps=4
truncate -s -64 "$ckpt/shard-00000.safetensors"
before=$(snapshot)
expect_error truncated-checkpoint "$ckpt/shard-00000.safetensors: truncated" \
  "$worker" train "${tiny[@]}" --set "out_dir=$tmp/run" --set train.steps=4 --resume
[ "$before" = "$(snapshot)" ] || { echo "FAIL: a failed resume modified files"; failures=$((failures + 1)); }
echo '{ broken' >"$ckpt/state.json"
expect_error corrupt-state "state.json is corrupt" \
  "$worker" train "${tiny[@]}" --set "out_dir=$tmp/run" --set train.steps=4 --resume

if [ $failures -ne 0 ]; then
  echo "$failures case(s) failed"
  exit 1
fi
echo "all error cases passed"
