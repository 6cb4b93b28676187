// The activation stash: every tensor the forward keeps for the backward, as named buffers sized
// once before step 0 (docs/memory.md). The recompute mode is a policy that changes which
// buffers exist, so the bytes reported here are exactly what the mode keeps:
//   none       every block keeps all its intermediates, including attention probabilities;
//   selective  as none, minus the attention probabilities [b, a, s, s], which the attention
//              backward recomputes from q, k and the saved log-sum-exp;
//   full       every block keeps only its input; the backward re-runs one block at a time in
//              a single transient block-sized buffer (reported separately).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "spec/memory.h"
#include "spec/model_config.h"

namespace grove {

// Intermediates of one transformer block. N = s*b rows; R = N/t rows in the sequence region
// under sequence parallelism, else R = N; a, k, f are this rank's heads, kv heads and SwiGLU
// columns (divided by t). Under SP the norm outputs are kept as shards and re-gathered in the
// backward, as Megatron does.
//
// MLA (model.attention=mla) sees k = a heads of dq = qk_nope + qk_rope per head: q and k are
// [N, a*dq], v and att are zero-padded from dv to dq per head (what the attention kernels read
// and write), and the latents of the down-projections are kept as [R, r] shards like ln1.
struct BlockActivations {
  Tensor rstd1;   // [R]        1/rms of the block input (attention RMSNorm)
  Tensor ln1;     // [R, h]     normalised input to the QKV projections
  Tensor cq;      // [R, r_q]   MLA with q_lora_rank: query latent before its RMSNorm
  Tensor rstdq;   // [R]        1/rms of cq
  Tensor cqn;     // [R, r_q]   normalised query latent (input of wq_b)
  Tensor ckv;     // [R, r_kv]  MLA: KV latent before its RMSNorm
  Tensor rstdkv;  // [R]        1/rms of ckv
  Tensor ckvn;    // [R, r_kv]  normalised KV latent (input of wk_b, wv_b)
  Tensor q;       // [N, a*d]   queries after RoPE (MLA: [N, a*dq])
  Tensor k;       // [N, k*d]   keys after RoPE (MLA: [N, a*dq], the RoPE key in every head)
  Tensor v;       // [N, k*d]   values (MLA: [N, a*dq], zero-padded from dv)
  Tensor probs;   // [b, a, s, s] softmax probabilities (Recompute::kNone only)
  Tensor lse;     // [b, a, s]  attention log-sum-exp per query row
  Tensor att;     // [N, a*d]   attention output before the output projection (MLA: [N, a*dq],
                  //            zero in each head's padding)
  Tensor resid2;  // [R, h]     residual stream after attention
  Tensor rstd2;   // [R]        1/rms for the MLP RMSNorm
  Tensor ln2;     // [R, h]     normalised input to the MLP
  Tensor gate;    // [N, f]     gate projection
  Tensor up;      // [N, f]     up projection
  Tensor act;     // [N, f]     silu(gate) * up

  // `moe`: the block's MLP is a mixture of experts, which keeps its own stash (gate, up, act
  // are not allocated here).
  // Tensors live on `device`; the activations are of type `act` (fp32, or bf16 for mixed
  // precision), while rstd and lse stay fp32.
  static BlockActivations Allocate(const ModelConfig& c, const MemoryLayout& m, bool with_probs,
                                   bool moe = false, Device device = Device::kCPU,
                                   DType act = DType::kF32);
  size_t bytes() const;
};

struct ActivationStash {
  std::vector<Tensor> resid;             // L+1 x [N, h]: input of block l; resid[L] = final
  std::vector<BlockActivations> blocks;  // L blocks (empty under Recompute::kFull)
  BlockActivations transient;            // full recompute only: one block, reused
  Tensor rstdf;                          // [N]    final RMSNorm
  Tensor lnf;                            // [N, h] final normalised hidden state
  Tensor logits;                         // [N, V] (overwritten by dlogits in the backward)
  Tensor ce_lse;                         // [N]    cross-entropy log-sum-exp
  Tensor losses;                         // [N]    per-token loss

  // with_probs: Recompute::kNone keeps the attention probabilities (the CPU kernels' fast path;
  // the fused GPU attention and context parallelism recompute them, so they pass false).
  // Activations of type `act` on `device`; rstdf, ce_lse and losses stay fp32.
  static ActivationStash Allocate(const ModelConfig& c, const MemoryLayout& m, bool with_probs,
                                  Device device = Device::kCPU, DType act = DType::kF32);
};

// What the stash holds, in bytes.
struct ActivationReport {
  std::vector<size_t> per_layer;  // kept across the step by block l (its input + intermediates)
  size_t transient = 0;           // full recompute: the one-block buffer used in the backward
  size_t head = 0;                // final norm, logits and loss buffers
  size_t moe = 0;                 // MoE layers' expert stash after the last forward (depends on
                                  // the routing; not part of per_layer)
  size_t total() const;
  std::string to_string() const;
};

}  // namespace grove
