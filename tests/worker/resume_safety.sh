#!/usr/bin/env bash
# Resume never starts over by accident: every way the latest checkpoint can be missing or damaged
# makes `grove-worker train --resume` fail with one error line naming what is missing and the
# complete checkpoints still there (with --resume-from), and leaves every file untouched; a fresh
# start into an out_dir holding any checkpoint is refused; --resume-from an older complete
# checkpoint then works.
# With MPIEXEC: a shard damaged where only rank 1 reads it is named in rank 0's error too.
# usage: resume_safety.sh GROVE_WORKER DATA_DIR [MPIEXEC]
set -u
worker=$1 data=$2 mpiexec=${3:-}
if [ ! -f "$data/train.bin" ]; then
  echo "SKIP: no prepared dataset in $data (run launch/setup.sh)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'umount "$tmp/full" 2>/dev/null; rm -rf "$tmp"' EXIT
failures=0
export OMP_NUM_THREADS=1

tiny=(--set model.d_model=32 --set model.n_layers=1 --set model.n_heads=2
      --set model.max_seq_len=32 --set train.seq_len=32 --set train.batch_size=2
      --set train.eval_every=0 --set train.eval_batches=1 --set train.steps=6
      --set train.checkpoint_every=2 --set train.keep_checkpoints=3 --set "data.dir=$data" -q)

"$worker" train "${tiny[@]}" --set "out_dir=$tmp/good" >/dev/null || {
  echo "FAIL: the tiny training run did not complete"
  exit 1
}
[ "$(ls "$tmp/good/checkpoints")" = "$(printf 'latest\nstep_00000002\nstep_00000004\nstep_00000006')" ] || {
  echo "FAIL: unexpected checkpoints: $(ls "$tmp/good/checkpoints")"
  exit 1
}

snapshot() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 md5sum); }

# check NAME DAMAGE-COMMAND PATTERN [worker flags...]: copy the good run, damage it, run the
# worker; it must fail with one stderr line matching PATTERN and modify nothing.
check() {
  local name=$1 damage=$2 pattern=$3
  shift 3
  local run=$tmp/$name
  rm -rf "$run"
  cp -a "$tmp/good" "$run"
  local ck=$run/checkpoints
  (cd "$ck" && eval "$damage")
  local before
  before=$(snapshot "$run")
  "$worker" train "${tiny[@]}" --set "out_dir=$run" --set train.steps=8 "$@" \
    >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  local msg
  msg=$(sed "s|$run|RUN|g" "$tmp/err")
  if [ $rc -eq 0 ] || [ "$lines" -ne 1 ] || ! grep -q -- "$pattern" "$tmp/err"; then
    echo "FAIL $name: rc=$rc, $lines stderr lines, want /$pattern/:"
    cat "$tmp/err"
    failures=$((failures + 1))
  elif [ "$before" != "$(snapshot "$run")" ]; then
    echo "FAIL $name: files changed by a refused run"
    failures=$((failures + 1))
  else
    echo "ok   $name: $msg"
  fi
}
older="complete checkpoints still there (newest first): $tmp/NAME/checkpoints/step_00000004, $tmp/NAME/checkpoints/step_00000002; continue from one with --resume-from DIR"
older_all="complete checkpoints still there (newest first): $tmp/NAME/checkpoints/step_00000006, $tmp/NAME/checkpoints/step_00000004, $tmp/NAME/checkpoints/step_00000002; continue from one with --resume-from DIR"

check no-latest 'rm latest' "checkpoints/latest is missing.*${older_all//NAME/no-latest}" --resume
check no-latest-fresh 'rm latest' "already holds checkpoints.*step_00000006); pass --resume"
check latest-empty ': > latest' "checkpoints/latest is empty or damaged.*${older_all//NAME/latest-empty}" --resume
check no-step-dir 'rm -r step_00000006' "the latest checkpoint is damaged: checkpoint .*step_00000006 does not exist; ${older//NAME/no-step-dir}" --resume
check no-index 'rm step_00000006/index.json' "step_00000006 has no readable index.json; ${older//NAME/no-index}" --resume
check corrupt-index 'echo "{ broken" > step_00000006/index.json' "step_00000006/index.json is corrupt (no tensors); ${older//NAME/corrupt-index}" --resume
check no-state 'rm step_00000006/state.json' "step_00000006/state.json is missing; ${older//NAME/no-state}" --resume
check no-shard 'rm step_00000006/shard-00000.safetensors' "step_00000006/shard-00000.safetensors is missing (named in index.json); ${older//NAME/no-shard}" --resume
check truncated-shard 'truncate -s -100 step_00000006/shard-00000.safetensors' "step_00000006/shard-00000.safetensors: truncated: .*; ${older//NAME/truncated-shard}" --resume
# A flipped byte inside tensor data: the files are complete, the checksum catches it at load.
check corrupt-shard 'printf "\xff\xff\xff\xff" | dd of=step_00000006/shard-00000.safetensors bs=1 seek=20000 conv=notrunc status=none' "step_00000006/shard-00000.safetensors: checksum mismatch in tensor .*; other complete checkpoints (newest first): .*step_00000004, .*step_00000002; continue from one with --resume-from DIR" --resume
check resume-from-damaged 'rm step_00000004/index.json' "--resume-from .*step_00000004: checkpoint .*step_00000004 has no readable index.json; complete checkpoints still there (newest first): .*step_00000006, .*step_00000002;" --resume-from "$tmp/resume-from-damaged/checkpoints/step_00000004"
check nothing-left 'rm */index.json' "checkpoints/step_00000006 has no readable index.json; there is no complete checkpoint in" --resume
check fresh-with-only-dirs 'rm latest; rm -r step_00000002 step_00000004' "already holds checkpoints (.*step_00000006)" 

