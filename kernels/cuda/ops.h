// CUDA compute kernels: the GPU counterpart of kernels/cpu/ops.h. One interface with it: the same
// kernels with the same names, argument lists and shapes, taking device pointers and a trailing
// `cudaStream_t stream = 0`. Shared types (AttentionShape, kMoeMaxTopK, MoeRouterLosses) and the
// acc_t<T> type rule are in kernels/kernel_types.h: the float parameters below that do not follow
// T (weight gradients, norm weights, rstd, lse, losses, the router's tensors) are acc_t<T>, which
// is float for both GPU element types, so for T = float the cpu:: and cuda:: signatures coincide.
//
// Legend: N rows (tokens = s*b), C channels (h), OC output channels, V vocabulary, S sequence,
// B batch, NH query heads, NKV key/value heads (NH % NKV == 0), HD head dim. Activations are
// row-major [s, b, ...]: row r = s_idx * B + b_idx.
//
// Conventions (as on the CPU):
//  - Raw device pointers with explicit sizes; kernels never allocate (sum_squares, which returns a
//    host value, uses one 8-byte stream-ordered allocation; the bf16 tensor-core attention
//    backward one B*NH*SQ fp32 scratch, see below).
//  - Backward kernels ACCUMULATE into gradient buffers with +=.
//  - Every op runs on `stream` and does not synchronise it (except sum_squares, which returns a
//    host double). Errors throw grove::Error naming the failed call (kernels/cuda/check.h).
//  - Templates are instantiated for T = float (fp32 training, matches grove::cpu exactly) and
//    T = bf16 (bf16 compute, fp32 master weights): in the bf16 variants every reduction and every
//    accumulator is fp32, and the quantities that must stay accurate are fp32 whatever T is:
//    weight gradients (dweight, dbias, dtable), norm weights, rstd, attention lse, losses.
//  - Atomic accumulations (rmsnorm dweight, embedding dtable, sum_squares) are not bitwise
//    deterministic from run to run; everything else is.
//  - GEMMs go through cuBLAS (fp32, no TF32, so results match the CPU to fp32 rounding) and
//    cuBLASLt (bf16 inputs, fp32 accumulation), using a per-thread handle (blas_handle.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>

#include "kernels/kernel_types.h"

namespace grove::cuda {

using bf16 = __nv_bfloat16;
using kernels::acc_t;
using kernels::AttentionShape;
using kernels::kMoeMaxTopK;
using kernels::moe_router_losses;
using kernels::MoeRouterLosses;

// ---- GEMM -----------------------------------------------------------------------------------
// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, with leading dimensions. T = float uses
// cublasSgemm (pure fp32); T = bf16 uses cuBLASLt with fp32 accumulation and a bf16 C.
template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const T* A, int lda,
          const T* B, int ldb, float beta, T* C, int ldc, cudaStream_t stream = 0);
// bf16 inputs, fp32 C (e.g. weight gradients accumulated into fp32 master gradients).
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const bf16* A, int lda,
          const bf16* B, int ldb, float beta, float* C, int ldc, cudaStream_t stream = 0);

// ---- Linear (weight [OC, C] as in PyTorch nn.Linear) -----------------------------------------
// out[N,OC] = inp[N,C] @ weight[OC,C]^T (+ bias[OC] when bias != nullptr). The bias is added in
// fp32 before out is rounded; for bf16 inside cuBLASLt's bias epilogue (one pass over out).
template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC,
                    cudaStream_t stream = 0);
// dinp += dout @ weight; dweight += dout^T @ inp; dbias += sum_rows(dout). dinp/dbias may be null.
// Weight gradients are fp32 for both T.
template <typename T>
void linear_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp,
                     const T* weight, int N, int C, int OC, cudaStream_t stream = 0);

// ---- RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight ---------------------------------------
template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const float* weight, int N, int C,
                     float eps, cudaStream_t stream = 0);
template <typename T>
void rmsnorm_backward(T* dinp, float* dweight, const T* dout, const T* inp, const float* weight,
                      const float* rstd, int N, int C, cudaStream_t stream = 0);

// ---- RoPE (rotate-half convention) -------------------------------------------------------------
// x: [S, B, NHx, HD]; pairs (i, i + HD/2) rotated by pos * theta^(-2i/HD), pos = pos0 + s.
// Tables [max_pos, HD/2] (device memory), computed in double and rounded once.
void rope_table(float* cos_table, float* sin_table, int max_pos, int HD, float theta,
                cudaStream_t stream = 0);
