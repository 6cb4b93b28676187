// CudaBackend<T>: the kernel backend (kernels/backend.h) of kernels/cuda/ops.h on the current
// CUDA device and its default stream; T = float (fp32, no TF32: follows the CPU backend to fp32
// rounding) or bf16 (bf16 operands, fp32 accumulation).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "core/tensor.h"
#include "kernels/backend.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"

namespace grove {

template <>
constexpr DType dtype_of<cuda::bf16>() {
  return DType::kBF16;
}

template <typename TT>
struct CudaBackend {
  using T = TT;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, cuda::bf16>);
  static constexpr Device kDevice = Device::kCUDA;
  static constexpr DType kDType = dtype_of<T>();
  static constexpr const char* kName = std::is_same_v<T, float> ? "cuda-fp32" : "cuda-bf16";

  // ---- memory ----
  static void upload(void* dst, const void* host, size_t bytes) {
    if (bytes) GROVE_CUDA_CHECK(cudaMemcpy(dst, host, bytes, cudaMemcpyHostToDevice));
  }
  static void download(void* host, const void* src, size_t bytes) {
    if (bytes) GROVE_CUDA_CHECK(cudaMemcpy(host, src, bytes, cudaMemcpyDeviceToHost));
  }
  static void zero(void* p, size_t bytes) {
    if (bytes) GROVE_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes));
  }
  // Within the backend's memory; dst == src is allowed (nothing to do).
  static void copy(void* dst, const void* src, size_t bytes) {
    if (bytes && dst != src)
      GROVE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
  }
  // `height` rows of `width` bytes, row i from src + i·spitch to dst + i·dpitch.
  static void copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                      size_t height) {
    if (width && height)
      GROVE_CUDA_CHECK(
          cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDeviceToDevice));
  }
  static void convert(T* dst, const float* src, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
      if (dst != src && n)
        GROVE_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(float) * n, cudaMemcpyDeviceToDevice));
    } else {
      cuda::convert(dst, src, n);
    }
  }

  // ---- dense ----
  static void linear_forward(T* out, const T* in, const T* w, const T* bias, int N, int C, int OC) {
    cuda::linear_forward<T>(out, in, w, bias, N, C, OC);
  }
  static void linear_backward(T* din, float* dw, float* db, const T* dout, const T* in, const T* w,
                              int N, int C, int OC) {
    cuda::linear_backward<T>(din, dw, db, dout, in, w, N, C, OC);
  }
  // logits[N, OC] (fp32) = in[N, C] @ w[OC, C]^T: the MoE router's GEMM, fp32 output for any T.
  static void router_logits(float* logits, const T* in, const T* w, int N, int C, int OC) {
    if constexpr (std::is_same_v<T, float>)
      cuda::linear_forward<float>(logits, in, w, nullptr, N, C, OC);
    else
      cuda::gemm(false, true, N, OC, C, 1.0f, in, C, w, C, 0.0f, logits, OC);
  }
  static void rmsnorm_forward(T* out, float* rstd, const T* in, const float* w, int N, int C,
                              float eps) {
    cuda::rmsnorm_forward<T>(out, rstd, in, w, N, C, eps);
  }
  static void rmsnorm_backward(T* din, float* dw, const T* dout, const T* in, const float* w,
                               const float* rstd, int N, int C) {
    cuda::rmsnorm_backward<T>(din, dw, dout, in, w, rstd, N, C);
  }
  static void rope_table(float* cos_t, float* sin_t, int max_pos, int HD, float theta) {
    cuda::rope_table(cos_t, sin_t, max_pos, HD, theta);
  }
  static void rope_forward(T* x, const float* c, const float* s, int S, int B, int NH, int HD,
                           int pos0) {
    cuda::rope_forward<T>(x, c, s, S, B, NH, HD, pos0);
  }
  static void rope_backward(T* x, const float* c, const float* s, int S, int B, int NH, int HD,
                            int pos0) {
    cuda::rope_backward<T>(x, c, s, S, B, NH, HD, pos0);
  }
  static void attention_forward(T* out, float* lse, T* probs, const T* q, const T* k, const T* v,
                                const cuda::AttentionShape& shape) {
    cuda::attention_forward<T>(out, lse, probs, q, k, v, shape);
  }
  static void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                                 const T* v, const T* out, const float* lse, const T* probs,
                                 const cuda::AttentionShape& shape) {
    cuda::attention_backward<T>(dq, dk, dv, dout, q, k, v, out, lse, probs, shape);
  }
  // The merge of partial attention results (context-parallel attention, parallel/cp_attention.h).
  static void attention_merge(T* out, float* lse, const T* part_out, const float* part_lse, int SQ,
                              int B, int NH, int HD, int row0, int SQp) {
    cuda::attention_merge<T>(out, lse, part_out, part_lse, SQ, B, NH, HD, row0, SQp);
  }
  static void attention_merge_scale(T* num, float* den, const T* out, const float* lse,
                                    const float* lse_max, int SQ, int B, int NH, int HD) {
    cuda::attention_merge_scale<T>(num, den, out, lse, lse_max, SQ, B, NH, HD);
  }
  static void attention_merge_finish(T* out, float* lse, const T* num, const float* den,
                                     const float* lse_max, int SQ, int B, int NH, int HD) {
    cuda::attention_merge_finish<T>(out, lse, num, den, lse_max, SQ, B, NH, HD);
  }
  // Decoding (parallel/kv_cache.h): one query row per (b, head) against `rows` cached keys, fp32.
  static void decode_attention(float* o, float* lse, const float* q, const float* k, const float* v,
                               int rows, int B, int NH, int NKV, int HD) {
    cuda::decode_attention(o, lse, q, k, v, rows, B, NH, NKV, HD);
  }
  static void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
    cuda::swiglu_forward<T>(out, gate, up, n);
  }
  static void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                              int64_t n) {
    cuda::swiglu_backward<T>(dgate, dup, dout, gate, up, n);
  }
  static void embedding_forward(T* out, const int32_t* tokens, const T* table, int N, int C) {
    cuda::embedding_forward<T>(out, tokens, table, N, C);
  }
  static void embedding_backward(float* dtable, const T* dout, const int32_t* tokens, int N,
                                 int C) {
    cuda::embedding_backward<T>(dtable, dout, tokens, N, C);
  }
  static void cross_entropy_forward(float* losses, float* lse, const T* logits,
                                    const int32_t* targets, int N, int V) {
    cuda::cross_entropy_forward<T>(losses, lse, logits, targets, N, V);
  }
  static void cross_entropy_backward(T* dlogits, const T* logits, const float* lse,
                                     const int32_t* targets, const float* dloss, int N, int V) {
    cuda::cross_entropy_backward<T>(dlogits, logits, lse, targets, dloss, N, V);
  }
  // Vocabulary shard [vocab_start, vocab_start + V): the vocabulary-parallel embedding and loss.
  static void embedding_forward_shard(T* out, const int32_t* tokens, const T* table, int N, int C,
                                      int vocab_start, int V) {
    cuda::embedding_forward_shard<T>(out, tokens, table, N, C, vocab_start, V);
  }
  static void embedding_backward_shard(float* dtable, const T* dout, const int32_t* tokens, int N,
                                       int C, int vocab_start, int V) {
    cuda::embedding_backward_shard<T>(dtable, dout, tokens, N, C, vocab_start, V);
  }
  static void cross_entropy_shard_max(float* row_max, const T* logits, int N, int V) {
    cuda::cross_entropy_shard_max<T>(row_max, logits, N, V);
  }
  static void cross_entropy_shard_sums(float* packed, const T* logits, const float* row_max,
                                       const int32_t* targets, int N, int V, int vocab_start) {
    cuda::cross_entropy_shard_sums<T>(packed, logits, row_max, targets, N, V, vocab_start);
  }
  static void cross_entropy_shard_finish(float* losses, float* lse, const float* row_max,
                                         const float* packed, const int32_t* targets, int N) {
    cuda::cross_entropy_shard_finish(losses, lse, row_max, packed, targets, N);
  }
  static void cross_entropy_shard_backward(T* dlogits, const T* logits, const float* lse,
                                           const int32_t* targets, const float* dloss, int N, int V,
                                           int vocab_start) {
    cuda::cross_entropy_shard_backward<T>(dlogits, logits, lse, targets, dloss, N, V, vocab_start);
  }
  static void add_inplace(T* y, const T* x, int64_t n) { cuda::add_inplace<T>(y, x, n); }
  static void scale_inplace(float* y, float alpha, int64_t n) {
    cuda::scale_inplace<float>(y, alpha, n);
  }
  static double sum_squares(const float* x, int64_t n) { return cuda::sum_squares<float>(x, n); }
  static void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float lr,
                           float b1, float b2, float eps, float wd, int step) {
    cuda::adamw_update(p, g, m, v, n, lr, b1, b2, eps, wd, step);
  }

  // ---- mixture of experts ----
  static constexpr int kMoeMaxTopK = cuda::kMoeMaxTopK;
  static void moe_router_forward(float* probs, float* lse, int32_t* expert, float* weight,
                                 int32_t* counts, double* prob_sum, double* lse_sq_sum,
                                 const float* logits, int N, int E, int k) {
    cuda::moe_router_forward(probs, lse, expert, weight, counts, prob_sum, lse_sq_sum, logits, N, E,
                             k);
  }
  static void moe_router_backward(float* dlogits, const float* dweight, const float* probs,
                                  const float* lse, const int32_t* expert, const float* weight,
                                  const int32_t* counts, int64_t tokens_all, float aux_coef,
                                  float z_coef, float loss_scale, int N, int E, int k) {
    cuda::moe_router_backward(dlogits, dweight, probs, lse, expert, weight, counts, tokens_all,
                              aux_coef, z_coef, loss_scale, N, E, k);
  }
  static void moe_permute(T* xp, int32_t* offsets, int32_t* row_of, const T* x,
                          const int32_t* expert, const int32_t* counts, int N, int k, int E,
                          int C) {
    cuda::moe_permute<T>(xp, offsets, row_of, x, expert, counts, N, k, E, C);
  }
  static void moe_permute_backward(T* dx, const T* dxp, const int32_t* row_of, int N, int k,
                                   int C) {
    cuda::moe_permute_backward<T>(dx, dxp, row_of, N, k, C);
  }
  static void moe_unpermute(T* y, const T* yp, const float* weight, const int32_t* row_of, int N,
                            int k, int C) {
    cuda::moe_unpermute<T>(y, yp, weight, row_of, N, k, C);
  }
  static void moe_unpermute_backward(T* dyp, float* dweight, const T* dy, const T* yp,
                                     const float* weight, const int32_t* row_of, int N, int k,
                                     int C) {
    cuda::moe_unpermute_backward<T>(dyp, dweight, dy, yp, weight, row_of, N, k, C);
  }
  static void grouped_linear_forward(T* out, const T* in, const T* w, const int32_t* offsets_host,
                                     int E, int C, int OC) {
    cuda::grouped_linear_forward<T>(out, in, w, offsets_host, E, C, OC);
  }
  static void grouped_linear_backward(T* din, float* dw, const T* dout, const T* in, const T* w,
                                      const int32_t* offsets_host, int E, int C, int OC) {
    cuda::grouped_linear_backward<T>(din, dw, dout, in, w, offsets_host, E, C, OC);
  }
  // capacity dropping and the LSH-compressed dispatch (contracts in kernels/cpu/ops.h)
  static void moe_capacity(int32_t* expert_kept, float* weight_kept, int32_t* counts_kept,
                           int32_t* dropped, const int32_t* expert, const float* weight, int N,
                           int k, int E, int64_t cap) {
    cuda::moe_capacity(expert_kept, weight_kept, counts_kept, dropped, expert, weight, N, k, E,
                       cap);
  }
  static void lsh_hash(uint64_t* ids, const T* x, const float* rot, const T* mu,
                       const int32_t* mu_row, int64_t n, int C, int L, int r) {
    cuda::lsh_hash<T>(ids, x, rot, mu, mu_row, n, C, L, r);
  }
  static void lsh_bucket(int32_t* pos, int32_t* nbuckets, int32_t* scratch, const uint64_t* ids,
                         const int32_t* codes, const int32_t* offsets, int G, int64_t n, int L,
                         int r) {
    cuda::lsh_bucket(pos, nbuckets, scratch, ids, codes, offsets, G, n, L, r);
  }
  static void lsh_bucket_reduce(T* out, int32_t* count, double* acc, const T* x, const int32_t* pos,
                                const int32_t* offsets, int G, int64_t B, int C, bool mean) {
    cuda::lsh_bucket_reduce<T>(out, count, acc, x, pos, offsets, G, B, C, mean);
  }
  static void lsh_expand(T* yp, const T* yc, const T* xp, const T* xc, const int32_t* pos,
                         int64_t n, int C, bool compensate) {
    cuda::lsh_expand<T>(yp, yc, xp, xc, pos, n, C, compensate);
  }
  static void lsh_expand_backward(T* dxp, const T* dxc, const T* dyc, const T* dyp,
                                  const int32_t* pos, const int32_t* count, int64_t n, int C,
                                  bool compensate) {
    cuda::lsh_expand_backward<T>(dxp, dxc, dyc, dyp, pos, count, n, C, compensate);
  }
  // (dlogits fp32 -> T for the router's input-gradient GEMM)
  static const T* router_grad_operand(T* scratch, const float* dlogits, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
      return dlogits;
    } else {
      cuda::convert(scratch, dlogits, n);
      return scratch;
    }
  }
};

}  // namespace grove
