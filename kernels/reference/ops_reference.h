// Plain scalar reference implementations of every kernel of kernels/cpu/ops.h and
// kernels/cuda/ops.h (same names and argument lists, host pointers, no stream; namespace
// grove::ref). Single-threaded, no BLAS, straightforward loops that follow the math; sums are
// accumulated in double and rounded once. The tests of both back ends compare the kernels with
// these (the GPU tests at T = double from fp32 or bf16 inputs), and the references themselves are
// checked against finite differences (tests/kernels). Dependency free (the standard library and
// kernels/kernel_types.h only), so the GPU tests link it without OpenBLAS, MPI or grove_core.
//
// Attention here materialises the full score row per query (O(SK) memory per row) and uses the
// same backward contract as the fast kernel (P = exp(S*scale - lse), D from the given out/dout).
#pragma once

#include <cstdint>

#include "kernels/kernel_types.h"

namespace grove::ref {

using kernels::acc_t;
using kernels::AttentionShape;

template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc);

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC);
template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int N, int C, int OC);

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C, float eps);
template <typename T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C);

void rope_table(float* cos_table, float* sin_table, int max_pos, int HD, float theta);
template <typename T>
void rope_forward(T* x, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                  int HD, int pos0);
template <typename T>
void rope_backward(T* dx, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                   int HD, int pos0);

template <typename T>
void attention_forward(T* out, T* lse, T* probs, const T* q, const T* k, const T* v,
                       const AttentionShape& shape);
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, const T* probs, const AttentionShape& shape);

// Merge of partial attention results (contracts in kernels/cpu/ops.h), in double.
template <typename T>
void attention_merge(T* out, acc_t<T>* lse, const T* part_out, const acc_t<T>* part_lse, int SQ,
                     int B, int NH, int HD, int row0, int SQp);
template <typename T>
void attention_merge_scale(T* num, acc_t<T>* den, const T* out, const acc_t<T>* lse,
                           const acc_t<T>* lse_max, int SQ, int B, int NH, int HD);
template <typename T>
void attention_merge_finish(T* out, acc_t<T>* lse, const T* num, const acc_t<T>* den,
                            const acc_t<T>* lse_max, int SQ, int B, int NH, int HD);

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n);
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n);

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int N, int C);
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int N, int C);

template <typename T>
void cross_entropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets, int N,
                           int V);
template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets,
                            const T* dloss, int N, int V);

// Vocabulary shard (ids [vocab_start, vocab_start + V)): kernels/cpu/ops.h documents them.
template <typename T>
void embedding_forward_shard(T* out, const int32_t* tokens, const T* table, int N, int C,
                             int vocab_start, int V);
template <typename T>
void embedding_backward_shard(acc_t<T>* dtable, const T* dout, const int32_t* tokens, int N, int C,
                              int vocab_start, int V);
template <typename T>
void cross_entropy_shard_max(acc_t<T>* row_max, const T* logits, int N, int V);
template <typename T>
void cross_entropy_shard_sums(acc_t<T>* packed, const T* logits, const acc_t<T>* row_max,
                              const int32_t* targets, int N, int V, int vocab_start);
template <typename T>
void cross_entropy_shard_finish(acc_t<T>* losses, acc_t<T>* lse, const acc_t<T>* row_max,
                                const acc_t<T>* packed, const int32_t* targets, int N);
template <typename T>
void cross_entropy_shard_backward(T* dlogits, const T* logits, const acc_t<T>* lse,
                                  const int32_t* targets, const acc_t<T>* dloss, int N, int V,
                                  int vocab_start);

template <typename T>
void add_inplace(T* y, const T* x, int64_t n);
template <typename T>
void scale_inplace(T* y, T alpha, int64_t n);
template <typename T>
double sum_squares(const T* x, int64_t n);

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step);

// ---- Mixture of experts (one process; contracts in kernels/cpu/ops.h) ---------------------------
// Route: top-k by a strict-> scan (a tie to the lower id), softmax and lse in double.
template <typename A>
void moe_router_forward(A* probs, A* lse, int32_t* expert, A* weight, int32_t* counts,
                        double* prob_sum, double* lse_sq_sum, const A* logits, int N, int E, int k);
template <typename A>
void moe_router_backward(A* dlogits, const A* dweight, const A* probs, const A* lse,
                         const int32_t* expert, const A* weight, const int32_t* counts,
                         int64_t tokens_all, double aux_coef, double z_coef, double loss_scale,
                         int N, int E, int k);
// aux + z of a routing over tokens_all tokens, in double: α·E·Σ_i f_i·P_i + β·lse_sq_sum / T_all.
double moe_router_aux_z(const int32_t* counts, const double* prob_sum, double lse_sq_sum,
                        int64_t tokens_all, int E, int k, double aux_coef, double z_coef);
template <typename T>
void moe_permute(T* xp, int32_t* offsets, int32_t* row_of, const T* x, const int32_t* expert,
                 const int32_t* counts, int N, int k, int E, int C);
template <typename T>
void moe_permute_backward(T* dx, const T* dxp, const int32_t* row_of, int N, int k, int C);
template <typename T>
void moe_unpermute(T* y, const T* yp, const acc_t<T>* weight, const int32_t* row_of, int N, int k,
                   int C);
template <typename T>
void moe_unpermute_backward(T* dyp, acc_t<T>* dweight, const T* dy, const T* yp,
                            const acc_t<T>* weight, const int32_t* row_of, int N, int k, int C);
template <typename T>
void grouped_linear_forward(T* out, const T* inp, const T* weight, const int32_t* offsets, int E,
                            int C, int OC);
template <typename T>
void grouped_linear_backward(T* dinp, acc_t<T>* dweight, const T* dout, const T* inp,
                             const T* weight, const int32_t* offsets, int E, int C, int OC);

// Capacity dropping and the LSH-compressed dispatch (contracts in kernels/cpu/ops.h). The
// bucketing here compares every row with every earlier row of its group (no hash map).
void moe_capacity(int32_t* expert_kept, float* weight_kept, int32_t* counts_kept, int32_t* dropped,
                  const int32_t* expert, const float* weight, int N, int k, int E, int64_t cap);
template <typename T>
void lsh_hash(uint64_t* ids, const T* x, const float* rot, const T* mu, const int32_t* mu_row,
              int64_t n, int C, int L, int r);
void lsh_bucket(int32_t* pos, int32_t* nbuckets, int32_t* scratch, const uint64_t* ids,
                const int32_t* codes, const int32_t* offsets, int G, int64_t n, int L, int r);
template <typename T>
void lsh_bucket_reduce(T* out, int32_t* count, double* acc, const T* x, const int32_t* pos,
                       const int32_t* offsets, int G, int64_t B, int C, bool mean);
template <typename T>
void lsh_expand(T* yp, const T* yc, const T* xp, const T* xc, const int32_t* pos, int64_t n, int C,
                bool compensate);
template <typename T>
void lsh_expand_backward(T* dxp, const T* dxc, const T* dyc, const T* dyp, const int32_t* pos,
                         const int32_t* count, int64_t n, int C, bool compensate);

}  // namespace grove::ref