template <typename T>
void rope_forward(T* x, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                  int HD, int pos0, cudaStream_t stream = 0);
template <typename T>
void rope_backward(T* dx, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                   int HD, int pos0, cudaStream_t stream = 0);

// ---- Attention (tiled, FlashAttention-2 style; HD <= 256) ---------------------------------------
// Same contract as grove::cpu: q [SQ,B,NH,HD], k/v [SK,B,NKV,HD], out [SQ,B,NH,HD], lse [B,NH,SQ]
// (natural log, fp32; -inf and a zero output row for a fully masked row). The score matrix is
// never materialised; probs, when not null, is additionally written ([B,NH,SQ,SK]) for callers
// that want it, and the backward always recomputes probabilities from q, k and lse (probs is
// accepted for interface parity and not read).
// AttentionShape is grove::kernels's type, shared with grove::cpu: call these qualified, as
// cuda::attention_forward(...).
template <typename T>
void attention_forward(T* out, float* lse, T* probs, const T* q, const T* k, const T* v,
                       const AttentionShape& shape, cudaStream_t stream = 0);
// dq, dk, dv += ... (lse may be a combined lse of several shards, with out/dout the combined ones).
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const float* lse, const T* probs, const AttentionShape& shape,
                        cudaStream_t stream = 0);

// Two implementations behind attention_forward / attention_backward:
//  - bf16 with HD in {64, 128}, no probs requested and 16-byte aligned tensors: tensor-core
//    kernels (attention_tc.cu; bf16 operands, fp32 accumulation and softmax statistics, P and dS
//    rounded to bf16 before their matrix products, as FlashAttention-2 does). Deterministic. The
//    backward takes one stream-ordered fp32 scratch of B*NH*SQ floats (cudaMallocAsync), for
//    D_i = rowsum(dout_i * out_i).
//  - everything else (fp32, other HD, probs): the scalar fp32-FMA kernels (attention.cu), kept
//    callable as *_reference so that tests and benchmarks compare both on the same device.
template <typename T>
void attention_forward_reference(T* out, float* lse, T* probs, const T* q, const T* k, const T* v,
                                 const AttentionShape& shape, cudaStream_t stream = 0);
template <typename T>
void attention_backward_reference(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                                  const T* v, const T* out, const float* lse, const T* probs,
                                  const AttentionShape& shape, cudaStream_t stream = 0);
// Whether the bf16 entry points take the tensor-core path: HD in {64, 128}, a valid head layout
// (NKV > 0, NH % NKV == 0), probs == nullptr, and every pointer in `tensors` 16-byte aligned.
bool attention_tc_supported(const AttentionShape& shape, const void* probs,
                            std::initializer_list<const void*> tensors);
// The tensor-core kernels themselves (throw unless attention_tc_supported).
void attention_tc_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                          const AttentionShape& shape, cudaStream_t stream = 0);
void attention_tc_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                           const bf16* k, const bf16* v, const bf16* out, const float* lse,
                           const AttentionShape& shape, cudaStream_t stream = 0);

// ---- Merge of partial attention results -------------------------------------------------------
// As grove::cpu (the combine of tree / ring / context-parallel attention and of sharded decoding;
// contracts in kernels/cpu/ops.h): out [SQ, B, NH, HD] of T, lse [B, NH, SQ] fp32, all arithmetic
// fp32. Deterministic (one thread per row). No backward kernel: attention_backward takes the
// merged out and lse.
template <typename T>
void attention_merge(T* out, float* lse, const T* part_out, const float* part_lse, int SQ, int B,
                     int NH, int HD, int row0, int SQp, cudaStream_t stream = 0);
template <typename T>
void attention_merge_scale(T* num, float* den, const T* out, const float* lse, const float* lse_max,
                           int SQ, int B, int NH, int HD, cudaStream_t stream = 0);
template <typename T>
void attention_merge_finish(T* out, float* lse, const T* num, const float* den,
                            const float* lse_max, int SQ, int B, int NH, int HD,
                            cudaStream_t stream = 0);

// ---- Decode attention against one KV-cache shard (kernels/cuda/decode_attention.cu) ----------
// o [B, NH, HD], lse [B, NH] (natural log) = attention of one query row q [B, NH, HD] over `rows`
// keys k, v [rows, B, NKV, HD], no mask, fp32; rows = 0 gives o = 0, lse = -inf. The reference is
// CpuBackend::decode_attention (kernels/cpu/backend.h).
void decode_attention(float* o, float* lse, const float* q, const float* k, const float* v,
                      int rows, int B, int NH, int NKV, int HD, cudaStream_t stream = 0);

