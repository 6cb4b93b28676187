// CPU compute kernels: forward and backward of every op the transformer uses.
//
// One interface with kernels/cuda/ops.h: the same kernels with the same names, argument lists and
// shapes (host pointers here; the CUDA ones take device pointers and a trailing stream). Shared
// types (AttentionShape, kMoeMaxTopK, MoeRouterLosses) and the acc_t<T> type rule are in
// kernels/kernel_types.h; on the CPU, T is float (training) or double (finite-difference tests) and
// acc_t<T> = T, so weight gradients, norm weights, rstd, lse and losses are T.
//
// Legend: N rows (tokens = s*b), C channels (h), OC output channels, V vocabulary,
// S sequence, B batch, NH query heads, NKV key/value heads (NH % NKV == 0), HD head dim.
// Activations are row-major [s, b, ...]: row r = s_idx * B + b_idx.
//
// Conventions (llm.c style):
//  - Raw pointers with explicit sizes; kernels never allocate (except documented scratch).
//  - Backward kernels ACCUMULATE into gradient buffers with += (callers zero them once per step),
//    so a tensor used twice sums its gradients naturally (the MoE kernels say where they write).
//  - Every kernel is templated on T and instantiated for float (training) and double (the
//    finite-difference gradient tests). GEMMs go through OpenBLAS (sgemm/dgemm); other loops
//    are parallelised with OpenMP.
//  - Each fast kernel has a plain scalar reference in kernels/reference/ops_reference.h that the
//    tests of both back ends compare with.
#pragma once

#include <cstdint>

#include "kernels/kernel_types.h"

namespace grove::cpu {

using kernels::acc_t;
using kernels::AttentionShape;
using kernels::kMoeMaxTopK;
using kernels::moe_router_losses;
using kernels::MoeRouterLosses;

// ---- GEMM ---------------------------------------------------------------------------------
// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, with leading dimensions.
template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc);

// ---- Linear (weight [OC, C] as in PyTorch nn.Linear) --------------------------------------
// out[N,OC] = inp[N,C] @ weight[OC,C]^T (+ bias[OC] when bias != nullptr)
template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC);
// dinp += dout @ weight; dweight += dout^T @ inp; dbias += sum_rows(dout). dinp/dbias may be null.
template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int N, int C, int OC);
// The bias parts of both (shared with the bf16 Linear, kernels/cpu/bf16.h): out[n,:] = bias for
// every row n; dbias += sum_rows(dout).
template <typename T>
void bias_fill(T* out, const T* bias, int N, int OC);
template <typename T>
void bias_backward(T* dbias, const T* dout, int N, int OC);

// ---- RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight ---------------------------------------
// rstd[N] receives 1/sqrt(mean(x^2)+eps) for the backward.
template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C, float eps);
template <typename T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C);

// ---- RoPE (rotate-half convention, as in Llama / PyTorch reference) -------------------------
// x: [S, B, NHx, HD]; pairs (i, i + HD/2) rotated by angle pos * theta^(-2i/HD), pos = pos0 + s.
// cos/sin tables: [max_pos, HD/2] built by rope_table. In place.
void rope_table(float* cos_table, float* sin_table, int max_pos, int HD, float theta);
template <typename T>
void rope_forward(T* x, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                  int HD, int pos0);
// The inverse rotation applied to the gradient, in place (RoPE is orthogonal).
template <typename T>
void rope_backward(T* dx, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                   int HD, int pos0);

// ---- Attention --------------------------------------------------------------------------------
// Shapes and masking: AttentionShape (kernels/kernel_types.h). lse is fp32-accurate.
// probs: optional [B, NH, SQ, SK] softmax probabilities kept for the backward ("none" recompute
// mode); nullptr means they are recomputed from q, k and lse in the backward.
template <typename T>
void attention_forward(T* out, T* lse, T* probs, const T* q, const T* k, const T* v,
                       const AttentionShape& shape);
// dq, dk, dv += ...; needs out and lse of the forward (probs when it was kept, else nullptr).
// lse may be a combined (global) lse from several shards: then out/dout are the combined ones and
// the kernel returns this shard's contribution to dq and its dk, dv (FlashAttention-2 backward).
// probs, when passed to the backward, must be exp(scores*scale - lse) for the lse passed: with a
// combined lse pass probs = nullptr. Scratch: each OpenMP thread allocates 64*SK elements
// (forward without probs) or 2*64*SK (backward) once per call; never O(SQ*SK*B*NH).
// The forward parallelises over (b, head), the backward over (b, kv head).
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, const T* probs, const AttentionShape& shape);

