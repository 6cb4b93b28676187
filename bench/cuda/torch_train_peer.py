"""PyTorch peer for bench_gpu_train: the same decoder (RMSNorm, RoPE rotate-half, GQA causal
attention, SwiGLU, untied LM head, cross-entropy) trained the way a PyTorch user would on one GPU:
fp32 master weights under torch.autocast(bfloat16), F.scaled_dot_product_attention (FlashAttention
kernels), fused AdamW, global-norm clipping at 1.0. Optional torch.compile.

Prints one JSON line: {"name": "torch_train_peer", "peer": "pytorch-<version>-<eager|compile>",
"tokens_per_s": ..., "step_ms": ..., "loss": ...}. Used only by the benchmark, never at run time.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


class Moe(torch.nn.Module):
    """Dropless top-k MoE as a PyTorch user writes it: router, softmax, top-k renormalised, a loop
    over the experts gathering their tokens (index_add to combine), Switch aux + z loss."""

    def __init__(self, h, ffn, experts, top_k):
        super().__init__()
        self.k = top_k
        self.router = torch.nn.Linear(h, experts, bias=False)
        self.w_gate = torch.nn.Parameter(torch.empty(experts, ffn, h))
        self.w_up = torch.nn.Parameter(torch.empty(experts, ffn, h))
        self.w_down = torch.nn.Parameter(torch.empty(experts, h, ffn))
        self.aux = None

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x).float()
        probs = logits.softmax(-1)
        top, idx = probs.topk(self.k, dim=-1)
        w = top / top.sum(-1, keepdim=True) if self.k > 1 else top
        out = torch.zeros_like(x)
        for e in range(self.w_gate.shape[0]):
            tok, slot = torch.nonzero(idx == e, as_tuple=True)
            if tok.numel() == 0:
                continue
            xe = x[tok]
            y = (F.silu(xe @ self.w_gate[e].T) * (xe @ self.w_up[e].T)) @ self.w_down[e].T
            out.index_add_(0, tok, (w[tok, slot, None] * y).to(out.dtype))
        E = probs.shape[-1]
        frac = torch.bincount(idx.reshape(-1), minlength=E).float() / idx.numel()
        self.aux = 1e-2 * E * (frac * probs.mean(0)).sum() + \
            1e-3 * (torch.logsumexp(logits, -1) ** 2).mean()
        return out.reshape(shape)


class Block(torch.nn.Module):
    def __init__(self, h, heads, kv_heads, ffn, eps, moe=None):
        super().__init__()
        self.heads, self.kv_heads, self.d, self.eps = heads, kv_heads, h // heads, eps
        self.attn_norm = torch.nn.Parameter(torch.ones(h))
        self.wq = torch.nn.Linear(h, heads * self.d, bias=False)
        self.wk = torch.nn.Linear(h, kv_heads * self.d, bias=False)
        self.wv = torch.nn.Linear(h, kv_heads * self.d, bias=False)
        self.wo = torch.nn.Linear(heads * self.d, h, bias=False)
        self.mlp_norm = torch.nn.Parameter(torch.ones(h))
        self.moe = moe
        if moe is None:
            self.w_gate = torch.nn.Linear(h, ffn, bias=False)
            self.w_up = torch.nn.Linear(h, ffn, bias=False)
            self.w_down = torch.nn.Linear(ffn, h, bias=False)

    def forward(self, x, cos, sin):
        b, s, h = x.shape
        y = F.rms_norm(x, (h,), self.attn_norm, self.eps)
        q = self.wq(y).view(b, s, self.heads, self.d).transpose(1, 2)
        k = self.wk(y).view(b, s, self.kv_heads, self.d).transpose(1, 2)
        v = self.wv(y).view(b, s, self.kv_heads, self.d).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             enable_gqa=self.kv_heads != self.heads)
        x = x + self.wo(att.transpose(1, 2).reshape(b, s, h))
        y = F.rms_norm(x, (h,), self.mlp_norm, self.eps)
        if self.moe is not None:
            return x + self.moe(y)
        return x + self.w_down(F.silu(self.w_gate(y)) * self.w_up(y))


def rope(x, cos, sin):
    d = x.shape[-1]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Model(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        h, kv = a.d_model, a.kv_heads or a.heads
        ffn = a.ffn or (8 * h // 3 + 63) // 64 * 64
        self.wte = torch.nn.Embedding(a.vocab, h)
        fe = a.expert_ffn or ffn

        def moe(l):
            if a.experts == 0 or (l + 1) % a.moe_every != 0:
                return None
            return Moe(h, fe, a.experts, a.top_k)

        self.blocks = torch.nn.ModuleList(
            Block(h, a.heads, kv, ffn, 1e-5, moe(l)) for l in range(a.layers))
        self.final_norm = torch.nn.Parameter(torch.ones(h))
        self.lm_head = torch.nn.Linear(h, a.vocab, bias=False)
        d = h // a.heads
        inv = 10000.0 ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2.0 / d)
        ang = torch.arange(a.seq, dtype=torch.float64)[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        for n, p in self.named_parameters():
            if p.dim() >= 2:
                out = n.endswith(("wo.weight", "w_down.weight", "moe.w_down"))
                std = 0.02 / math.sqrt(2 * a.layers) if out else 0.02
                torch.nn.init.normal_(p, std=std)

    def forward(self, tokens, targets):
        x = self.wte(tokens)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin)
        x = F.rms_norm(x, (x.shape[-1],), self.final_norm, 1e-5)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        for blk in self.blocks:
            if blk.moe is not None:
                loss = loss + blk.moe.aux
        return loss


def main():
    p = argparse.ArgumentParser()
    for name, default in [("vocab", 32000), ("d-model", 2048), ("layers", 16), ("heads", 16),
                          ("kv-heads", 0), ("ffn", 0), ("seq", 1024), ("batch", 8),
                          ("accum", 4), ("warmup", 2), ("steps", 6), ("experts", 0),
                          ("top-k", 2), ("moe-every", 1), ("expert-ffn", 0)]:
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test)")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False  # as Grove's fp32 path
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    model = Model(a).to(dev)
    fused = {"fused": True} if cuda else {}  # the fused CUDA kernel; the default on a CPU
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.1, **fused)
    fwd = torch.compile(model) if a.compile else model
    g = torch.Generator(device="cpu").manual_seed(7)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=g).to(dev)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    amp = a.precision == "bf16"

    def step():
        opt.zero_grad(set_to_none=True)
        for _ in range(a.accum):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = fwd(inputs, targets)
            (loss / a.accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(a.warmup):
        loss = step()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / a.steps
    mode = "compile" if a.compile else "eager"
    print(json.dumps({"name": "torch_train_peer",
                      "peer": f"pytorch-{torch.__version__.split('+')[0]}-{mode}",
                      "tokens_per_s": a.batch * a.seq * a.accum / dt, "step_ms": dt * 1e3,
                      "loss": float(loss), "params": sum(p.numel() for p in model.parameters()),
                      "max_memory_bytes": torch.cuda.max_memory_allocated() if cuda else 0}), flush=True)


if __name__ == "__main__":
    main()
