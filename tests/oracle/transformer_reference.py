"""PyTorch re-implementation of Grove's transformer (model/transformer.h), used only by tests.

Writes a safetensors file with the model config (metadata "config"), random weights
("model.<name>", the names of model/weights.cc), tokens and targets [s, b], the loss, and the
gradient of the loss w.r.t. every weight ("grad.<name>"). Computed in float64 so the reference
itself carries no fp32 rounding; the C++ test runs the same weights in fp32.

With "moe": {"num_experts": E, "top_k": k, "every": n, ...} in the config, every n-th block's MLP
is a dropless mixture of experts with the semantics of parallel/moe_layer.h (single rank): top-k
by logit, combine weights renormalised over the k (k > 1), Switch aux loss and router z-loss over
all N tokens. "loss" stays the cross-entropy (what Transformer::forward returns), "moe_loss" is
the sum of aux + z over the MoE layers, and the gradients are those of loss + moe_loss (what
Transformer::backward computes). The smallest top-k logit margin is written as "topk_margin" so a
test can tell whether fp32 or bf16 routing must agree with this one.

With "attention": "mla" the blocks use multi-head latent attention as in DeepSeek-V2 (no value
padding here: values keep v_head_dim; "mla": {...} as model/weights.h names the tensors).

usage: transformer_reference.py OUT.safetensors '{"d_model": 64, ...}' BATCH SEQ SEED
"""
import json
import math
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import safetensors_io  # noqa: E402

F64 = torch.float64


