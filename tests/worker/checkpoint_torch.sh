#!/usr/bin/env bash
# PyTorch, reading a Grove checkpoint written by 2 tensor-parallel ranks without any Grove code,
# reproduces the validation loss Grove reported at that step (within 1e-4 relative: Grove runs in
# fp32, the script in fp64 from the same fp32 weights).
# usage: checkpoint_torch.sh GROVE_WORKER MPIEXEC DATA_DIR PYTHON SOURCE_DIR
set -euo pipefail
worker=$1 mpiexec=$2 data=$3 python=$4 src=$5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
"$mpiexec" --allow-run-as-root --oversubscribe --mca btl self,vader -np 2 "$worker" train -q \
  --tp 2 --set model.d_model=64 --set model.n_layers=2 --set model.n_heads=4 \
  --set model.max_seq_len=32 --set train.seq_len=32 --set train.batch_size=4 \
  --set train.steps=10 --set train.eval_every=10 --set train.eval_batches=3 \
  --set "data.dir=$data" --set "out_dir=$tmp/run"
grove=$("$python" -c "import json,sys; print([json.loads(l)['val_loss'] for l in open('$tmp/run/metrics.jsonl') if 'val_loss' in l][-1])")
torch=$("$python" "$src/tests/oracle/checkpoint_val_loss.py" "$tmp/run/checkpoints/step_00000010" \
        "$data/val.bin" 32 4 3 | "$python" -c "import json,sys; print(json.load(sys.stdin)['val_loss'])")
"$python" - "$grove" "$torch" <<'PY'
import sys
g, t = float(sys.argv[1]), float(sys.argv[2])
rel = abs(g - t) / abs(t)
print(f"validation loss: Grove {g:.7f}, PyTorch from the checkpoint {t:.7f}, relative {rel:.2e}")
sys.exit(0 if rel <= 1e-4 else 1)
PY
