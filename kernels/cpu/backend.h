// CpuBackend: the kernel backend (kernels/backend.h) of kernels/cpu/ops.h: host memory, fp32,
// OpenBLAS GEMMs and OpenMP loops.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/tensor.h"
#include "kernels/backend.h"
#include "kernels/cpu/ops.h"

namespace grove {

struct CpuBackend {
  using T = float;
  static constexpr Device kDevice = Device::kCPU;
  static constexpr DType kDType = DType::kF32;
  static constexpr const char* kName = "cpu";

  // ---- memory ----
  static void upload(void* dst, const void* host, size_t bytes) {
    if (bytes && dst != host) std::memcpy(dst, host, bytes);
  }
  static void download(void* host, const void* src, size_t bytes) {
    if (bytes && host != src) std::memcpy(host, src, bytes);
  }
  static void zero(void* p, size_t bytes) {
    if (bytes) std::memset(p, 0, bytes);
  }
  // Within the backend's memory; dst == src is allowed (nothing to do).
  static void copy(void* dst, const void* src, size_t bytes) {
    if (bytes && dst != src) std::memcpy(dst, src, bytes);
  }
  // `height` rows of `width` bytes, row i from src + i·spitch to dst + i·dpitch.
  static void copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                      size_t height) {
    for (size_t i = 0; i < height && width; ++i)
      std::memcpy(static_cast<char*>(dst) + i * dpitch, static_cast<const char*>(src) + i * spitch,
                  width);
  }
  static void convert(T* dst, const float* src, int64_t n) {
    if (dst != src && n) std::memcpy(dst, src, sizeof(float) * n);
  }