def rmsnorm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    # x: [s, b, heads, d]; rotate-half convention, position = sequence index.
    s, d = x.shape[0], x.shape[-1]
    inv = theta ** (-torch.arange(0, d // 2, dtype=F64) * 2.0 / d)
    ang = torch.arange(s, dtype=F64)[:, None] * inv[None, :]
    cos, sin = ang.cos()[:, None, None, :], ang.sin()[:, None, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention(q, k, v):
    # q, k: [s, b, a|kv, d]; v: [s, b, kv, dv] -> [s, b, a*dv], causal, scale 1/sqrt(d).
    s, b, a, d = q.shape
    kv = k.shape[2]
    k = k.repeat_interleave(a // kv, dim=2)
    v = v.repeat_interleave(a // kv, dim=2)
    qh, kh, vh = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, a, s, d]
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    mask = torch.ones(s, s, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ vh  # [b, a, s, d]
    return out.permute(2, 0, 1, 3).reshape(s, b, -1)


def mla_dims(cfg):
    """(q_lora_rank, kv_lora_rank, nope, rope, v) with the defaults of spec/model_config.h."""
    m, d = cfg.get("mla", {}), cfg["d_model"] // cfg["n_heads"]
    return (m.get("q_lora_rank", 0), m.get("kv_lora_rank", 0) or 4 * d,
            m.get("qk_nope_head_dim", 0) or d, m.get("qk_rope_head_dim", 0) or d // 2,
            m.get("v_head_dim", 0) or d)


def mla_attention(w, p, cfg, u):
    """Multi-head latent attention of u [s, b, h] (DeepSeek-V2) -> [s, b, a*dv]."""
    s, b, _ = u.shape
    a, eps, theta = cfg["n_heads"], cfg["norm_eps"], cfg["rope_theta"]
    qr, _, nope, rd, _ = mla_dims(cfg)
    if qr > 0:
        q = rmsnorm(u @ w[p + "wq_a"].T, w[p + "q_norm"], eps) @ w[p + "wq_b"].T
    else:
        q = u @ w[p + "wq"].T
    q = q.reshape(s, b, a, nope + rd)
    q = torch.cat([q[..., :nope], rope(q[..., nope:], theta)], dim=-1)
    c_kv = rmsnorm(u @ w[p + "wkv_a"].T, w[p + "kv_norm"], eps)
    k_rope = rope((u @ w[p + "wk_rope"].T).reshape(s, b, 1, rd), theta)
    k_nope = (c_kv @ w[p + "wk_b"].T).reshape(s, b, a, nope)
    k = torch.cat([k_nope, k_rope.expand(s, b, a, rd)], dim=-1)
    v = (c_kv @ w[p + "wv_b"].T).reshape(s, b, a, -1)
    return attention(q, k, v)


def forward(w, cfg, tokens, targets):
    L, h, a = cfg["n_layers"], cfg["d_model"], cfg["n_heads"]
    kv = cfg.get("n_kv_heads", 0) or a
    d = h // a
    eps, theta = cfg["norm_eps"], cfg["rope_theta"]
    s, b = tokens.shape
    x = w["wte"][tokens.long()]  # [s, b, h]
    moe_loss = torch.zeros((), dtype=F64)
    margins = []
    for l in range(L):
        p = f"layers.{l}."
        ln1 = rmsnorm(x, w[p + "attn_norm"], eps)
        if cfg.get("attention", "mha") == "mla":
            x = x + mla_attention(w, p, cfg, ln1) @ w[p + "wo"].T
        else:
            q = rope((ln1 @ w[p + "wq"].T).reshape(s, b, a, d), theta)
            k = rope((ln1 @ w[p + "wk"].T).reshape(s, b, kv, d), theta)
            v = (ln1 @ w[p + "wv"].T).reshape(s, b, kv, d)
            x = x + attention(q, k, v) @ w[p + "wo"].T
        ln2 = rmsnorm(x, w[p + "mlp_norm"], eps)
        if is_moe_layer(cfg, l):
            y, aux_z, margin = moe(w, p, cfg, ln2.reshape(s * b, h))
            x = x + y.reshape(s, b, h)
            moe_loss = moe_loss + aux_z
            margins.append(margin)
            continue
        act = torch.nn.functional.silu(ln2 @ w[p + "w_gate"].T) * (ln2 @ w[p + "w_up"].T)
        x = x + act @ w[p + "w_down"].T
    logits = rmsnorm(x, w["final_norm"], eps) @ w["lm_head"].T
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(s * b, -1), targets.reshape(-1).long(), ignore_index=-1)
    return ce, moe_loss, min(margins) if margins else float("inf")


def is_moe_layer(cfg, l):
    m = cfg.get("moe", {})
    return m.get("num_experts", 0) > 0 and (l + 1) % m.get("every", 1) == 0


def moe(w, p, cfg, x):
    """Dropless top-k MoE over the rows of x [T, h]; returns (out, aux + z, top-k logit margin)."""
    m = cfg["moe"]
    E, k = m["num_experts"], m.get("top_k", 2)
    alpha, beta = m.get("aux_loss_coef", 1e-2), m.get("z_loss_coef", 1e-3)
    T = x.shape[0]
    logits = x @ w[p + "router"].T
    probs = torch.softmax(logits, dim=-1)
    lse = torch.logsumexp(logits, dim=-1)
    idx = torch.sort(-logits.detach(), dim=-1, stable=True).indices[:, :k]  # ties: lower id
    margin = float("inf")
    if k < E:
        srt = torch.sort(logits.detach(), dim=-1, descending=True).values
        margin = (srt[:, k - 1] - srt[:, k]).min().item()
    sel = probs.gather(1, idx)
    wts = sel / sel.sum(dim=1, keepdim=True) if k > 1 else sel
    out = torch.zeros_like(x)
    wg, wu, wd = w[p + "experts.w_gate"], w[p + "experts.w_up"], w[p + "experts.w_down"]
    for e in range(E):
        tt, jj = torch.nonzero(idx == e, as_tuple=True)
        if len(tt) == 0:
            continue
        xe = x[tt]
        y = (torch.nn.functional.silu(xe @ wg[e].T) * (xe @ wu[e].T)) @ wd[e].T
        out = out.index_add(0, tt, wts[tt, jj].unsqueeze(1) * y)
    counts = torch.stack([(idx == e).sum() for e in range(E)]).double()
    aux = alpha * E * (counts / (T * k) * probs.mean(dim=0)).sum()
    z = beta * (lse ** 2).mean()
    return out, aux + z, margin


def param_shapes(cfg):
    V, h, L, a = cfg["vocab_size"], cfg["d_model"], cfg["n_layers"], cfg["n_heads"]
    kv = cfg.get("n_kv_heads", 0) or a
    d = h // a
    f = cfg.get("ffn_hidden", 0) or (8 * h // 3 + 63) // 64 * 64
    shapes = {"wte": (V, h)}
    for l in range(L):
        p = f"layers.{l}."
        if cfg.get("attention", "mha") == "mla":
            qr, kvr, nope, rd, dv = mla_dims(cfg)
            shapes[p + "attn_norm"] = (h,)
            if qr > 0:
                shapes.update({p + "wq_a": (qr, h), p + "q_norm": (qr,),
                               p + "wq_b": (a * (nope + rd), qr)})
            else:
                shapes[p + "wq"] = (a * (nope + rd), h)
            shapes.update({p + "wkv_a": (kvr, h), p + "wk_rope": (rd, h), p + "kv_norm": (kvr,),
                           p + "wk_b": (a * nope, kvr), p + "wv_b": (a * dv, kvr),
                           p + "wo": (h, a * dv), p + "mlp_norm": (h,)})
        else:
            shapes.update({p + "attn_norm": (h,), p + "wq": (a * d, h), p + "wk": (kv * d, h),
                           p + "wv": (kv * d, h), p + "wo": (h, a * d), p + "mlp_norm": (h,)})
        if is_moe_layer(cfg, l):
            E = cfg["moe"]["num_experts"]
            fe = cfg["moe"].get("expert_ffn", 0) or f
            shapes.update({p + "router": (E, h), p + "experts.w_gate": (E, fe, h),
                           p + "experts.w_up": (E, fe, h), p + "experts.w_down": (E, h, fe)})
        else:
            shapes.update({p + "w_gate": (f, h), p + "w_up": (f, h), p + "w_down": (h, f)})
    shapes.update({"final_norm": (h,), "lm_head": (V, h)})
    return shapes


def main():
    out, cfg_json, batch, seq, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(
        sys.argv[4]), int(sys.argv[5])
    cfg = {"norm_eps": 1e-5, "rope_theta": 10000.0}
    cfg.update(json.loads(cfg_json))
    g = torch.Generator().manual_seed(seed)
    w = {}
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1:  # norm weights around 1, not exactly 1, so their grads matter
            t = 1.0 + 0.1 * torch.randn(shape, generator=g, dtype=F64)
        else:  # larger than training init so attention is far from uniform
            t = torch.randn(shape, generator=g, dtype=F64) / math.sqrt(shape[-1])
        # Round to fp32 so both sides start from the exact same weights.
        w[name] = t.float().double().requires_grad_(True)
    tokens = torch.randint(0, cfg["vocab_size"], (seq, batch), generator=g, dtype=torch.int32)
    targets = torch.randint(0, cfg["vocab_size"], (seq, batch), generator=g, dtype=torch.int32)
    targets[0, 0] = -1  # one ignored target
    loss, moe_loss, margin = forward(w, cfg, tokens, targets)
    (loss + moe_loss).backward()
    tensors = {"tokens": tokens, "targets": targets, "loss": loss.detach().reshape(1),
               "moe_loss": moe_loss.detach().reshape(1),
               "topk_margin": torch.tensor([min(margin, 1e30)], dtype=F64)}
    for name, t in w.items():
        tensors["model." + name] = t.detach().float()
        tensors["grad." + name] = t.grad.detach()
    safetensors_io.write(out, tensors, {"config": json.dumps(cfg), "torch": torch.__version__})


if __name__ == "__main__":
    main()