// ---- SwiGLU: out = silu(gate) * up
// ---------------------------------------------------------------
template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n, cudaStream_t stream = 0);
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n,
                     cudaStream_t stream = 0);

// ---- Embedding: out[N,C] = table[tokens[n], :] (tokens must lie in [0, V))
// ------------------------
template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int N, int C,
                       cudaStream_t stream = 0);
// dtable[tokens[n], :] += dout[n, :] with fp32 atomics.
template <typename T>
void embedding_backward(float* dtable, const T* dout, const int32_t* tokens, int N, int C,
                        cudaStream_t stream = 0);

// ---- Softmax cross-entropy ---------------------------------------------------------------------
// losses[N] = logsumexp(logits[n]) - logits[n, targets[n]]; lse[N] kept. A target < 0 is ignored.
template <typename T>
void cross_entropy_forward(float* losses, float* lse, const T* logits, const int32_t* targets,
                           int N, int V, cudaStream_t stream = 0);
// dlogits[n] = (softmax(logits[n]) - onehot(target)) * dloss[n]. Writes (does not accumulate) and
// may alias logits (in place).
template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets,
                            const float* dloss, int N, int V, cudaStream_t stream = 0);

// ---- Vocabulary shard: embedding and cross-entropy over ids [vocab_start, vocab_start + V) -----
// The kernels of the vocabulary-parallel embedding and loss (parallel/vocab_parallel.h); the
// same contract as kernels/cpu/ops.h's, with fp32 row statistics. The embedding backward uses
// fp32 atomics.
template <typename T>
void embedding_forward_shard(T* out, const int32_t* tokens, const T* table, int N, int C,
                             int vocab_start, int V, cudaStream_t stream = 0);
template <typename T>
void embedding_backward_shard(float* dtable, const T* dout, const int32_t* tokens, int N, int C,
                              int vocab_start, int V, cudaStream_t stream = 0);
template <typename T>
void cross_entropy_shard_max(float* row_max, const T* logits, int N, int V,
                             cudaStream_t stream = 0);
template <typename T>
void cross_entropy_shard_sums(float* packed, const T* logits, const float* row_max,
                              const int32_t* targets, int N, int V, int vocab_start,
                              cudaStream_t stream = 0);
void cross_entropy_shard_finish(float* losses, float* lse, const float* row_max,
                                const float* packed, const int32_t* targets, int N,
                                cudaStream_t stream = 0);
template <typename T>
void cross_entropy_shard_backward(T* dlogits, const T* logits, const float* lse,
                                  const int32_t* targets, const float* dloss, int N, int V,
                                  int vocab_start, cudaStream_t stream = 0);

// ---- Elementwise helpers -----------------------------------------------------------------------
template <typename T>
void add_inplace(T* y, const T* x, int64_t n, cudaStream_t stream = 0);  // y += x
template <typename T>
void scale_inplace(T* y, float alpha, int64_t n, cudaStream_t stream = 0);  // y *= alpha
// Sum of squares in double; synchronises `stream` to return the value to the host.
template <typename T>
double sum_squares(const T* x, int64_t n, cudaStream_t stream = 0);
// *result += sum of squares, on the device (no synchronisation; for a global gradient norm).
template <typename T>
void sum_squares_accumulate(double* result, const T* x, int64_t n, cudaStream_t stream = 0);
// Precision casts (round to nearest even).
void convert(bf16* dst, const float* src, int64_t n, cudaStream_t stream = 0);
void convert(float* dst, const bf16* src, int64_t n, cudaStream_t stream = 0);

// ---- AdamW (decoupled weight decay, bias-corrected; step counts from 1)
// -------------------------- param -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * param).
// fp32 master state.
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step,
                  cudaStream_t stream = 0);

// ---- Mixture of experts (docs/moe.md) ----------------------------------------------------------
// The GPU counterpart, for one process (no expert parallelism, stats group of one), of
// parallel/moe_router.h (route), moe_dispatcher.cc (permute, combine) and moe_experts.h (grouped
// expert GEMMs). Legend: N tokens, C model dim, E experts, k experts per token
// (1 <= k <= min(E, kMoeMaxTopK)), A = N·k assignments, assignment a = n·k + j.
//  - The router is fp32 whatever T is (its logits come from a GEMM with an fp32 C), and computes
//    the softmax in double as the CPU router does, so ids, probs and weights match it.
//  - Capacity dropping is moe_capacity's (below): it rewrites the routing so that moe_permute
//    puts the dropped rows in a last group the experts never read.
//  - Index buffers (expert ids, counts, offsets, row_of) are int32 on the device: A < 2^31.
//  - Everything is deterministic: no atomics, fixed-order fp32 / double sums.

