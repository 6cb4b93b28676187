#!/usr/bin/env python3
"""PyTorch oracle for the CPU kernels (rmsnorm, rope, attention, cross-entropy, swiglu, linear).

Usage: torch_oracle.py OUT_FILE
Writes a versioned binary file of named float64 tensors: inputs (drawn in float32, so the C++
float kernels see them exactly), the random projection R used as the output gradient,
outputs and every input gradient (computed in float64 with autograd).

Format (little endian): b"GROVEREF", u32 version (=1), u32 count, then per tensor:
u32 name_len, name bytes (utf-8), u32 ndim, i64 dims[ndim], f64 data[prod(dims)].
Exits with 77 when torch cannot be imported (the C++ test then skips).
"""
import math
import struct
import sys

try:
    import torch
except ImportError:
    sys.exit(77)

VERSION = 1
tensors = []


def put(name, t):
    tensors.append((name, t.detach().to(torch.float64).contiguous()))


def rand(*shape, lo=-1.0, hi=1.0):
    # Drawn in float32 then widened: exactly representable in the C++ float test.
    return (torch.rand(*shape, dtype=torch.float32) * (hi - lo) + lo).to(torch.float64)


def leaf(name, t):
    put(name, t)
    return t.clone().requires_grad_(True)


def rmsnorm_case():
    N, C, eps = 6, 32, 1e-5
    x, w = leaf("rmsnorm.x", rand(N, C, lo=-2, hi=2)), leaf("rmsnorm.w", rand(C, lo=0.5, hi=1.5))
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    R = rand(N, C)
    put("rmsnorm.R", R)
    out.backward(R)
    put("rmsnorm.out", out)
    put("rmsnorm.dx", x.grad)
    put("rmsnorm.dw", w.grad)


def rope_tables(max_pos, HD, theta):
    i = torch.arange(HD // 2, dtype=torch.float64)
    inv_freq = torch.tensor([theta], dtype=torch.float64) ** (-2.0 * i / HD)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    # Kernels store the tables in float: round here too so the double comparison is exact.
    return ang.cos().float().double(), ang.sin().float().double()


def rope_case():
    S, B, NH, HD, pos0, max_pos, theta = 5, 2, 3, 16, 4, 12, 10000.0
    cos, sin = rope_tables(max_pos, HD, theta)
    put("rope.cos", cos)
    put("rope.sin", sin)
    x = leaf("rope.x", rand(S, B, NH, HD))
    c = torch.cat([cos, cos], -1)[pos0:pos0 + S][:, None, None, :]
    s = torch.cat([sin, sin], -1)[pos0:pos0 + S][:, None, None, :]
    x1, x2 = x[..., :HD // 2], x[..., HD // 2:]
    out = x * c + torch.cat([-x2, x1], -1) * s  # rotate-half
    R = rand(S, B, NH, HD)
    put("rope.R", R)
    out.backward(R)
    put("rope.out", out)
    put("rope.dx", x.grad)


def attention_case(tag, SQ, SK, B, NH, NKV, HD, causal, q_pos0, k_pos0):
    put(tag + ".shape", torch.tensor([SQ, SK, B, NH, NKV, HD, int(causal), q_pos0, k_pos0]))
    q = leaf(tag + ".q", rand(SQ, B, NH, HD, lo=-2, hi=2))
    k = leaf(tag + ".k", rand(SK, B, NKV, HD, lo=-2, hi=2))
    v = leaf(tag + ".v", rand(SK, B, NKV, HD))
    G = NH // NKV
    qh = q.permute(1, 2, 0, 3)                                  # [B, NH, SQ, HD]
    kh = k.permute(1, 2, 0, 3).repeat_interleave(G, dim=1)      # head h uses kv head h // G
    vh = v.permute(1, 2, 0, 3).repeat_interleave(G, dim=1)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(HD)
    if causal:
        qpos = torch.arange(SQ)[:, None] + q_pos0
        kpos = torch.arange(SK)[None, :] + k_pos0
        scores = scores.masked_fill(kpos > qpos, float("-inf"))
    lse = torch.logsumexp(scores, -1)                           # [B, NH, SQ]
    out = (torch.softmax(scores, -1) @ vh).permute(2, 0, 1, 3)  # [SQ, B, NH, HD]
    R = rand(SQ, B, NH, HD)
    put(tag + ".R", R)
    out.backward(R)
    put(tag + ".out", out)
    put(tag + ".lse", lse)
    put(tag + ".dq", q.grad)
    put(tag + ".dk", k.grad)
    put(tag + ".dv", v.grad)


def cross_entropy_case():
    N, V = 7, 50
    logits = leaf("ce.logits", rand(N, V, lo=-4, hi=4))
    targets = torch.randint(0, V, (N,))
    targets[3] = -100  # ignored row (the kernels ignore any target < 0)
    put("ce.targets", targets)
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none",
                                               ignore_index=-100)
    R = rand(N)
    put("ce.R", R)
    losses.backward(R)
    put("ce.losses", losses)
    put("ce.dlogits", logits.grad)


def swiglu_linear_case():
    N, C, OC = 5, 12, 10
    x = leaf("mlp.x", rand(N, C))
    wg, wu = leaf("mlp.wg", rand(OC, C)), leaf("mlp.wu", rand(OC, C))
    bg = leaf("mlp.bg", rand(OC))
    gate = torch.nn.functional.linear(x, wg, bg)
    up = torch.nn.functional.linear(x, wu)
    out = torch.nn.functional.silu(gate) * up
    R = rand(N, OC)
    put("mlp.R", R)
    out.backward(R)
    put("mlp.out", out)
    put("mlp.dx", x.grad)
    put("mlp.dwg", wg.grad)
    put("mlp.dbg", bg.grad)
    put("mlp.dwu", wu.grad)


def main():
    torch.manual_seed(1234)
    rmsnorm_case()
    rope_case()
    attention_case("attn_causal", 6, 9, 2, 4, 2, 8, True, 7, 2)  # shard: every row sees >= 6 keys
    attention_case("attn_full", 7, 5, 2, 2, 1, 8, False, 0, 0)
    cross_entropy_case()
    swiglu_linear_case()
    with open(sys.argv[1], "wb") as f:
        f.write(b"GROVEREF")
        f.write(struct.pack("<II", VERSION, len(tensors)))
        for name, t in tensors:
            nb = name.encode()
            f.write(struct.pack("<I", len(nb)) + nb)
            f.write(struct.pack("<I", t.dim()))
            f.write(struct.pack("<%dq" % t.dim(), *t.shape))
            f.write(t.numpy().astype("<f8").tobytes())


if __name__ == "__main__":
    main()
