#!/usr/bin/env bash
# Tensor (+ sequence) and context parallelism of the GPU path (train.device=cuda, fp32) through
# the trainer: runs at tp=2 or cp=2 follow the single-rank run on the same global batch, step by
# step. The layouts (MODE tp, the default):
#   tp=2 with SP, recompute=selective (2 ranks)
#   tp=2 without SP, recompute=full   (2 ranks)
#   tp=2 with SP x dp=2               (4 ranks; with GROVE_GPU_TP_TEST_DP=1, the CMake default)
# (MODE cp):
#   cp=2 tree attention, recompute=selective (2 ranks)
#   cp=2 ring attention, recompute=full      (2 ranks)
# (MODE ep; a MoE model, 4 experts, top-2, every second block, dropless, against its 1-rank run):
#   ep=2 x dp=2 (edp 1), recompute=selective (2 ranks)
#   ep=2 x dp=2, recompute=full              (2 ranks)
# Under the emulated worker (tests/cuda_emu) every group of the grid is MPI on emulated device
# memory, so the model's TP collectives and DP buckets run on the device buffers directly (the
# describe line of the log, checked below, says so). Compared per step: the loss and the
# gradient norm (a missing or doubled TP reduction moves it by percents at step 1); at the end
# the validation loss.
#
# Tolerance, 1e-6 relative: the layouts differ only in fp32 summation order (each TP rank sums
# its half of the heads / FFN columns, the all-reduce adds the halves); measured worst 2.2e-7
# (grad norm; the losses came out identical) over 3 steps. Dropping the SP all-reduce of the norm
# weights' gradients (a deliberate break of the model) moves the grad norm by 4.2e-4 and the loss
# by 1.2e-5 in the SP runs.
# Context parallelism merges each query row's attention from partials over key chunks (another
# fp32 summation order), with the same tolerance; measured worst 3.1e-7 (ring, grad norm). Making
# tree attention finish every rank's rows with rank 0's lse maximum (a deliberate break) is caught
# by tests/model/cuda_parallel_equivalence_test.cc (gradient errors O(100)). Expert parallelism:
# measured worst 2.7e-8 (grad norm); grouping the received rows by the wrong source's counts (a
# deliberate break) ends the ep run with a cuBLAS error and fails the model test by 0.32.
# usage: gpu_tp_train.sh GROVE_WORKER MPIEXEC DATA_DIR [tp|cp|ep]
set -euo pipefail
worker=$1 mpiexec=$2 data=$3 mode=${4:-tp}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
# OpenMPI's own allocations at exit are not Grove's leaks (as in gpu_multirank_train.sh).
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
mpi() { "$mpiexec" --allow-run-as-root --oversubscribe --mca btl self,vader -np "$@"; }
steps=3
args=(train --set model.d_model=32 --set model.n_layers=2 --set model.n_heads=4
      --set model.n_kv_heads=2 --set model.ffn_hidden=64 --set model.max_seq_len=8
      --set train.seq_len=8 --set train.batch_size=2 --set train.steps=$steps
      --set train.warmup_steps=1 --set train.lr=0.01 --set train.eval_every=$steps
      --set train.eval_batches=1 --set train.checkpoint_every=0 --set train.device=cuda
      --set train.precision=fp32 --set "data.dir=$data")
sp=(--set parallel.sequence_parallel=true)

if [[ $mode == ep ]]; then
  args+=(--set model.moe.num_experts=4 --set model.moe.top_k=2 --set model.moe.every=2
         --set model.moe.capacity_factor=0)
fi
"$worker" "${args[@]}" --set "out_dir=$tmp/tp1" > "$tmp/tp1.log"
if [[ $mode == ep ]]; then
  mpi 2 "$worker" "${args[@]}" --ep 2 --set train.recompute=selective \
    --set "out_dir=$tmp/ep2" > "$tmp/ep2.log"
  mpi 2 "$worker" "${args[@]}" --ep 2 --set train.recompute=full \
    --set "out_dir=$tmp/ep2full" > "$tmp/ep2full.log"
  runs=(ep2 ep2full)
  layout="ep=2"
elif [[ $mode == cp ]]; then
  mpi 2 "$worker" "${args[@]}" --cp 2 --set parallel.cp_attention=tree \
    --set train.recompute=selective --set "out_dir=$tmp/cp2tree" > "$tmp/cp2tree.log"
  mpi 2 "$worker" "${args[@]}" --cp 2 --set parallel.cp_attention=ring \
    --set train.recompute=full --set "out_dir=$tmp/cp2ring" > "$tmp/cp2ring.log"
  runs=(cp2tree cp2ring)
  layout="cp=2"
else
  mpi 2 "$worker" "${args[@]}" --tp 2 "${sp[@]}" --set train.recompute=selective \
    --set "out_dir=$tmp/tp2sp" > "$tmp/tp2sp.log"
  mpi 2 "$worker" "${args[@]}" --tp 2 --set parallel.sequence_parallel=false \
    --set train.recompute=full --set "out_dir=$tmp/tp2full" > "$tmp/tp2full.log"
  runs=(tp2sp tp2full)
  layout="tp=2"
fi
if [[ $mode == tp && ${GROVE_GPU_TP_TEST_DP:-0} == 1 ]]; then
  mpi 4 "$worker" "${args[@]}" --tp 2 --dp 2 "${sp[@]}" --set "out_dir=$tmp/tp2dp2" \
    > "$tmp/tp2dp2.log"
  runs+=(tp2dp2)
fi

/usr/bin/python3 - "$tmp" "$steps" "$layout" "${runs[@]}" <<'PY'
import json, sys
tmp, steps, layout, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def curve(run, key):
    rows = [json.loads(l) for l in open(f"{tmp}/{run}/metrics.jsonl")]
    return {r["step"]: r[key] for r in rows if key in r}
ok = True
for run in runs:
    log = open(f"{tmp}/{run}.log").read()
    line = next((l for l in log.splitlines() if l.startswith("device: cuda")), "")
    # The model's groups must be device communicators (no host staging) with the layout.
    if layout not in line or "staged" in line:
        print(f"{run}: the device line does not show {layout} on device groups: {line!r}")
        ok = False
    for key in ["loss", "grad_norm", "val_loss"]:
        ref, got = curve("tp1", key), curve(run, key)
        expect = list(range(1, steps + 1)) if key != "val_loss" else [steps]
        assert sorted(ref) == expect and sorted(got) == expect, \
            f"{run} {key}: steps {sorted(ref)} {sorted(got)}"
        worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
        print(f"{run} vs 1 rank: worst relative {key} difference over {len(ref)} step(s) {worst:.3e}")
        ok &= worst <= 1e-6
sys.exit(0 if ok else 1)
PY
