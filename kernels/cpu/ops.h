// CPU compute kernels: forward and backward of every op the transformer uses.
//
// Legend: N rows (tokens = s*b), C channels (h), OC output channels, V vocabulary,
// S sequence, B batch, NH query heads, NKV key/value heads (NH % NKV == 0), HD head dim.
// Activations are row-major [s, b, ...]: row r = s_idx * B + b_idx.
//
// Conventions (llm.c style):
//  - Raw pointers with explicit sizes; kernels never allocate (except documented scratch).
//  - Backward kernels ACCUMULATE into gradient buffers with += (callers zero them once per step),
//    so a tensor used twice sums its gradients naturally.
//  - Every kernel is templated on T and instantiated for float (training) and double (the
//    finite-difference gradient tests). GEMMs go through OpenBLAS (sgemm/dgemm); other loops
//    are parallelised with OpenMP.
//  - Each fast kernel has a plain scalar reference in ops_reference.h that the tests compare with.
#pragma once

#include <cstdint>

namespace grove::cpu {

// ---- GEMM ---------------------------------------------------------------------------------
// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, with leading dimensions.
template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc);

// ---- Linear (weight [OC, C] as in PyTorch nn.Linear) --------------------------------------
// out[N,OC] = inp[N,C] @ weight[OC,C]^T (+ bias[OC] when bias != nullptr)
template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC);
// dinp += dout @ weight; dweight += dout^T @ inp; dbias += sum_rows(dout). dinp/dbias may be null.
template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int N, int C, int OC);

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
// q: [SQ, B, NH, HD]; k, v: [SK, B, NKV, HD]; out: [SQ, B, NH, HD]; lse: [B, NH, SQ] (natural log
// of the softmax denominator of the scaled scores, fp32-accurate; -inf for a fully masked row,
// whose output is 0). Scale = 1/sqrt(HD). With causal, query i (global position q_pos0 + i) sees
// key j (global position k_pos0 + j) iff k_pos0 + j <= q_pos0 + i. The offsets let a shard of
// queries attend to a shard of keys (tree / ring attention combine the partials by lse).
// probs: optional [B, NH, SQ, SK] softmax probabilities kept for the backward ("none" recompute
// mode); nullptr means they are recomputed from q, k and lse in the backward.
struct AttentionShape {
  int SQ, SK, B, NH, NKV, HD;
  bool causal;
  int q_pos0 = 0;
  int k_pos0 = 0;
};
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

// ---- SwiGLU: out = silu(gate) * up ---------------------------------------------------------------
template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n);
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n);

// ---- Embedding: out[N,C] = table[tokens[n], :] ----------------------------------------------------
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

// ---- Elementwise helpers -----------------------------------------------------------------------
template <typename T>
void add_inplace(T* y, const T* x, int64_t n);  // y += x
template <typename T>
void scale_inplace(T* y, T alpha, int64_t n);  // y *= alpha
template <typename T>
double sum_squares(const T* x, int64_t n);  // in double, for gradient norms

// ---- AdamW (decoupled weight decay, bias-corrected; step counts from 1) --------------------------
// param -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * param)
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step);

// OpenMP threads used by the kernels (and OpenBLAS when it is the OpenMP build).
int num_threads();

}  // namespace grove::cpu
