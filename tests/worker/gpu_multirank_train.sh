#!/usr/bin/env bash
# Data parallelism of the GPU path (train.device=cuda, fp32): 2 ranks with dp=2 follow the 1-rank
# run on the same global batch (batch_size is global; dp splits it), for a dense model and for an
# MoE model (4 experts, top-2, every second layer; the router statistics and the aux / z losses
# are all-reduced over dp). Compared per step: the loss, the gradient norm (which a wrong loss
# normalisation over dp shows even where AdamW's scale invariance would hide it in the loss), the
# final validation loss, and for the MoE the expert load and aux loss of each step.
# Without NCCL (the emulated worker, tests/cuda_emu) the gradients go through host memory and MPI.
#
# Tolerance, 1e-4 relative (as tests/worker/multirank_train.sh for the CPU path): the two layouts
# differ only in fp32 rounding, each rank rounding its half of every weight-gradient sum to fp32
# before the all-reduce adds the halves (~1e-7 relative per gradient), amplified by a few AdamW
# steps; the losses are summed in double. A missing or doubled all-reduce, or a rank normalising
# by its own tokens, moves the gradient norm or the loss by percents from step 1 or 2.
# usage: gpu_multirank_train.sh GROVE_WORKER MPIEXEC DATA_DIR
set -euo pipefail
worker=$1 mpiexec=$2 data=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
# The emulated worker runs under AddressSanitizer, whose leak check at exit reports what MPI,
# hwloc and OpenBLAS allocate at start-up and keep (test_gpu_train_emu checks the training path's
# own allocations, without MPI).
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
mpi2=("$mpiexec" --allow-run-as-root --oversubscribe --mca btl self,vader -np 2)
steps=6
args=(train -q --set model.d_model=64 --set model.n_layers=2 --set model.n_heads=4
      --set model.n_kv_heads=2 --set model.max_seq_len=32 --set train.seq_len=32
      --set train.batch_size=8 --set train.steps=$steps --set train.warmup_steps=2
      --set train.lr=0.01 --set train.eval_every=$steps --set train.eval_batches=2
      --set train.checkpoint_every=0 --set train.device=cuda --set train.precision=fp32
      --set "data.dir=$data")
moe=(--set model.moe.num_experts=4 --set model.moe.top_k=2 --set model.moe.every=2
     --set model.moe.capacity_factor=0)

"$worker" "${args[@]}" --set "out_dir=$tmp/dense1"
"${mpi2[@]}" "$worker" "${args[@]}" --dp 2 --set "out_dir=$tmp/dense2"
"$worker" "${args[@]}" "${moe[@]}" --set "out_dir=$tmp/moe1"
"${mpi2[@]}" "$worker" "${args[@]}" "${moe[@]}" --dp 2 --set "out_dir=$tmp/moe2"

/usr/bin/python3 - "$tmp" "$steps" <<'PY'
import json, sys
tmp, steps = sys.argv[1], int(sys.argv[2])
def rows(run):
    return [json.loads(l) for l in open(f"{tmp}/{run}/metrics.jsonl")]
def curve(run, key):
    return {r["step"]: r[key] for r in rows(run) if key in r}
def rel(a, b):
    return abs(a - b) / abs(b)
ok = True
for model in ["dense", "moe"]:
    one, two = f"{model}1", f"{model}2"
    for key in ["loss", "grad_norm", "val_loss"]:
        c1, c2 = curve(one, key), curve(two, key)
        expect = list(range(1, steps + 1)) if key != "val_loss" else [steps]
        assert sorted(c1) == expect and sorted(c2) == expect, f"{model} {key}: steps {sorted(c1)} {sorted(c2)}"
        worst = max(rel(c2[s], c1[s]) for s in c1)
        print(f"{model}: dp=2 vs 1 rank, worst relative {key} difference over {len(c1)} step(s) {worst:.3e}")
        ok &= worst <= 1e-4
    if model == "moe":
        m1, m2 = curve(one, "moe"), curve(two, "moe")
        assert sorted(m1) == sorted(m2) == list(range(1, steps + 1)), "MoE statistics missing"
        loads = [s for s in m1 if m1[s]["expert_load"] != m2[s]["expert_load"]]
        aux = max(rel(m2[s]["aux_loss"], m1[s]["aux_loss"]) for s in m1)
        print(f"moe: expert load per layer at step 1: 1 rank {m1[1]['expert_load']}, "
              f"dp=2 {m2[1]['expert_load']}; steps where it differs: {loads}; "
              f"worst relative aux loss difference {aux:.3e}")
        ok &= not loads and aux <= 1e-4
sys.exit(0 if ok else 1)
PY