// ---- Merge of partial attention results -------------------------------------------------------
// The combine of tree / ring / context-parallel attention and of sharded decoding: attention over
// disjoint key sets, merged by max / log-sum-exp. Layouts as attention_forward's: out [SQ, B, NH,
// HD], lse [B, NH, SQ]. Exact: the merged result is the attention over the union of the keys, up
// to rounding. There is no backward kernel: attention_backward takes the merged out and lse, so
// each key shard's backward gives its dk, dv and its share of dq directly.
//
// Pairwise, in place: rows [row0, row0 + SQp) of (out, lse) with a partial (part_out [SQp, B, NH,
// HD], part_lse [B, NH, SQp]). Per row, m = max(lse, lse_p), w = e^{lse - m}, w_p = e^{lse_p - m}:
// out = (out·w + part_out·w_p) / (w + w_p), lse = m + log(w + w_p). An empty side (lse = -inf)
// has weight 0; a row empty on both sides is left as it is (0, -inf).
template <typename T>
void attention_merge(T* out, acc_t<T>* lse, const T* part_out, const acc_t<T>* part_lse, int SQ,
                     int B, int NH, int HD, int row0, int SQp);
// The same merge of P partials around collectives (tree attention): given lse_max = the max of
// the P partials' lse (a MAX all-reduce), attention_merge_scale writes num = out·w and den = w
// with w = e^{lse - lse_max} (0 where lse = -inf; num may alias out); after a SUM all-reduce of
// (num, den), attention_merge_finish writes out = num / den and lse = lse_max + log(den) (0 and
// -inf where den = 0; out may alias num).
template <typename T>
void attention_merge_scale(T* num, acc_t<T>* den, const T* out, const acc_t<T>* lse,
                           const acc_t<T>* lse_max, int SQ, int B, int NH, int HD);
template <typename T>
void attention_merge_finish(T* out, acc_t<T>* lse, const T* num, const acc_t<T>* den,
                            const acc_t<T>* lse_max, int SQ, int B, int NH, int HD);

// ---- SwiGLU: out = silu(gate) * up
// ---------------------------------------------------------------
template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n);
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n);

// ---- Embedding: out[N,C] = table[tokens[n], :]
// ----------------------------------------------------
template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int N, int C);
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int N, int C);

// ---- Softmax cross-entropy ---------------------------------------------------------------------
// losses[N] = logsumexp(logits[n]) - logits[n, targets[n]]; lse[N] kept for the backward.
// A target < 0 is ignored (loss 0, gradient 0).
template <typename T>
void cross_entropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets, int N,
                           int V);
// dlogits[n] = (softmax(logits[n]) - onehot(target)) * dloss[n]. Writes (does not accumulate) and
// may alias logits (in-place) to save the [N, V] buffer.
template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets,
                            const T* dloss, int N, int V);

// ---- Vocabulary shard: embedding and cross-entropy over ids [vocab_start, vocab_start + V) -----
// The kernels of the vocabulary-parallel embedding and loss (parallel/vocab_parallel.h): table
// [V, C] and logits [N, V] hold this shard's ids only; ids outside it (and targets < 0) are
// skipped. out[n] = table[tokens[n] - vocab_start], or a zero row for an id this shard does not
// own.
template <typename T>
void embedding_forward_shard(T* out, const int32_t* tokens, const T* table, int N, int C,
                             int vocab_start, int V);
// dtable[tokens[n] - vocab_start] += dout[n] for the ids this shard owns.
template <typename T>
void embedding_backward_shard(T* dtable, const T* dout, const int32_t* tokens, int N, int C,
                              int vocab_start, int V);
// row_max[n] = max_j logits[n, j].
template <typename T>
void cross_entropy_shard_max(T* row_max, const T* logits, int N, int V);
// packed [2N]: packed[n] = sum_j exp(logits[n, j] - row_max[n]) (row_max: the max over every
// shard), packed[N + n] = logits[n, targets[n] - vocab_start] when this shard owns the target, 0
// otherwise; both are summed over the shards before cross_entropy_shard_finish.
template <typename T>
void cross_entropy_shard_sums(T* packed, const T* logits, const T* row_max, const int32_t* targets,
                              int N, int V, int vocab_start);
