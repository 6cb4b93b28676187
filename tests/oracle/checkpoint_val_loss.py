"""Loads a Grove distributed checkpoint WITHOUT Grove (index.json + safetensors pieces), assembles
every full tensor, and computes the validation loss with the PyTorch re-implementation of the
model (transformer_reference.py) on the same batches Grove's evaluation uses (sequential windows
of seq+1 tokens from val.bin, [s, b] layout, mean of per-batch mean losses).

usage: checkpoint_val_loss.py CHECKPOINT_DIR VAL_BIN SEQ BATCH EVAL_BATCHES
prints one JSON line {"val_loss": ...}
"""
import json
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import transformer_reference as ref  # noqa: E402

_NP = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}


def load_checkpoint(d):
    index = json.load(open(f"{d}/index.json"))
    state = json.load(open(f"{d}/state.json"))
    full = {}
    for name, t in index["tensors"].items():
        out = np.zeros(t["global_shape"], dtype=_NP[t["dtype"]])
        for p in t["pieces"]:
            b, e = p["bytes"]
            with open(f"{d}/{p['file']}", "rb") as f:
                f.seek(b)
                data = np.frombuffer(f.read(e - b), dtype=_NP[t["dtype"]]).reshape(p["shape"])
            sl = tuple(slice(o, o + n) for o, n in zip(p["offset"], p["shape"]))
            out[sl] = data
        full[name] = torch.from_numpy(out)
    return full, state


def val_batches(path, seq, batch, n):
    raw = open(path, "rb").read()
    assert raw[:8] == b"GRVTOK01", "not a Grove token file"
    _, dtype, count = struct.unpack("<IIQ", raw[8:24])
    toks = np.frombuffer(raw[32:], dtype=np.uint16 if dtype == 1 else np.int32, count=count)
    windows = (count - 1) // seq
    per_epoch = windows // batch
    for p in range(min(n, per_epoch)):
        w = [(p * batch + b) * seq for b in range(batch)]
        x = np.stack([toks[s:s + seq + 1] for s in w], axis=1).astype(np.int64)  # [s+1, b]
        yield torch.from_numpy(x[:-1]), torch.from_numpy(x[1:])


def main():
    d, val, seq, batch, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(
        sys.argv[5])
    full, state = load_checkpoint(d)
    cfg = dict(state["config"]["model"])
    w = {k[len("model."):]: v.double() for k, v in full.items() if k.startswith("model.")}
    with torch.no_grad():
        losses = [ref.forward(w, cfg, x, y)[0].item() for x, y in val_batches(val, seq, batch, n)]
    print(json.dumps({"val_loss": sum(losses) / len(losses), "batches": len(losses)}))


if __name__ == "__main__":
    main()
