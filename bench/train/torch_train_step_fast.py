"""The second peer for bench_train_step: the same model as torch_train_step.py written the fastest
plain-PyTorch 1.13 way a practitioner would: batch-first activations ([B, S, H], no permutes
around attention), one fused QKV projection, one fused gate|up projection, a precomputed additive
causal mask, the same clipping and AdamW. Same arguments and output line as torch_train_step.py.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_train_step import RMSNorm, run


def rope(x, cos, sin):  # x [B, S, A, D]; cos, sin [S, 1, D/2]
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, h, a, kv, f, eps):
        super().__init__()
        d = h // a
        self.a, self.kv, self.d, self.f = a, kv, d, f
        self.attn_norm, self.mlp_norm = RMSNorm(h, eps), RMSNorm(h, eps)
        self.wqkv = nn.Linear(h, (a + 2 * kv) * d, bias=False)
        self.wo = nn.Linear(a * d, h, bias=False)
        self.w_gate_up = nn.Linear(h, 2 * f, bias=False)
        self.w_down = nn.Linear(f, h, bias=False)

    def forward(self, x, cos, sin, mask):
        b, s, _ = x.shape
        qkv = self.wqkv(self.attn_norm(x)).view(b, s, self.a + 2 * self.kv, self.d)
        q, k, v = qkv.split([self.a, self.kv, self.kv], dim=2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.kv != self.a:
            k = k.repeat_interleave(self.a // self.kv, dim=2)
            v = v.repeat_interleave(self.a // self.kv, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, A, S, D]
        att = torch.baddbmm(mask.expand(b * self.a, s, s), q.reshape(b * self.a, s, self.d),
                            k.reshape(b * self.a, s, self.d).transpose(1, 2),
                            alpha=1.0 / math.sqrt(self.d))
        o = torch.bmm(att.softmax(-1), v.reshape(b * self.a, s, self.d))
        x = x + self.wo(o.view(b, self.a, s, self.d).transpose(1, 2).reshape(b, s, -1))
        gate, up = self.w_gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.w_down(F.silu(gate) * up)


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
        self.register_buffer("cos", ang.cos().float()[:, None, :])
        self.register_buffer("sin", ang.sin().float()[:, None, :])
        s = c["max_seq_len"]
        self.register_buffer("mask", torch.full((s, s), float("-inf")).triu(1))

    def forward(self, tokens, targets):  # [B, S]
        s = tokens.shape[1]
        x = self.wte(tokens)
        mask = self.mask[:s, :s]
        for blk in self.blocks:
            x = blk(x, self.cos[:s], self.sin[:s], mask)
        logits = self.lm_head(self.final_norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


if __name__ == "__main__":
    run(Transformer, batch_first=True)