// From the summed packed values: lse[n] = row_max[n] + log(packed[n]), losses[n] = lse[n] -
// packed[N + n] (0 for a target < 0).
template <typename T>
void cross_entropy_shard_finish(T* losses, T* lse, const T* row_max, const T* packed,
                                const int32_t* targets, int N);
// dlogits[n, j] = (exp(logits[n, j] - lse[n]) - [j = target - vocab_start]) · dloss[n] on this
// shard (zero rows for targets < 0). Writes (does not accumulate); may alias logits.
template <typename T>
void cross_entropy_shard_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets,
                                  const T* dloss, int N, int V, int vocab_start);

// ---- Elementwise helpers -----------------------------------------------------------------------
template <typename T>
void add_inplace(T* y, const T* x, int64_t n);  // y += x
template <typename T>
void scale_inplace(T* y, T alpha, int64_t n);  // y *= alpha
template <typename T>
double sum_squares(const T* x, int64_t n);  // in double, for gradient norms

// ---- AdamW (decoupled weight decay, bias-corrected; step counts from 1)
// -------------------------- param -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * param)
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step);

// ---- Mixture of experts (one process) -----------------------------------------------------------
// The same kernels as in kernels/cuda/ops.h (semantics and expressions of kernels/cuda/moe.cu;
// parallel/moe_router.cc and parallel/moe_dispatcher.cc use them). Legend: N tokens, C model dim,
// E experts, k experts per token (1 <= k <= min(E, kMoeMaxTopK)), A = N·k assignments,
// assignment a = n·k + j. A is the router's type, float for training (double for the
// finite-difference tests); the statistics prob_sum and lse_sq_sum are double. Capacity dropping
// is moe_capacity's (below; parallel/moe_router.cc drops by the same rule). Deterministic:
// fixed-order sums, whatever the thread count. Index buffers are int32: A < 2^31.
//
// Route: from logits[N,E] writes probs[N,E] = softmax(logits) (exp and sums in double), lse[N],
// expert[N,k] = top-k ids by logit (largest first, a tie goes to the lower id), and
// weight[N,k] = p_e / Σ_j p_{e_j} when k > 1, p_e when k == 1 (Switch). Statistics of these N
// tokens (written; zeros when N == 0): counts[E] (assignments routed to each expert),
// prob_sum[E] = Σ_n p_{n,e} and lse_sq_sum[0] = Σ_n lse_n² (lse_n in double, before rounding),
// summed in token order. Losses: moe_router_losses (kernels/kernel_types.h).
template <typename A>
void moe_router_forward(A* probs, A* lse, int32_t* expert, A* weight, int32_t* counts,
                        double* prob_sum, double* lse_sq_sum, const A* logits, int N, int E, int k);
// dlogits[N,E] (WRITTEN) = d/dlogits of Σ_{n,j} dweight_{n,j}·w_{n,j} + loss_scale·(aux + z),
// from the forward's probs, lse, expert and weight; f_i (from counts) carries no gradient. counts
// and tokens_all are those of the stats group (for one process the forward's counts and N). The
// GEMMs for dW_r and dx (linear_backward on dlogits) are the caller's.
template <typename A>
void moe_router_backward(A* dlogits, const A* dweight, const A* probs, const A* lse,
                         const int32_t* expert, const A* weight, const int32_t* counts,
                         int64_t tokens_all, float aux_coef, float z_coef, float loss_scale, int N,
                         int E, int k);
// Permute (dispatch): a stable counting sort of the A assignments by expert, in (expert, token,
// slot) order. Writes offsets[E+1] (exclusive prefix sum of counts; expert e owns rows
// [offsets[e], offsets[e+1]), offsets[E] = A), row_of[A] (assignment → row) and xp[A,C]
// (xp[row_of[n·k + j]] = x[n]). counts must be the routing's own counts (they must sum to A).
template <typename T>
void moe_permute(T* xp, int32_t* offsets, int32_t* row_of, const T* x, const int32_t* expert,
                 const int32_t* counts, int N, int k, int E, int C);
// dx[N,C] += Σ_j dxp[row_of[n·k + j]], in slot order j = 0..k-1.
template <typename T>
void moe_permute_backward(T* dx, const T* dxp, const int32_t* row_of, int N, int k, int C);
// Unpermute (combine): y[N,C] = Σ_j weight[n,j]·yp[row_of[n·k + j]] (WRITTEN; slot order).
template <typename T>
void moe_unpermute(T* y, const T* yp, const acc_t<T>* weight, const int32_t* row_of, int N, int k,
                   int C);
