"""The peer for bench_train_step: the same transformer as Grove's (model/transformer.h) written
the way a PyTorch 1.13 user would (nn.Module, fp32, torch.optim.AdamW), timed fwd+bwd+AdamW.

usage: torch_train_step.py '{"vocab_size":..., "d_model":..., ...}' BATCH SEQ THREADS WARMUP STEPS
prints one JSON line: {"tokens_per_s": ..., "ms_per_step": ... (the median of STEPS timed steps after
WARMUP), "step_ms": [each timed step], "loss": ..., "threads": ..., "torch": ...}
"""
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, h, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, h, a, kv, f, eps):
        super().__init__()
        d = h // a
        self.a, self.kv, self.d = a, kv, d
        self.attn_norm, self.mlp_norm = RMSNorm(h, eps), RMSNorm(h, eps)
        self.wq = nn.Linear(h, a * d, bias=False)
        self.wk = nn.Linear(h, kv * d, bias=False)
        self.wv = nn.Linear(h, kv * d, bias=False)
        self.wo = nn.Linear(a * d, h, bias=False)
        self.w_gate = nn.Linear(h, f, bias=False)
        self.w_up = nn.Linear(h, f, bias=False)
        self.w_down = nn.Linear(f, h, bias=False)

    def forward(self, x, cos, sin, mask):
        s, b, _ = x.shape
        y = self.attn_norm(x)
        q = rope(self.wq(y).view(s, b, self.a, self.d), cos, sin)
        k = rope(self.wk(y).view(s, b, self.kv, self.d), cos, sin)
        v = self.wv(y).view(s, b, self.kv, self.d)
        if self.kv != self.a:
            k = k.repeat_interleave(self.a // self.kv, dim=2)
            v = v.repeat_interleave(self.a // self.kv, dim=2)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.d))
        att = att.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + self.wo(att.permute(2, 0, 1, 3).reshape(s, b, -1))
        y = self.mlp_norm(x)
        return x + self.w_down(F.silu(self.w_gate(y)) * self.w_up(y))


def rope(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Transformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, a = c["d_model"], c["n_heads"]
        kv = c.get("n_kv_heads", 0) or a
        f = c.get("ffn_hidden", 0) or (8 * h // 3 + 63) // 64 * 64
        eps = c.get("norm_eps", 1e-5)
        self.wte = nn.Embedding(c["vocab_size"], h)
        self.blocks = nn.ModuleList(Block(h, a, kv, f, eps) for _ in range(c["n_layers"]))
        self.final_norm = RMSNorm(h, eps)
        self.lm_head = nn.Linear(h, c["vocab_size"], bias=False)
        d = h // a
        inv = c.get("rope_theta", 10000.0) ** (-torch.arange(0, d // 2).double() * 2 / d)
        ang = torch.arange(c["max_seq_len"]).double()[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos().float()[:, None, None, :])
        self.register_buffer("sin", ang.sin().float()[:, None, None, :])

    def forward(self, tokens, targets):
        s = tokens.shape[0]
        mask = torch.ones(s, s, dtype=torch.bool).triu(1)
        x = self.wte(tokens)
        for blk in self.blocks:
            x = blk(x, self.cos[:s], self.sin[:s], mask)
        logits = self.lm_head(self.final_norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def run(make_model, batch_first):
    """Times fwd + bwd + clip + AdamW of make_model(cfg) and prints the JSON line (module doc)."""
    cfg = json.loads(sys.argv[1])
    batch, seq, threads, warmup, steps = (int(v) for v in sys.argv[2:7])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = make_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    shape = (batch, seq) if batch_first else (seq, batch)
    tokens = torch.randint(0, cfg["vocab_size"], shape)
    targets = torch.randint(0, cfg["vocab_size"], shape)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    step_ms = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        step_ms.append((time.perf_counter() - t0) * 1e3)
    ms = sorted(step_ms)[len(step_ms) // 2] if len(step_ms) % 2 else \
        sum(sorted(step_ms)[len(step_ms) // 2 - 1:len(step_ms) // 2 + 1]) / 2
    print(json.dumps({"tokens_per_s": batch * seq / (ms / 1e3), "ms_per_step": ms,
                      "step_ms": step_ms, "loss": loss, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


def main():
    run(Transformer, batch_first=False)


if __name__ == "__main__":
    main()
