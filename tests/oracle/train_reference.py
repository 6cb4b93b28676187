"""Trains the PyTorch re-implementation (transformer_reference.py) from the initial weights and on
the batches Grove wrote, with torch.optim.AdamW, global-norm clipping and Grove's warmup + cosine
schedule, in float64. Prints one JSON line {"losses": [...]} (the loss of each step's batch
before that step's update), so a test can compare Grove's training curve step by step.

usage: train_reference.py IN.safetensors
  IN holds "model.<name>" initial weights, "tokens.<i>" / "targets.<i>" [s, b] for each step, and
  metadata "config" (model) and "train" (lr, min_lr, warmup_steps, steps, weight_decay, beta1,
  beta2, adam_eps, grad_clip).
"""
import json
import math
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import safetensors_io  # noqa: E402
import transformer_reference as ref  # noqa: E402


def learning_rate(t, step):
    if t["warmup_steps"] > 0 and step <= t["warmup_steps"]:
        return t["lr"] * step / t["warmup_steps"]
    decay = t["steps"] - t["warmup_steps"]
    if decay <= 0:
        return t["lr"]
    progress = min(1.0, (step - t["warmup_steps"]) / decay)
    return t["min_lr"] + (t["lr"] - t["min_lr"]) * 0.5 * (1.0 + math.cos(math.pi * progress))


def main():
    tensors, meta = safetensors_io.read(sys.argv[1])
    cfg = {"norm_eps": 1e-5, "rope_theta": 10000.0}
    cfg.update(json.loads(meta["config"]))
    t = json.loads(meta["train"])
    w = {k[len("model."):]: v.double().requires_grad_(True)
         for k, v in tensors.items() if k.startswith("model.")}
    decay = [p for n, p in w.items() if p.ndim >= 2]
    no_decay = [p for n, p in w.items() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["adam_eps"])
    losses, norms = [], []
    for step in range(1, t["steps"] + 1):
        for g in opt.param_groups:
            g["lr"] = learning_rate(t, step)
        opt.zero_grad()
        loss, moe_loss, _ = ref.forward(w, cfg, tensors[f"tokens.{step}"],
                                        tensors[f"targets.{step}"])
        (loss + moe_loss).backward()  # the objective; the logged loss is the cross-entropy
        norm = torch.nn.utils.clip_grad_norm_(list(w.values()), t["grad_clip"])
        opt.step()
        losses.append(loss.item())
        norms.append(float(norm))
    print(json.dumps({"losses": losses, "grad_norms": norms}))


if __name__ == "__main__":
    main()
