#!/usr/bin/env bash
# A run checkpointed at one layout and resumed at another continues the loss curve of the run
# that never stopped: the 20 steps after the checkpoint agree within 1e-6 relative (2e-6 for the
# MoE model), and exactly when the layout is unchanged. Dense: saved at tp=2 -> resumed at tp=1, 2, 4; saved at tp=1 ->
# resumed at tp=2, 4. MoE: saved at (tp=2, ep=2) -> resumed at (1, 1), (4, 1), (2, 2); saved at
# (tp=4, ep=1) -> resumed at (2, 2).
# usage: reshard_resume.sh GROVE_WORKER MPIEXEC DATA_DIR
set -euo pipefail
worker=$1 mpiexec=$2 data=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
run() {  # run NP OUT_DIR ARGS...
  local np=$1 out=$2
  shift 2
  "$mpiexec" --allow-run-as-root --oversubscribe --mca btl self,vader -np "$np" "$worker" train -q \
    --set model.d_model=64 --set model.n_layers=2 --set model.n_heads=4 \
    --set model.max_seq_len=32 --set train.seq_len=32 --set train.batch_size=8 \
    --set train.steps=40 --set train.warmup_steps=5 --set train.eval_every=0 \
    --set train.checkpoint_every=0 --set "data.dir=$data" --set "out_dir=$out" "$@"
}
run 2 "$tmp/tp2" --tp 2
run 2 "$tmp/tp2-stop" --tp 2 --stop-after 20
run 1 "$tmp/tp1" --tp 1
run 1 "$tmp/tp1-stop" --tp 1 --stop-after 20
for t in 1 2 4; do
  cp -r "$tmp/tp2-stop" "$tmp/from-tp2-at-tp$t"
  run "$t" "$tmp/from-tp2-at-tp$t" --tp "$t" --resume
done
for t in 2 4; do
  cp -r "$tmp/tp1-stop" "$tmp/from-tp1-at-tp$t"
  run "$t" "$tmp/from-tp1-at-tp$t" --tp "$t" --resume
done
moe=(--set model.moe.num_experts=4 --set model.moe.top_k=2 --set model.moe.expert_ffn=64)
run 2 "$tmp/moe-tp2ep2" --tp 2 --ep 2 "${moe[@]}"
run 2 "$tmp/moe-tp2ep2-stop" --tp 2 --ep 2 "${moe[@]}" --stop-after 20
run 4 "$tmp/moe-tp4ep1" --tp 4 --ep 1 "${moe[@]}"
run 4 "$tmp/moe-tp4ep1-stop" --tp 4 --ep 1 "${moe[@]}" --stop-after 20
for layout in "1 1 1" "4 4 1" "2 2 2"; do
  read -r np t e <<<"$layout"
  cp -r "$tmp/moe-tp2ep2-stop" "$tmp/from-moe-tp2ep2-at-tp${t}ep${e}"
  run "$np" "$tmp/from-moe-tp2ep2-at-tp${t}ep${e}" --tp "$t" --ep "$e" "${moe[@]}" --resume
done
cp -r "$tmp/moe-tp4ep1-stop" "$tmp/from-moe-tp4ep1-at-tp2ep2"
run 2 "$tmp/from-moe-tp4ep1-at-tp2ep2" --tp 2 --ep 2 "${moe[@]}" --resume

/usr/bin/python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
def losses(run):
    rows = [json.loads(l) for l in open(f"{tmp}/{run}/metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
ok = True
cases = [(f"tp{a}", f"tp{b}") for a, b in [(2, 1), (2, 2), (2, 4), (1, 2), (1, 4)]]
cases += [("moe-tp2ep2", "tp1ep1"), ("moe-tp2ep2", "tp4ep1"), ("moe-tp2ep2", "tp2ep2"),
          ("moe-tp4ep1", "tp2ep2")]
for saved, resumed_at in cases:
    ref, got = losses(saved), losses(f"from-{saved}-at-{resumed_at}")
    steps = range(21, 41)
    worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in steps)
    exact = all(got[s] == ref[s] for s in steps)
    same = saved.endswith(resumed_at)
    # A dense model drifts ~7e-8 over the 20 steps between layouts (fp32 reduction orders); a
    # MoE model resumed at another ep regroups its experts' rows and drifts up to ~1.3e-6.
    bound = 2e-6 if saved.startswith("moe") else 1e-6
    want = "exact" if same else f"<= {bound:.0e}"
    good = exact if same else worst <= bound
    ok &= good
    print(f"saved at {saved}, resumed at {resumed_at}: worst relative loss difference over "
          f"steps 21-40 {worst:.2e} ({'bit-exact' if exact else 'not bit-exact'}; want {want})"
          f" {'ok' if good else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