// Route: from logits[N,E] writes probs[N,E] = softmax(logits), lse[N] = logsumexp(logits),
// expert[N,k] = top-k ids by logit (largest first, a tie goes to the lower id), and
// weight[N,k] = p_e / Σ_j p_{e_j} when k > 1, p_e when k == 1 (Switch; see moe_router.cc).
// Statistics of these N tokens (written; zeros when N == 0): counts[E] (assignments routed to
// each expert), prob_sum[E] = Σ_n p_{n,e} and lse_sq_sum[0] = Σ_n lse_n² (double). With
// T_all = N, f_i = counts_i / (T_all·k) and P_i = prob_sum_i / T_all: aux = α·E·Σ_i f_i·P_i,
// z = β·lse_sq_sum / T_all (moe_router_losses, on host copies).
void moe_router_forward(float* probs, float* lse, int32_t* expert, float* weight, int32_t* counts,
                        double* prob_sum, double* lse_sq_sum, const float* logits, int N, int E,
                        int k, cudaStream_t stream = 0);
// dlogits[N,E] (WRITTEN) = d/dlogits of Σ_{n,j} dweight_{n,j}·w_{n,j} + loss_scale·(aux + z),
// from the forward's probs, lse, expert and weight; f_i (from counts) carries no gradient. counts
// and tokens_all are those of the stats group: for one process the forward's counts and N. The
// GEMMs for dW_r and dx (linear_backward on dlogits) are the caller's.
void moe_router_backward(float* dlogits, const float* dweight, const float* probs, const float* lse,
                         const int32_t* expert, const float* weight, const int32_t* counts,
                         int64_t tokens_all, float aux_coef, float z_coef, float loss_scale, int N,
                         int E, int k, cudaStream_t stream = 0);

// The aux and z losses: moe_router_losses (kernels/kernel_types.h) on host copies of the
// statistics.

// Permute (dispatch, one process): a stable counting sort of the A assignments by expert, in
// (expert, token, slot) order, the single-rank order of AllToAllDispatcher. Writes offsets[E+1]
// (exclusive prefix sum of counts; expert e owns rows [offsets[e], offsets[e+1]), offsets[E] = A),
// row_of[A] (assignment → row) and xp[A,C] (xp[row_of[n·k + j]] = x[n]). counts must be the
// routing's own counts (as moe_router_forward writes them), not counts summed over a group.
template <typename T>
void moe_permute(T* xp, int32_t* offsets, int32_t* row_of, const T* x, const int32_t* expert,
                 const int32_t* counts, int N, int k, int E, int C, cudaStream_t stream = 0);
// dx[N,C] += Σ_j dxp[row_of[n·k + j]], summed in slot order j = 0..k-1 in fp32.
template <typename T>
void moe_permute_backward(T* dx, const T* dxp, const int32_t* row_of, int N, int k, int C,
                          cudaStream_t stream = 0);
// Unpermute (combine): y[N,C] = Σ_j weight[n,j]·yp[row_of[n·k + j]] (WRITTEN; fp32, slot order).
template <typename T>
void moe_unpermute(T* y, const T* yp, const float* weight, const int32_t* row_of, int N, int k,
                   int C, cudaStream_t stream = 0);
// dyp[row_of[n·k + j]] = weight[n,j]·dy[n] (WRITTEN) and dweight[n,j] = <dy[n], yp[row_of[..]]>
// (WRITTEN, fp32).
template <typename T>
void moe_unpermute_backward(T* dyp, float* dweight, const T* dy, const T* yp, const float* weight,
                            const int32_t* row_of, int N, int k, int C, cudaStream_t stream = 0);

// Grouped linear (the experts' GEMMs): rows [offsets[e], offsets[e+1]) of inp belong to expert e,
// whose weight is the slab weight[e] of weight[E,OC,C]; one linear_forward / linear_backward per
// non-empty expert. offsets_host is a HOST copy of moe_permute's offsets (E+1 entries). Rows
// outside [offsets[0], offsets[E]) are not touched.
// out[R,OC] rows written.
template <typename T>
void grouped_linear_forward(T* out, const T* inp, const T* weight, const int32_t* offsets_host,
                            int E, int C, int OC, cudaStream_t stream = 0);
