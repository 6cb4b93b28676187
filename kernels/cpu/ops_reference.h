// Plain scalar reference implementations of every kernel in ops.h (same signatures, namespace
// grove::cpu::ref). Single-threaded, no BLAS, straightforward loops that follow the math; sums
// are accumulated in double. Tests compare the fast kernels against these. Never deleted.
//
// Attention here materialises the full score row per query (O(SK) memory per row) and uses the
// same backward contract as the fast kernel (P = exp(S*scale - lse), D from the given out/dout).
#pragma once

#include <cstdint>

#include "kernels/cpu/ops.h"

namespace grove::cpu::ref {

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

template <typename T>
void add_inplace(T* y, const T* x, int64_t n);
template <typename T>
void scale_inplace(T* y, T alpha, int64_t n);
template <typename T>
double sum_squares(const T* x, int64_t n);

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step);

}  // namespace grove::cpu::ref