  // ---- dense ----
  static void linear_forward(T* out, const T* in, const T* w, const T* bias, int N, int C, int OC) {
    cpu::linear_forward<T>(out, in, w, bias, N, C, OC);
  }
  static void linear_backward(T* din, float* dw, float* db, const T* dout, const T* in, const T* w,
                              int N, int C, int OC) {
    cpu::linear_backward<T>(din, dw, db, dout, in, w, N, C, OC);
  }
  static void router_logits(float* logits, const T* in, const T* w, int N, int C, int OC) {
    cpu::linear_forward<T>(logits, in, w, nullptr, N, C, OC);
  }
  static void rmsnorm_forward(T* out, float* rstd, const T* in, const float* w, int N, int C,
                              float eps) {
    cpu::rmsnorm_forward<T>(out, rstd, in, w, N, C, eps);
  }
  static void rmsnorm_backward(T* din, float* dw, const T* dout, const T* in, const float* w,
                               const float* rstd, int N, int C) {
    cpu::rmsnorm_backward<T>(din, dw, dout, in, w, rstd, N, C);
  }
  static void rope_table(float* cos_t, float* sin_t, int max_pos, int HD, float theta) {
    cpu::rope_table(cos_t, sin_t, max_pos, HD, theta);
  }
  static void rope_forward(T* x, const float* c, const float* s, int S, int B, int NH, int HD,
                           int pos0) {
    cpu::rope_forward<T>(x, c, s, S, B, NH, HD, pos0);
  }
  static void rope_backward(T* x, const float* c, const float* s, int S, int B, int NH, int HD,
                            int pos0) {
    cpu::rope_backward<T>(x, c, s, S, B, NH, HD, pos0);
  }
  static void attention_forward(T* out, float* lse, T* probs, const T* q, const T* k, const T* v,
                                const cpu::AttentionShape& shape) {
    cpu::attention_forward<T>(out, lse, probs, q, k, v, shape);
  }
  static void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                                 const T* v, const T* out, const float* lse, const T* probs,
                                 const cpu::AttentionShape& shape) {
    cpu::attention_backward<T>(dq, dk, dv, dout, q, k, v, out, lse, probs, shape);
  }
  // The merge of partial attention results (context-parallel attention, parallel/cp_attention.h).
  static void attention_merge(T* out, float* lse, const T* part_out, const float* part_lse, int SQ,
                              int B, int NH, int HD, int row0, int SQp) {
    cpu::attention_merge<T>(out, lse, part_out, part_lse, SQ, B, NH, HD, row0, SQp);
  }
  static void attention_merge_scale(T* num, float* den, const T* out, const float* lse,
                                    const float* lse_max, int SQ, int B, int NH, int HD) {
    cpu::attention_merge_scale<T>(num, den, out, lse, lse_max, SQ, B, NH, HD);
  }
  static void attention_merge_finish(T* out, float* lse, const T* num, const float* den,
                                     const float* lse_max, int SQ, int B, int NH, int HD) {
    cpu::attention_merge_finish<T>(out, lse, num, den, lse_max, SQ, B, NH, HD);
  }
  // Decoding (parallel/kv_cache.h): o [B, NH, HD], lse [B, NH] = attention of one query row per
  // (b, head) q [B, NH, HD] over `rows` cached keys k, v [rows, B, NKV, HD], no mask, fp32; rows =
  // 0 gives the neutral partial o = 0, lse = -inf. The reference of cuda::decode_attention.
  static void decode_attention(float* o, float* lse, const float* q, const float* k, const float* v,
                               int rows, int B, int NH, int NKV, int HD) {
    if (rows == 0) {
      const int64_t bh = int64_t(B) * NH;
      std::fill(o, o + bh * HD, 0.0f);
      std::fill(lse, lse + bh, -std::numeric_limits<float>::infinity());
      return;
    }
    // q [1, B, NH, HD] against rows cached tokens, no mask; lse [B, NH, 1].
    const cpu::AttentionShape shape{1, rows, B, NH, NKV, HD, /*causal=*/false};
    cpu::attention_forward<float>(o, lse, nullptr, q, k, v, shape);
  }
  static void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
    cpu::swiglu_forward<T>(out, gate, up, n);
  }
  static void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                              int64_t n) {
    cpu::swiglu_backward<T>(dgate, dup, dout, gate, up, n);
  }
  static void embedding_forward(T* out, const int32_t* tokens, const T* table, int N, int C) {
    cpu::embedding_forward<T>(out, tokens, table, N, C);
  }
  static void embedding_backward(float* dtable, const T* dout, const int32_t* tokens, int N,
                                 int C) {
    cpu::embedding_backward<T>(dtable, dout, tokens, N, C);
  }
  static void cross_entropy_forward(float* losses, float* lse, const T* logits,
                                    const int32_t* targets, int N, int V) {
    cpu::cross_entropy_forward<T>(losses, lse, logits, targets, N, V);
  }
  static void cross_entropy_backward(T* dlogits, const T* logits, const float* lse,
                                     const int32_t* targets, const float* dloss, int N, int V) {
    cpu::cross_entropy_backward<T>(dlogits, logits, lse, targets, dloss, N, V);
  }
  // Vocabulary shard [vocab_start, vocab_start + V): the vocabulary-parallel embedding and loss.
  static void embedding_forward_shard(T* out, const int32_t* tokens, const T* table, int N, int C,
                                      int vocab_start, int V) {
    cpu::embedding_forward_shard<T>(out, tokens, table, N, C, vocab_start, V);
  }
  static void embedding_backward_shard(float* dtable, const T* dout, const int32_t* tokens, int N,
                                       int C, int vocab_start, int V) {
    cpu::embedding_backward_shard<T>(dtable, dout, tokens, N, C, vocab_start, V);
  }
  static void cross_entropy_shard_max(float* row_max, const T* logits, int N, int V) {
    cpu::cross_entropy_shard_max<T>(row_max, logits, N, V);
  }
  static void cross_entropy_shard_sums(float* packed, const T* logits, const float* row_max,
                                       const int32_t* targets, int N, int V, int vocab_start) {
    cpu::cross_entropy_shard_sums<T>(packed, logits, row_max, targets, N, V, vocab_start);
  }
  static void cross_entropy_shard_finish(float* losses, float* lse, const float* row_max,
                                         const float* packed, const int32_t* targets, int N) {
    cpu::cross_entropy_shard_finish<T>(losses, lse, row_max, packed, targets, N);
  }
  static void cross_entropy_shard_backward(T* dlogits, const T* logits, const float* lse,
                                           const int32_t* targets, const float* dloss, int N, int V,
                                           int vocab_start) {
    cpu::cross_entropy_shard_backward<T>(dlogits, logits, lse, targets, dloss, N, V, vocab_start);
  }
  static void add_inplace(T* y, const T* x, int64_t n) { cpu::add_inplace<T>(y, x, n); }
  static void scale_inplace(float* y, float alpha, int64_t n) {
    cpu::scale_inplace<float>(y, alpha, n);
  }
  static double sum_squares(const float* x, int64_t n) { return cpu::sum_squares<float>(x, n); }
  static void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float lr,
                           float b1, float b2, float eps, float wd, int step) {
    cpu::adamw_update(p, g, m, v, n, lr, b1, b2, eps, wd, step);
  }

  // ---- mixture of experts ----
  static constexpr int kMoeMaxTopK = kernels::kMoeMaxTopK;
  static void moe_router_forward(float* probs, float* lse, int32_t* expert, float* weight,
                                 int32_t* counts, double* prob_sum, double* lse_sq_sum,
                                 const float* logits, int N, int E, int k) {
    cpu::moe_router_forward<float>(probs, lse, expert, weight, counts, prob_sum, lse_sq_sum, logits,
                                   N, E, k);
  }
  static void moe_router_backward(float* dlogits, const float* dweight, const float* probs,
                                  const float* lse, const int32_t* expert, const float* weight,
                                  const int32_t* counts, int64_t tokens_all, float aux_coef,
                                  float z_coef, float loss_scale, int N, int E, int k) {
    cpu::moe_router_backward<float>(dlogits, dweight, probs, lse, expert, weight, counts,
                                    tokens_all, aux_coef, z_coef, loss_scale, N, E, k);
  }
  static void moe_permute(T* xp, int32_t* offsets, int32_t* row_of, const T* x,
                          const int32_t* expert, const int32_t* counts, int N, int k, int E,
                          int C) {
    cpu::moe_permute<T>(xp, offsets, row_of, x, expert, counts, N, k, E, C);
  }
  static void moe_permute_backward(T* dx, const T* dxp, const int32_t* row_of, int N, int k,
                                   int C) {
    cpu::moe_permute_backward<T>(dx, dxp, row_of, N, k, C);
  }
  static void moe_unpermute(T* y, const T* yp, const float* weight, const int32_t* row_of, int N,
                            int k, int C) {
    cpu::moe_unpermute<T>(y, yp, weight, row_of, N, k, C);
  }
  static void moe_unpermute_backward(T* dyp, float* dweight, const T* dy, const T* yp,
                                     const float* weight, const int32_t* row_of, int N, int k,
                                     int C) {
    cpu::moe_unpermute_backward<T>(dyp, dweight, dy, yp, weight, row_of, N, k, C);
  }
  static void grouped_linear_forward(T* out, const T* in, const T* w, const int32_t* offsets_host,
                                     int E, int C, int OC) {
    cpu::grouped_linear_forward<T>(out, in, w, offsets_host, E, C, OC);
  }
  static void grouped_linear_backward(T* din, float* dw, const T* dout, const T* in, const T* w,
                                      const int32_t* offsets_host, int E, int C, int OC) {
    cpu::grouped_linear_backward<T>(din, dw, dout, in, w, offsets_host, E, C, OC);
  }
  // capacity dropping and the LSH-compressed dispatch (contracts in kernels/cpu/ops.h)
  static void moe_capacity(int32_t* expert_kept, float* weight_kept, int32_t* counts_kept,
                           int32_t* dropped, const int32_t* expert, const float* weight, int N,
                           int k, int E, int64_t cap) {
    cpu::moe_capacity(expert_kept, weight_kept, counts_kept, dropped, expert, weight, N, k, E, cap);
  }
  static void lsh_hash(uint64_t* ids, const T* x, const float* rot, const T* mu,
                       const int32_t* mu_row, int64_t n, int C, int L, int r) {
    cpu::lsh_hash<T>(ids, x, rot, mu, mu_row, n, C, L, r);
  }
  static void lsh_bucket(int32_t* pos, int32_t* nbuckets, int32_t* scratch, const uint64_t* ids,
                         const int32_t* codes, const int32_t* offsets, int G, int64_t n, int L,
                         int r) {
    cpu::lsh_bucket(pos, nbuckets, scratch, ids, codes, offsets, G, n, L, r);
  }
  static void lsh_bucket_reduce(T* out, int32_t* count, double* acc, const T* x, const int32_t* pos,
                                const int32_t* offsets, int G, int64_t B, int C, bool mean) {
    cpu::lsh_bucket_reduce<T>(out, count, acc, x, pos, offsets, G, B, C, mean);
  }
  static void lsh_expand(T* yp, const T* yc, const T* xp, const T* xc, const int32_t* pos,
                         int64_t n, int C, bool compensate) {
    cpu::lsh_expand<T>(yp, yc, xp, xc, pos, n, C, compensate);
  }
  static void lsh_expand_backward(T* dxp, const T* dxc, const T* dyc, const T* dyp,
                                  const int32_t* pos, const int32_t* count, int64_t n, int C,
                                  bool compensate) {
    cpu::lsh_expand_backward<T>(dxp, dxc, dyc, dyp, pos, count, n, C, compensate);
  }
  // The router's input-gradient GEMM reads the fp32 logit gradient directly.
  static const T* router_grad_operand(T*, const float* dlogits, int64_t) { return dlogits; }
};

}  // namespace grove
