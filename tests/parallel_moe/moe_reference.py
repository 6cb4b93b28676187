"""PyTorch reference of Grove's MoE layer (parallel/moe_layer.h), in float64.

Usage: moe_reference.py OUT.safetensors '{"T":48,"h":32,"f":48,"E":8,"k":2,...}'

Draws the inputs in float32 from a seeded torch generator (x, dout, router and expert weights),
runs the layer in float64 on those exact fp32 values, and writes the inputs, the output, the aux
and z losses, the routing, and the gradient of
    L = sum(out * dout) + loss_scale * (aux + z)
with respect to x, the router weight and every expert weight. Semantics (single rank, dropless
unless capacity_factor > 0): logits = x W_r^T, p = softmax, top-k by logit (ties: lower id),
combine weights renormalised over the k when k > 1 (k = 1: the raw probability, as Switch); aux = alpha*E*sum_i f_i P_i with f_i the fraction of
(token, slot) assignments routed to i before dropping, P_i the mean probability; z = beta*mean(lse^2);
capacity ceil(cf*T*k/E) per expert, first slots before second slots, then token order.
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oracle"))
import safetensors_io  # noqa: E402


def main():
    out_path, cfg = sys.argv[1], json.loads(sys.argv[2])
    T, h, f, E, k = cfg["T"], cfg["h"], cfg["f"], cfg["E"], cfg["k"]
    alpha, beta, cf = cfg["aux"], cfg["z"], cfg.get("cf", 0.0)
    loss_scale = cfg.get("loss_scale", 1.0)
    g = torch.Generator().manual_seed(cfg.get("seed", 0))

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).float()

    x32 = randn(T, h)
    wr32 = randn(E, h, scale=1.0 / math.sqrt(h))
    wg32 = randn(E, f, h, scale=1.0 / math.sqrt(h))
    wu32 = randn(E, f, h, scale=1.0 / math.sqrt(h))
    wd32 = randn(E, h, f, scale=1.0 / math.sqrt(f))
    dout32 = randn(T, h) * (0.0 if cfg.get("dout_zero") else 1.0)

    x, wr, wg, wu, wd = (t.double().requires_grad_() for t in (x32, wr32, wg32, wu32, wd32))
    logits = x @ wr.T
    probs = torch.softmax(logits, dim=-1)
    lse = torch.logsumexp(logits, dim=-1)
    # Top-k by logit; a stable sort of -logits puts the lower id first among equal logits.
    order = torch.sort(-logits.detach(), dim=-1, stable=True).indices
    idx = order[:, :k]
    if k < E:
        srt = torch.sort(logits.detach(), dim=-1, descending=True).values
        gap = (srt[:, k - 1] - srt[:, k]).min().item()
        # fp32 logits differ from these by ~1e-6: a smaller gap could flip Grove's choice.
        assert gap > 1e-4, f"top-k margin {gap} too small for an fp32 comparison; change the seed"
    sel = probs.gather(1, idx)
    w = sel / sel.sum(dim=1, keepdim=True) if sel.shape[1] > 1 else sel  # Switch for k = 1

    kept = torch.ones(T, k, dtype=torch.bool)
    if cf > 0:
        cap = math.ceil(cf * T * k / E)
        used = [0] * E
        for j in range(k):
            for t in range(T):
                e = int(idx[t, j])
                if used[e] < cap:
                    used[e] += 1
                else:
                    kept[t, j] = False

    out = torch.zeros(T, h, dtype=torch.float64)
    for e in range(E):
        tt, jj = torch.nonzero((idx == e) & kept, as_tuple=True)
        if len(tt) == 0:
            continue
        xe = x[tt]
        y = (torch.nn.functional.silu(xe @ wg[e].T) * (xe @ wu[e].T)) @ wd[e].T
        out = out.index_add(0, tt, w[tt, jj].unsqueeze(1) * y)

    counts = torch.zeros(E, dtype=torch.float64)
    for e in range(E):
        counts[e] = (idx == e).sum()
    frac = counts / (T * k)
    aux = alpha * E * (frac * probs.mean(dim=0)).sum()
    z = beta * (lse ** 2).mean()
    loss = (out * dout32.double()).sum() + loss_scale * (aux + z)
    loss.backward()

    safetensors_io.write(out_path, {
        "x": x32, "dout": dout32, "router": wr32,
        "experts.w_gate": wg32, "experts.w_up": wu32, "experts.w_down": wd32,
        "out": out.detach(), "aux": aux.detach().reshape(1), "z": z.detach().reshape(1),
        "expert": idx.to(torch.int32), "kept": kept.to(torch.int32),
        "grad.x": x.grad, "grad.router": wr.grad, "grad.experts.w_gate": wg.grad,
        "grad.experts.w_up": wu.grad, "grad.experts.w_down": wd.grad,
    }, {"version": 1})


if __name__ == "__main__":
    main()