// dinp[R,C] += dout @ weight[e]; dweight[E,OC,C] += dout^T @ inp (fp32), per expert. dinp may be
// null.
template <typename T>
void grouped_linear_backward(T* dinp, float* dweight, const T* dout, const T* inp, const T* weight,
                             const int32_t* offsets_host, int E, int C, int OC,
                             cudaStream_t stream = 0);

// ---- Capacity dropping and the LSH-compressed dispatch (docs/moe.md#capacity, docs/lsh.md) ------
// The rows of moe_permute's xp form groups (group g: rows [offsets[g], offsets[g+1]), the rows one
// rank routes to expert g, in (token, slot) order). Index buffers are int32 (rows < 2^31).
//
// Capacity: per expert, the first `cap` assignments in (slot, token) order are kept (first slots
// win over second slots, then earlier tokens), the rest dropped. Writes expert_kept[N,k] (the
// expert, or E for a dropped assignment: permuting by it with E+1 groups puts the dropped rows in
// a last group the experts never read), weight_kept[N,k] (the weight, or 0 when dropped),
// counts_kept[E+1] (kept rows per expert; [E]: dropped rows) and dropped[E] (per expert).
void moe_capacity(int32_t* expert_kept, float* weight_kept, int32_t* counts_kept, int32_t* dropped,
                  const int32_t* expert, const float* weight, int N, int k, int E, int64_t cap,
                  cudaStream_t stream = 0);
// Cross-polytope hash of n rows x[n,C] (rows minus mu[mu_row[i]] when mu is not null) with the
// rotations rot[L,r,C]: v_l = rot_l·x summed over c = 0..C-1 in this order in fp32 without fused
// multiply-adds (the same id on every backend and every rank), code_l = 2·argmax_i |v_{l,i}| +
// (v < 0) (a tie to the lowest i), ids[i] = Σ_l code_l·(2r)^l.
template <typename T>
void lsh_hash(uint64_t* ids, const T* x, const float* rot, const T* mu, const int32_t* mu_row,
              int64_t n, int C, int L, int r, cudaStream_t stream = 0);
// Buckets of every group: codes[g] = 0 leaves each row its own bucket, l in [1, L] buckets by the
// first l hash codes (ids mod (2r)^l; l = L: the whole id), −1 puts the whole group in one
// bucket. Buckets are numbered in order of their first row within the group, groups one after
// another: pos[i] = the centroid row of row i (groups' centroids contiguous, in group order),
// nbuckets[g] = buckets of group g. scratch: [offsets[G]] int32. offsets[G+1] device.
void lsh_bucket(int32_t* pos, int32_t* nbuckets, int32_t* scratch, const uint64_t* ids,
                const int32_t* codes, const int32_t* offsets, int G, int64_t n, int L, int r,
                cudaStream_t stream = 0);
// out[B,C] = Σ_{i: pos[i] = b} x[i] (mean = false) or that sum / count[b] (mean = true; count[B]
// written), summed in double in row order and rounded once. Rows of group g map to centroids of
// group g only. acc: [B,C] double scratch.
template <typename T>
void lsh_bucket_reduce(T* out, int32_t* count, double* acc, const T* x, const int32_t* pos,
                       const int32_t* offsets, int G, int64_t B, int C, bool mean,
                       cudaStream_t stream = 0);
// Decompression of the expert outputs: yp[i] = yc[pos[i]] + (xp[i] − xc[pos[i]]) (compensate;
// the row's own residual) or yc[pos[i]], for rows i < n.
template <typename T>
void lsh_expand(T* yp, const T* yc, const T* xp, const T* xc, const int32_t* pos, int64_t n, int C,
                bool compensate, cudaStream_t stream = 0);
// Its backward with the mean's: dxp[i] = dxc[b] when count[b] = 1; else (dxc[b] − dyc[b]) /
// count[b] + dyp[i] (compensate) or dxc[b] / count[b]; b = pos[i], dyc = lsh_bucket_reduce of dyp
// (sum). Written, rows i < n.
template <typename T>
void lsh_expand_backward(T* dxp, const T* dxc, const T* dyc, const T* dyp, const int32_t* pos,
                         const int32_t* count, int64_t n, int C, bool compensate,
                         cudaStream_t stream = 0);

}  // namespace grove::cuda