// dyp[row_of[n·k + j]] = weight[n,j]·dy[n] (WRITTEN) and dweight[n,j] = <dy[n], yp[row_of[..]]>
// (WRITTEN; summed in double).
template <typename T>
void moe_unpermute_backward(T* dyp, acc_t<T>* dweight, const T* dy, const T* yp,
                            const acc_t<T>* weight, const int32_t* row_of, int N, int k, int C);
// Grouped linear (the experts' GEMMs): rows [offsets[e], offsets[e+1]) of inp belong to expert e,
// whose weight is the slab weight[e] of weight[E,OC,C]; one linear_forward / linear_backward per
// non-empty expert. offsets_host: moe_permute's offsets (E+1 entries). Rows outside
// [offsets[0], offsets[E]) are not touched. out[R,OC] rows written.
template <typename T>
void grouped_linear_forward(T* out, const T* inp, const T* weight, const int32_t* offsets_host,
                            int E, int C, int OC);
// dinp[R,C] += dout @ weight[e]; dweight[E,OC,C] += dout^T @ inp, per expert. dinp may be null.
template <typename T>
void grouped_linear_backward(T* dinp, acc_t<T>* dweight, const T* dout, const T* inp,
                             const T* weight, const int32_t* offsets_host, int E, int C, int OC);

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
                  const int32_t* expert, const float* weight, int N, int k, int E, int64_t cap);
// Cross-polytope hash of n rows x[n,C] (rows minus mu[mu_row[i]] when mu is not null) with the
// rotations rot[L,r,C]: v_l = rot_l·x summed over c = 0..C-1 in this order in fp32 without fused
// multiply-adds (the same id on every backend and every rank), code_l = 2·argmax_i |v_{l,i}| +
// (v < 0) (a tie to the lowest i), ids[i] = Σ_l code_l·(2r)^l.
template <typename T>
void lsh_hash(uint64_t* ids, const T* x, const float* rot, const T* mu, const int32_t* mu_row,
              int64_t n, int C, int L, int r);
// Buckets of every group: codes[g] = 0 leaves each row its own bucket, l in [1, L] buckets by the
// first l hash codes (ids mod (2r)^l; l = L: the whole id), −1 puts the whole group in one
// bucket. Buckets are numbered in order of their first row within the group, groups one after
// another: pos[i] = the centroid row of row i (groups' centroids contiguous, in group order),
// nbuckets[g] = buckets of group g. scratch: [offsets[G]] int32. offsets[G+1] device.
void lsh_bucket(int32_t* pos, int32_t* nbuckets, int32_t* scratch, const uint64_t* ids,
                const int32_t* codes, const int32_t* offsets, int G, int64_t n, int L, int r);
// out[B,C] = Σ_{i: pos[i] = b} x[i] (mean = false) or that sum / count[b] (mean = true; count[B]
// written), summed in double in row order and rounded once. Rows of group g map to centroids of
// group g only. acc: [B,C] double scratch.
template <typename T>
void lsh_bucket_reduce(T* out, int32_t* count, double* acc, const T* x, const int32_t* pos,
                       const int32_t* offsets, int G, int64_t B, int C, bool mean);
// Decompression of the expert outputs: yp[i] = yc[pos[i]] + (xp[i] − xc[pos[i]]) (compensate;
// the row's own residual) or yc[pos[i]], for rows i < n.
template <typename T>
void lsh_expand(T* yp, const T* yc, const T* xp, const T* xc, const int32_t* pos, int64_t n, int C,
                bool compensate);
// Its backward with the mean's: dxp[i] = dxc[b] when count[b] = 1; else (dxc[b] − dyc[b]) /
// count[b] + dyp[i] (compensate) or dxc[b] / count[b]; b = pos[i], dyc = lsh_bucket_reduce of dyp
// (sum). Written, rows i < n.
template <typename T>
void lsh_expand_backward(T* dxp, const T* dxc, const T* dyc, const T* dyp, const int32_t* pos,
                         const int32_t* count, int64_t n, int C, bool compensate);

// OpenMP threads used by the kernels (and OpenBLAS when it is the OpenMP build).
int num_threads();

}  // namespace grove::cpu