# After the error, the flag it names continues from the older checkpoint (and only then writes).
run=$tmp/no-step-dir
if "$worker" train "${tiny[@]}" --set "out_dir=$run" --set train.steps=8 \
     --resume-from "$run/checkpoints/step_00000004" >"$tmp/out" 2>"$tmp/err" &&
   grep -q '"step":8' "$run/metrics.jsonl" && [ -d "$run/checkpoints/step_00000008" ]; then
  echo "ok   resume-from-older: continued from step 4 to step 8"
else
  echo "FAIL resume-from-older:"; cat "$tmp/err"; failures=$((failures + 1))
fi
# A resume with no checkpoint at all (a restart before the first save) starts at step 0.
if "$worker" train "${tiny[@]}" --set "out_dir=$tmp/empty" --set train.steps=2 --resume \
     >"$tmp/out" 2>"$tmp/err" && [ -d "$tmp/empty/checkpoints/step_00000002" ]; then
  echo "ok   resume-nothing-saved: started at step 0"
else
  echo "FAIL resume-nothing-saved:"; cat "$tmp/err"; failures=$((failures + 1))
fi

# A full disk: the save fails naming the cause, leaves no partial step_*.tmp behind (the disk does
# not stay full) and the previous checkpoint stays the latest (a 10 MiB tmpfs: one tiny-model
# checkpoint fits, the second does not). Skipped where tmpfs cannot be mounted (not root).
full=$tmp/full
mkdir -p "$full"
if mount -t tmpfs -o size=10m tmpfs "$full" 2>/dev/null; then
  "$worker" train "${tiny[@]}" --set "out_dir=$full/run" --set train.steps=4 >"$tmp/out" 2>"$tmp/err"
  rc=$?
  ck=$full/run/checkpoints
  if [ $rc -ne 0 ] && grep -q "No space left on device" "$tmp/err" && [ -z "$(ls -d "$ck"/*.tmp 2>/dev/null)" ] &&
     [ "$(cat "$ck/latest")" = step_00000002 ] && [ ! -e "$ck/step_00000004" ]; then
    echo "ok   disk-full: $(sed "s|$tmp|TMP|g" "$tmp/err" | head -1 | cut -c1-150)...; no .tmp left, latest step_00000002"
  else
    echo "FAIL disk-full: rc=$rc, left: $(ls "$ck" 2>&1 | tr '\n' ' ')"; cat "$tmp/err"
    failures=$((failures + 1))
  fi
  umount "$full"
else
  echo "skip disk-full: cannot mount a tmpfs here (not root)"
fi

# Two tensor-parallel ranks: rank 1 alone reads its shard; a flipped byte there is reported by
# rank 0 (the one that prints and reports to the coordinator) naming the file.
if [ -n "$mpiexec" ]; then
  mpi=("$mpiexec" --oversubscribe -np 2 --mca btl self,vader)
  [ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
  if "${mpi[@]}" "$worker" train "${tiny[@]}" --tp 2 --set "out_dir=$tmp/tp2" --set train.steps=2 \
       >"$tmp/out" 2>&1; then
    shard=$tmp/tp2/checkpoints/step_00000002/shard-00001.safetensors
    printf '\xff\xff\xff\xff' | dd of="$shard" bs=1 seek=20000 conv=notrunc status=none
    "${mpi[@]}" "$worker" train "${tiny[@]}" --tp 2 --set "out_dir=$tmp/tp2" --set train.steps=4 \
      --resume >"$tmp/out" 2>"$tmp/err"
    if grep -q "^grove-worker: error: checkpoint I/O failed on rank 1: $shard: checksum mismatch" "$tmp/err"; then
      echo "ok   other-rank-shard: $(grep -m1 'error' "$tmp/err" | sed "s|$tmp|TMP|g" | cut -c1-160)..."
    else
      echo "FAIL other-rank-shard: rank 0 does not name rank 1's damaged shard:"; cat "$tmp/err"
      failures=$((failures + 1))
    fi
  else
    echo "FAIL: the 2-rank run did not complete"; cat "$tmp/out"; failures=$((failures + 1))
  fi
fi

if [ $failures -ne 0 ]; then
  echo "$failures case(s) failed"
  exit 1
fi
echo "all damage cases refused, nothing modified"
