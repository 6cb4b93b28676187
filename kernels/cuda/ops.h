// CUDA compute kernels: the GPU counterpart of kernels/cpu/ops.h, with the same names and
// argument lists (device pointers, plus a trailing stream).
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

#include "kernels/cpu/ops.h"  // AttentionShape: one shape type for both back ends

namespace grove::cuda {

using bf16 = __nv_bfloat16;
using AttentionShape = ::grove::cpu::AttentionShape;

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
// out[N,OC] = inp[N,C] @ weight[OC,C]^T (+ bias[OC] when bias != nullptr)
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
// AttentionShape is grove::cpu's type, so an unqualified call with float pointers also finds the
// CPU overload by argument-dependent lookup: call these as cuda::attention_forward(...).
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

}  // namespace grove::cuda
