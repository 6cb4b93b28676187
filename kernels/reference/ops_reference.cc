// Scalar reference kernels (see ops_reference.h). Legend as in kernels/cpu/ops.h.
#include "kernels/reference/ops_reference.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace grove::ref {

namespace {
using Acc = double;  // accumulator type of every sum in the reference
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc) {
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      Acc acc = 0;
      for (int p = 0; p < K; ++p) {
        const T a =
            trans_a ? A[static_cast<int64_t>(p) * lda + i] : A[static_cast<int64_t>(i) * lda + p];
        const T b =
            trans_b ? B[static_cast<int64_t>(j) * ldb + p] : B[static_cast<int64_t>(p) * ldb + j];
        acc += static_cast<Acc>(a) * b;
      }
      T& c = C[static_cast<int64_t>(i) * ldc + j];
      c = static_cast<T>(alpha * acc + (beta == T(0) ? Acc(0) : static_cast<Acc>(beta) * c));
    }
  }
}

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC) {
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      Acc acc = bias ? bias[o] : T(0);
      for (int c = 0; c < C; ++c) acc += static_cast<Acc>(inp[n * C + c]) * weight[o * C + c];
      out[n * OC + o] = static_cast<T>(acc);
    }
  }
}

template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int N, int C, int OC) {
  if (dinp) {
    for (int n = 0; n < N; ++n) {
      for (int c = 0; c < C; ++c) {
        Acc acc = 0;
        for (int o = 0; o < OC; ++o) acc += static_cast<Acc>(dout[n * OC + o]) * weight[o * C + c];
        dinp[n * C + c] += static_cast<T>(acc);
      }
    }
  }
  for (int o = 0; o < OC; ++o) {
    for (int c = 0; c < C; ++c) {
      Acc acc = 0;
      for (int n = 0; n < N; ++n) acc += static_cast<Acc>(dout[n * OC + o]) * inp[n * C + c];
      dweight[o * C + c] += static_cast<T>(acc);
    }
  }
  if (dbias) {
    for (int o = 0; o < OC; ++o) {
      Acc acc = 0;
      for (int n = 0; n < N; ++n) acc += dout[n * OC + o];
      dbias[o] += static_cast<T>(acc);
    }
  }
}

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C, float eps) {
  for (int n = 0; n < N; ++n) {
    Acc ss = 0;
    for (int c = 0; c < C; ++c) ss += static_cast<Acc>(inp[n * C + c]) * inp[n * C + c];
    const Acc r = 1.0 / std::sqrt(ss / C + static_cast<Acc>(eps));
    for (int c = 0; c < C; ++c) out[n * C + c] = static_cast<T>(inp[n * C + c] * r * weight[c]);
    rstd[n] = static_cast<T>(r);
  }
}

template <typename T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C) {
  for (int n = 0; n < N; ++n) {
    const Acc r = rstd[n];
    Acc dot = 0;  // sum_c dout * weight * x
    for (int c = 0; c < C; ++c)
      dot += static_cast<Acc>(dout[n * C + c]) * weight[c] * inp[n * C + c];
    for (int c = 0; c < C; ++c) {
      const Acc x = inp[n * C + c], g = static_cast<Acc>(dout[n * C + c]) * weight[c];
      dinp[n * C + c] += static_cast<T>(r * g - x * r * r * r * dot / C);
      dweight[c] += static_cast<T>(dout[n * C + c] * x * r);
    }
  }
}

void rope_table(float* cos_table, float* sin_table, int max_pos, int HD, float theta) {
  const int half = HD / 2;
  for (int p = 0; p < max_pos; ++p) {
    for (int i = 0; i < half; ++i) {
      const double angle = p * std::pow(static_cast<double>(theta), -2.0 * i / HD);
      cos_table[p * half + i] = static_cast<float>(std::cos(angle));
      sin_table[p * half + i] = static_cast<float>(std::sin(angle));
    }
  }
}

template <typename T>
void rope_forward(T* x, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                  int HD, int pos0) {
  const int half = HD / 2;
  for (int s = 0; s < S; ++s) {
    for (int bh = 0; bh < B * NHx; ++bh) {
      T* row = x + (static_cast<int64_t>(s) * B * NHx + bh) * HD;
      for (int i = 0; i < half; ++i) {
        const T c = cos_table[(pos0 + s) * half + i], sn = sin_table[(pos0 + s) * half + i];
        const T x1 = row[i], x2 = row[i + half];
        row[i] = x1 * c - x2 * sn;
        row[i + half] = x2 * c + x1 * sn;
      }
    }
  }
}

template <typename T>
void rope_backward(T* dx, const float* cos_table, const float* sin_table, int S, int B, int NHx,
                   int HD, int pos0) {
  const int half = HD / 2;
  for (int s = 0; s < S; ++s) {
    for (int bh = 0; bh < B * NHx; ++bh) {
      T* row = dx + (static_cast<int64_t>(s) * B * NHx + bh) * HD;
      for (int i = 0; i < half; ++i) {
        const T c = cos_table[(pos0 + s) * half + i], sn = sin_table[(pos0 + s) * half + i];
        const T g1 = row[i], g2 = row[i + half];
        row[i] = g1 * c + g2 * sn;  // transpose of [[c, -s], [s, c]]
        row[i + half] = g2 * c - g1 * sn;
      }
    }
  }
}

namespace {
bool visible(const AttentionShape& s, int i, int j) {
  return !s.causal || static_cast<int64_t>(s.k_pos0) + j <= static_cast<int64_t>(s.q_pos0) + i;
}
}  // namespace

template <typename T>
void attention_forward(T* out, T* lse, T* probs, const T* q, const T* k, const T* v,
                       const AttentionShape& s) {
  const int G = s.NH / s.NKV;
  const Acc scale = 1.0 / std::sqrt(static_cast<Acc>(s.HD));
  std::vector<Acc> score(s.SK);
  for (int b = 0; b < s.B; ++b) {
    for (int h = 0; h < s.NH; ++h) {
      const int kvh = h / G;
      for (int i = 0; i < s.SQ; ++i) {
        const T* qi = q + ((static_cast<int64_t>(i) * s.B + b) * s.NH + h) * s.HD;
        T* oi = out + ((static_cast<int64_t>(i) * s.B + b) * s.NH + h) * s.HD;
        Acc m = -INFINITY;
        for (int j = 0; j < s.SK; ++j) {
          const T* kj = k + ((static_cast<int64_t>(j) * s.B + b) * s.NKV + kvh) * s.HD;
          Acc dot = 0;
          for (int d = 0; d < s.HD; ++d) dot += static_cast<Acc>(qi[d]) * kj[d];
          score[j] = visible(s, i, j) ? dot * scale : -INFINITY;
          if (score[j] > m) m = score[j];
        }
        Acc sum = 0;
        for (int j = 0; j < s.SK; ++j) sum += std::isinf(score[j]) ? 0.0 : std::exp(score[j] - m);
        const int64_t row = (static_cast<int64_t>(b) * s.NH + h) * s.SQ + i;
        lse[row] = sum > 0 ? static_cast<T>(m + std::log(sum)) : static_cast<T>(-INFINITY);
        for (int d = 0; d < s.HD; ++d) oi[d] = 0;
        for (int j = 0; j < s.SK; ++j) {
          const Acc p = (sum > 0 && !std::isinf(score[j])) ? std::exp(score[j] - m) / sum : 0.0;
          if (probs) probs[row * s.SK + j] = static_cast<T>(p);
          const T* vj = v + ((static_cast<int64_t>(j) * s.B + b) * s.NKV + kvh) * s.HD;
          for (int d = 0; d < s.HD; ++d) oi[d] = static_cast<T>(oi[d] + p * vj[d]);
        }
      }
    }
  }
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, const T* probs, const AttentionShape& s) {
  const int G = s.NH / s.NKV;
  const Acc scale = 1.0 / std::sqrt(static_cast<Acc>(s.HD));
  for (int b = 0; b < s.B; ++b) {
    for (int h = 0; h < s.NH; ++h) {
      const int kvh = h / G;
      for (int i = 0; i < s.SQ; ++i) {
        const int64_t qo = ((static_cast<int64_t>(i) * s.B + b) * s.NH + h) * s.HD;
        const int64_t row = (static_cast<int64_t>(b) * s.NH + h) * s.SQ + i;
        const Acc l = lse[row];
        Acc D = 0;
        for (int d = 0; d < s.HD; ++d) D += static_cast<Acc>(dout[qo + d]) * out[qo + d];
        for (int j = 0; j < s.SK; ++j) {
          if (!visible(s, i, j) || std::isinf(l)) continue;
          const int64_t ko = ((static_cast<int64_t>(j) * s.B + b) * s.NKV + kvh) * s.HD;
          Acc p;
          if (probs) {
            p = probs[row * s.SK + j];
          } else {
            Acc dot = 0;
            for (int d = 0; d < s.HD; ++d) dot += static_cast<Acc>(q[qo + d]) * k[ko + d];
            p = std::exp(dot * scale - l);
          }
          Acc dp = 0;
          for (int d = 0; d < s.HD; ++d) dp += static_cast<Acc>(dout[qo + d]) * v[ko + d];
          const Acc ds = p * (dp - D);
          for (int d = 0; d < s.HD; ++d) {
            dv[ko + d] = static_cast<T>(dv[ko + d] + p * dout[qo + d]);
            dq[qo + d] = static_cast<T>(dq[qo + d] + scale * ds * k[ko + d]);
            dk[ko + d] = static_cast<T>(dk[ko + d] + scale * ds * q[qo + d]);
          }
        }
      }
    }
  }
}

namespace {
// Offset of row (b, h, i) of out [SQ, B, NH, HD].
int64_t out_row(int SQ, int B, int NH, int HD, int b, int h, int i) {
  (void)SQ;
  return ((static_cast<int64_t>(i) * B + b) * NH + h) * HD;
}
}  // namespace

template <typename T>
void attention_merge(T* out, acc_t<T>* lse, const T* part_out, const acc_t<T>* part_lse, int SQ,
                     int B, int NH, int HD, int row0, int SQp) {
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < SQp; ++i) {
        const int64_t bh = static_cast<int64_t>(b) * NH + h;
        acc_t<T>& la = lse[bh * SQ + row0 + i];
        const Acc l1 = la, l2 = part_lse[bh * SQp + i];
        const Acc m = std::max(l1, l2);
        if (std::isinf(m) && m < 0) continue;
        const Acc w1 = std::exp(l1 - m), w2 = std::exp(l2 - m);
        T* o1 = out + out_row(SQ, B, NH, HD, b, h, row0 + i);
        const T* o2 = part_out + out_row(SQp, B, NH, HD, b, h, i);
        for (int d = 0; d < HD; ++d) o1[d] = static_cast<T>((o1[d] * w1 + o2[d] * w2) / (w1 + w2));
        la = static_cast<acc_t<T>>(m + std::log(w1 + w2));
      }
}

template <typename T>
void attention_merge_scale(T* num, acc_t<T>* den, const T* out, const acc_t<T>* lse,
                           const acc_t<T>* lse_max, int SQ, int B, int NH, int HD) {
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < SQ; ++i) {
        const int64_t r = (static_cast<int64_t>(b) * NH + h) * SQ + i;
        const Acc l = lse[r];
        const Acc w = std::isinf(l) && l < 0 ? 0.0 : std::exp(l - static_cast<Acc>(lse_max[r]));
        den[r] = static_cast<acc_t<T>>(w);
        const int64_t o = out_row(SQ, B, NH, HD, b, h, i);
        for (int d = 0; d < HD; ++d) num[o + d] = static_cast<T>(out[o + d] * w);
      }
}

template <typename T>
void attention_merge_finish(T* out, acc_t<T>* lse, const T* num, const acc_t<T>* den,
                            const acc_t<T>* lse_max, int SQ, int B, int NH, int HD) {
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < SQ; ++i) {
        const int64_t r = (static_cast<int64_t>(b) * NH + h) * SQ + i;
        const Acc d = den[r];
        const int64_t o = out_row(SQ, B, NH, HD, b, h, i);
        for (int c = 0; c < HD; ++c) out[o + c] = static_cast<T>(d > 0 ? num[o + c] / d : 0.0);
        lse[r] = static_cast<acc_t<T>>(d > 0 ? lse_max[r] + std::log(d) : -INFINITY);
      }
}

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const Acc g = gate[i], sig = 1.0 / (1.0 + std::exp(-g));
    out[i] = static_cast<T>(g * sig * up[i]);
  }
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const Acc g = gate[i], sig = 1.0 / (1.0 + std::exp(-g));
    dgate[i] += static_cast<T>(dout[i] * up[i] * (sig + g * sig * (1.0 - sig)));
    dup[i] += static_cast<T>(dout[i] * g * sig);
  }
}

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int N, int C) {
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) out[n * C + c] = table[static_cast<int64_t>(tokens[n]) * C + c];
}

template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int N, int C) {
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) dtable[static_cast<int64_t>(tokens[n]) * C + c] += dout[n * C + c];
}

template <typename T>
void cross_entropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets, int N,
                           int V) {
  for (int n = 0; n < N; ++n) {
    const T* row = logits + static_cast<int64_t>(n) * V;
    Acc m = -INFINITY;
    for (int j = 0; j < V; ++j) m = row[j] > m ? row[j] : m;
    Acc sum = 0;
    for (int j = 0; j < V; ++j) sum += std::exp(row[j] - m);
    const Acc l = m + std::log(sum);
    lse[n] = static_cast<T>(l);
    losses[n] = targets[n] < 0 ? T(0) : static_cast<T>(l - row[targets[n]]);
  }
}

template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets,
                            const T* dloss, int N, int V) {
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < V; ++j) {
      const int64_t idx = static_cast<int64_t>(n) * V + j;
      if (targets[n] < 0) {
        dlogits[idx] = 0;
        continue;
      }
      const Acc p = std::exp(static_cast<Acc>(logits[idx]) - lse[n]);
      dlogits[idx] = static_cast<T>((p - (j == targets[n] ? 1.0 : 0.0)) * dloss[n]);
    }
  }
}

namespace {
// The shard-local id of a global id, or -1 when the shard [vocab_start, vocab_start + V) does not
// own it.
int shard_id(int32_t id, int vocab_start, int V) {
  const int64_t local = int64_t{id} - vocab_start;
  return id >= 0 && local >= 0 && local < V ? static_cast<int>(local) : -1;
}
}  // namespace

template <typename T>
void embedding_forward_shard(T* out, const int32_t* tokens, const T* table, int N, int C,
                             int vocab_start, int V) {
  for (int n = 0; n < N; ++n) {
    const int id = shard_id(tokens[n], vocab_start, V);
    for (int c = 0; c < C; ++c)
      out[int64_t{n} * C + c] = id >= 0 ? table[int64_t{id} * C + c] : T(0);
  }
}

template <typename T>
void embedding_backward_shard(acc_t<T>* dtable, const T* dout, const int32_t* tokens, int N, int C,
                              int vocab_start, int V) {
  for (int n = 0; n < N; ++n) {
    const int id = shard_id(tokens[n], vocab_start, V);
    if (id < 0) continue;
    for (int c = 0; c < C; ++c) dtable[int64_t{id} * C + c] += dout[int64_t{n} * C + c];
  }
}

template <typename T>
void cross_entropy_shard_max(acc_t<T>* row_max, const T* logits, int N, int V) {
  for (int n = 0; n < N; ++n) {
    Acc m = -INFINITY;
    for (int j = 0; j < V; ++j) m = std::max<Acc>(m, logits[int64_t{n} * V + j]);
    row_max[n] = static_cast<acc_t<T>>(m);
  }
}

template <typename T>
void cross_entropy_shard_sums(acc_t<T>* packed, const T* logits, const acc_t<T>* row_max,
                              const int32_t* targets, int N, int V, int vocab_start) {
  for (int n = 0; n < N; ++n) {
    const T* row = logits + int64_t{n} * V;
    Acc sum = 0;
    for (int j = 0; j < V; ++j) sum += std::exp(static_cast<Acc>(row[j]) - row_max[n]);
    packed[n] = static_cast<acc_t<T>>(sum);
    const int id = shard_id(targets[n], vocab_start, V);
    packed[N + n] = id >= 0 ? static_cast<acc_t<T>>(row[id]) : acc_t<T>(0);
  }
}

template <typename T>
void cross_entropy_shard_finish(acc_t<T>* losses, acc_t<T>* lse, const acc_t<T>* row_max,
                                const acc_t<T>* packed, const int32_t* targets, int N) {
  for (int n = 0; n < N; ++n) {
    const Acc l = static_cast<Acc>(row_max[n]) + std::log(static_cast<Acc>(packed[n]));
    lse[n] = static_cast<acc_t<T>>(l);
    losses[n] = targets[n] >= 0 ? static_cast<acc_t<T>>(l - packed[N + n]) : acc_t<T>(0);
  }
}

template <typename T>
void cross_entropy_shard_backward(T* dlogits, const T* logits, const acc_t<T>* lse,
                                  const int32_t* targets, const acc_t<T>* dloss, int N, int V,
                                  int vocab_start) {
  for (int n = 0; n < N; ++n) {
    const Acc scale = targets[n] >= 0 ? static_cast<Acc>(dloss[n]) : 0.0;
    const int id = shard_id(targets[n], vocab_start, V);
    for (int j = 0; j < V; ++j) {
      const int64_t idx = int64_t{n} * V + j;
      const Acc p = std::exp(static_cast<Acc>(logits[idx]) - lse[n]);
      dlogits[idx] = static_cast<T>((p - (j == id ? 1.0 : 0.0)) * scale);
    }
  }
}

template <typename T>
void add_inplace(T* y, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template <typename T>
void scale_inplace(T* y, T alpha, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= alpha;
}

template <typename T>
double sum_squares(const T* x, int64_t n) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(x[i]) * x[i];
  return total;
}

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), step);
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), step);
  for (int64_t i = 0; i < n; ++i) {
    const double g = grad[i];
    const double mi = beta1 * static_cast<double>(m[i]) + (1.0 - beta1) * g;
    const double vi = beta2 * static_cast<double>(v[i]) + (1.0 - beta2) * g * g;
    m[i] = static_cast<float>(mi);
    v[i] = static_cast<float>(vi);
    const double update = (mi / bc1) / (std::sqrt(vi / bc2) + eps);
    param[i] =
        static_cast<float>(param[i] - lr * (update + weight_decay * static_cast<double>(param[i])));
  }
}

#define GROVE_INSTANTIATE(T)                                                                      \
  template void gemm<T>(bool, bool, int, int, int, T, const T*, int, const T*, int, T, T*, int);  \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int, int, int);               \
  template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int);      \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int, int, float);                  \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int, int);    \
  template void rope_forward<T>(T*, const float*, const float*, int, int, int, int, int);         \
  template void rope_backward<T>(T*, const float*, const float*, int, int, int, int, int);        \
  template void attention_forward<T>(T*, T*, T*, const T*, const T*, const T*,                    \
                                     const AttentionShape&);                                      \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,         \
                                      const T*, const T*, const T*, const AttentionShape&);       \
  template void attention_merge<T>(T*, acc_t<T>*, const T*, const acc_t<T>*, int, int, int, int,  \
                                   int, int);                                                     \
  template void attention_merge_scale<T>(T*, acc_t<T>*, const T*, const acc_t<T>*,                \
                                         const acc_t<T>*, int, int, int, int);                    \
  template void attention_merge_finish<T>(T*, acc_t<T>*, const T*, const acc_t<T>*,               \
                                          const acc_t<T>*, int, int, int, int);                   \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t);                               \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);                \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int, int);                     \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int, int);                    \
  template void cross_entropy_forward<T>(T*, T*, const T*, const int32_t*, int, int);             \
  template void cross_entropy_backward<T>(T*, const T*, const T*, const int32_t*, const T*, int,  \
                                          int);                                                   \
  template void embedding_forward_shard<T>(T*, const int32_t*, const T*, int, int, int, int);     \
  template void embedding_backward_shard<T>(acc_t<T>*, const T*, const int32_t*, int, int, int,   \
                                            int);                                                 \
  template void cross_entropy_shard_max<T>(acc_t<T>*, const T*, int, int);                        \
  template void cross_entropy_shard_sums<T>(acc_t<T>*, const T*, const acc_t<T>*, const int32_t*, \
                                            int, int, int);                                       \
  template void cross_entropy_shard_finish<T>(acc_t<T>*, acc_t<T>*, const acc_t<T>*,              \
                                              const acc_t<T>*, const int32_t*, int);              \
  template void cross_entropy_shard_backward<T>(T*, const T*, const acc_t<T>*, const int32_t*,    \
                                                const acc_t<T>*, int, int, int);                  \
  template void add_inplace<T>(T*, const T*, int64_t);                                            \
  template void scale_inplace<T>(T*, T, int64_t);                                                 \
  template double sum_squares<T>(const T*, int64_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

// ---- Mixture of experts -----------------------------------------------------------------------

template <typename A>
void moe_router_forward(A* probs, A* lse, int32_t* expert, A* weight, int32_t* counts,
                        double* prob_sum, double* lse_sq_sum, const A* logits, int N, int E,
                        int k) {
  std::fill(counts, counts + E, 0);
  std::fill(prob_sum, prob_sum + E, 0.0);
  *lse_sq_sum = 0;
  std::vector<double> p(E);
  for (int n = 0; n < N; ++n) {
    const A* x = logits + static_cast<int64_t>(n) * E;
    int32_t* ex = expert + static_cast<int64_t>(n) * k;
    for (int j = 0; j < k; ++j) {  // strict >: a tie keeps the lower id
      int best = -1;
      for (int e = 0; e < E; ++e) {
        bool taken = false;
        for (int i = 0; i < j; ++i) taken = taken || ex[i] == e;
        if (!taken && (best < 0 || x[e] > x[best])) best = e;
      }
      ex[j] = best;
    }
    Acc m = -INFINITY, s = 0;
    for (int e = 0; e < E; ++e) m = std::max<Acc>(m, x[e]);
    for (int e = 0; e < E; ++e) s += std::exp(static_cast<Acc>(x[e]) - m);
    const Acc l = m + std::log(s);
    lse[n] = static_cast<A>(l);
    *lse_sq_sum += l * l;
    for (int e = 0; e < E; ++e) {
      p[e] = std::exp(static_cast<Acc>(x[e]) - l);
      probs[static_cast<int64_t>(n) * E + e] = static_cast<A>(p[e]);
      prob_sum[e] += p[e];
    }
    Acc S = 0;
    for (int j = 0; j < k; ++j) S += p[ex[j]];
    for (int j = 0; j < k; ++j) {
      weight[static_cast<int64_t>(n) * k + j] = static_cast<A>(k == 1 ? p[ex[j]] : p[ex[j]] / S);
      ++counts[ex[j]];
    }
  }
}

template <typename A>
void moe_router_backward(A* dlogits, const A* dweight, const A* probs, const A* lse,
                         const int32_t* expert, const A* weight, const int32_t* counts,
                         int64_t tokens_all, double aux_coef, double z_coef, double loss_scale,
                         int N, int E, int k) {
  const Acc T_all = static_cast<Acc>(tokens_all);
  std::vector<Acc> d(E);
  for (int n = 0; n < N; ++n) {
    const A* p = probs + static_cast<int64_t>(n) * E;
    const int32_t* ex = expert + static_cast<int64_t>(n) * k;
    const A* w = weight + static_cast<int64_t>(n) * k;
    const A* dw = dweight + static_cast<int64_t>(n) * k;
    // dL/dp_e: the aux term, then the combine weights (w_j = p_{e_j} / S, or p_{e_0} for k = 1).
    for (int e = 0; e < E; ++e)
      d[e] = loss_scale * aux_coef * E * (counts[e] / (T_all * k)) / T_all;
    if (k == 1) {
      d[ex[0]] += dw[0];
    } else {
      Acc S = 0, dot = 0;
      for (int j = 0; j < k; ++j) {
        S += p[ex[j]];
        dot += static_cast<Acc>(dw[j]) * w[j];
      }
      for (int j = 0; j < k; ++j) d[ex[j]] += (dw[j] - dot) / S;
    }
    Acc s = 0;
    for (int e = 0; e < E; ++e) s += d[e] * p[e];
    const Acc dz = loss_scale * z_coef * 2.0 / T_all;  // d(lse²)/dlogit_e = 2·lse·p_e
    for (int e = 0; e < E; ++e)
      dlogits[static_cast<int64_t>(n) * E + e] =
          static_cast<A>(p[e] * (d[e] - s) + dz * static_cast<Acc>(lse[n]) * p[e]);
  }
}

double moe_router_aux_z(const int32_t* counts, const double* prob_sum, double lse_sq_sum,
                        int64_t tokens_all, int E, int k, double aux_coef, double z_coef) {
  if (tokens_all <= 0) return 0.0;
  const double T_all = static_cast<double>(tokens_all);
  double aux = 0;
  for (int e = 0; e < E; ++e) aux += counts[e] / (T_all * k) * prob_sum[e] / T_all;
  return aux_coef * E * aux + z_coef * lse_sq_sum / T_all;
}

template <typename T>
void moe_permute(T* xp, int32_t* offsets, int32_t* row_of, const T* x, const int32_t* expert,
                 const int32_t* counts, int N, int k, int E, int C) {
  offsets[0] = 0;
  for (int e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
  std::vector<int32_t> cursor(offsets, offsets + E);
  const int64_t A = static_cast<int64_t>(N) * k;
  for (int64_t a = 0; a < A; ++a) row_of[a] = cursor[expert[a]]++;
  for (int64_t a = 0; a < A; ++a)
    for (int c = 0; c < C; ++c) xp[static_cast<int64_t>(row_of[a]) * C + c] = x[(a / k) * C + c];
}

template <typename T>
void moe_permute_backward(T* dx, const T* dxp, const int32_t* row_of, int N, int k, int C) {
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      Acc acc = dx[static_cast<int64_t>(n) * C + c];
      for (int j = 0; j < k; ++j)
        acc += dxp[static_cast<int64_t>(row_of[static_cast<int64_t>(n) * k + j]) * C + c];
      dx[static_cast<int64_t>(n) * C + c] = static_cast<T>(acc);
    }
}

template <typename T>
void moe_unpermute(T* y, const T* yp, const acc_t<T>* weight, const int32_t* row_of, int N, int k,
                   int C) {
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      Acc acc = 0;
      for (int j = 0; j < k; ++j) {
        const int64_t a = static_cast<int64_t>(n) * k + j;
        acc += static_cast<Acc>(weight[a]) * yp[static_cast<int64_t>(row_of[a]) * C + c];
      }
      y[static_cast<int64_t>(n) * C + c] = static_cast<T>(acc);
    }
}

template <typename T>
void moe_unpermute_backward(T* dyp, acc_t<T>* dweight, const T* dy, const T* yp,
                            const acc_t<T>* weight, const int32_t* row_of, int N, int k, int C) {
  for (int64_t a = 0; a < static_cast<int64_t>(N) * k; ++a) {
    const int64_t n = a / k, row = row_of[a];
    Acc dot = 0;
    for (int c = 0; c < C; ++c) {
      dot += static_cast<Acc>(dy[n * C + c]) * yp[row * C + c];
      dyp[row * C + c] = static_cast<T>(static_cast<Acc>(weight[a]) * dy[n * C + c]);
    }
    dweight[a] = static_cast<acc_t<T>>(dot);
  }
}

template <typename T>
void grouped_linear_forward(T* out, const T* inp, const T* weight, const int32_t* offsets, int E,
                            int C, int OC) {
  for (int e = 0; e < E; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int o = 0; o < OC; ++o) {
        Acc acc = 0;
        for (int c = 0; c < C; ++c)
          acc +=
              static_cast<Acc>(inp[r * C + c]) * weight[(static_cast<int64_t>(e) * OC + o) * C + c];
        out[r * OC + o] = static_cast<T>(acc);
      }
}

template <typename T>
void grouped_linear_backward(T* dinp, acc_t<T>* dweight, const T* dout, const T* inp,
                             const T* weight, const int32_t* offsets, int E, int C, int OC) {
  for (int e = 0; e < E; ++e) {
    const int64_t slab = static_cast<int64_t>(e) * OC * C;
    if (dinp) {
      for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
        for (int c = 0; c < C; ++c) {
          Acc acc = 0;
          for (int o = 0; o < OC; ++o)
            acc +=
                static_cast<Acc>(dout[r * OC + o]) * weight[slab + static_cast<int64_t>(o) * C + c];
          dinp[r * C + c] = static_cast<T>(dinp[r * C + c] + acc);
        }
    }
    for (int o = 0; o < OC; ++o)
      for (int c = 0; c < C; ++c) {
        Acc acc = 0;
        for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
          acc += static_cast<Acc>(dout[r * OC + o]) * inp[r * C + c];
        acc_t<T>& dw = dweight[slab + static_cast<int64_t>(o) * C + c];
        dw = static_cast<acc_t<T>>(dw + acc);
      }
  }
}

#define GROVE_INSTANTIATE_MOE(T)                                                                   \
  template void moe_router_forward<T>(T*, T*, int32_t*, T*, int32_t*, double*, double*, const T*,  \
                                      int, int, int);                                              \
  template void moe_router_backward<T>(T*, const T*, const T*, const T*, const int32_t*, const T*, \
                                       const int32_t*, int64_t, double, double, double, int, int,  \
                                       int);                                                       \
  template void moe_permute<T>(T*, int32_t*, int32_t*, const T*, const int32_t*, const int32_t*,   \
                               int, int, int, int);                                                \
  template void moe_permute_backward<T>(T*, const T*, const int32_t*, int, int, int);              \
  template void moe_unpermute<T>(T*, const T*, const acc_t<T>*, const int32_t*, int, int, int);    \
  template void moe_unpermute_backward<T>(T*, acc_t<T>*, const T*, const T*, const acc_t<T>*,      \
                                          const int32_t*, int, int, int);                          \
  template void grouped_linear_forward<T>(T*, const T*, const T*, const int32_t*, int, int, int);  \
  template void grouped_linear_backward<T>(T*, acc_t<T>*, const T*, const T*, const T*,            \
                                           const int32_t*, int, int, int);
GROVE_INSTANTIATE_MOE(float)
GROVE_INSTANTIATE_MOE(double)
#undef GROVE_INSTANTIATE_MOE

}  // namespace grove::ref

// ---- Capacity dropping and the LSH-compressed dispatch ------------------------------------------
namespace grove::ref {

void moe_capacity(int32_t* expert_kept, float* weight_kept, int32_t* counts_kept, int32_t* dropped,
                  const int32_t* expert, const float* weight, int N, int k, int E, int64_t cap) {
  for (int e = 0; e <= E; ++e) counts_kept[e] = 0;
  for (int e = 0; e < E; ++e) dropped[e] = 0;
  // Assignment (n, j) is kept when fewer than cap assignments to its expert come before it in
  // (slot, token) order.
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < k; ++j) {
      const int64_t a = int64_t(n) * k + j;
      const int32_t e = expert[a];
      int64_t before = 0;
      for (int j2 = 0; j2 <= j; ++j2)
        for (int n2 = 0; n2 < (j2 < j ? N : n); ++n2) before += expert[int64_t(n2) * k + j2] == e;
      const bool keep = before < cap;
      expert_kept[a] = keep ? e : E;
      weight_kept[a] = keep ? weight[a] : 0.0f;
      ++counts_kept[keep ? e : E];
      if (!keep) ++dropped[e];
    }
  }
}

template <typename T>
void lsh_hash(uint64_t* ids, const T* x, const float* rot, const T* mu, const int32_t* mu_row,
              int64_t n, int C, int L, int r) {
  std::vector<float> v(static_cast<size_t>(r));
  for (int64_t i = 0; i < n; ++i) {
    uint64_t id = 0, base = 1;
    for (int l = 0; l < L; ++l) {
      for (int o = 0; o < r; ++o) {
        float s = 0;  // fp32, c in order: the hash is defined by this rounding
        for (int c = 0; c < C; ++c) {
          float xc = float(x[i * C + c]);
          if (mu != nullptr) xc = xc - float(mu[int64_t(mu_row[i]) * C + c]);
          s = s + xc * rot[(int64_t(l) * r + o) * C + c];
        }
        v[o] = s;
      }
      int best = 0;
      for (int o = 1; o < r; ++o)
        if (std::fabs(v[o]) > std::fabs(v[best])) best = o;
      id += (2 * uint64_t(best) + (v[best] < 0 ? 1 : 0)) * base;
      base *= 2 * uint64_t(r);
    }
    ids[i] = id;
  }
}

void lsh_bucket(int32_t* pos, int32_t* nbuckets, int32_t* /*scratch*/, const uint64_t* ids,
                const int32_t* codes, const int32_t* offsets, int G, int64_t /*n*/, int L, int r) {
  int32_t base = 0;
  for (int g = 0; g < G; ++g) {
    const int64_t lo = offsets[g], hi = offsets[g + 1];
    uint64_t mod = 0;  // 0: the whole id
    if (codes[g] > 0 && codes[g] < L) {
      mod = 1;
      for (int l = 0; l < codes[g]; ++l) mod *= 2 * uint64_t(r);
    }
    auto same = [&](int64_t i, int64_t j) {
      if (codes[g] == 0) return i == j;
      if (codes[g] < 0) return true;
      return mod ? ids[i] % mod == ids[j] % mod : ids[i] == ids[j];
    };
    int32_t B = 0;
    for (int64_t i = lo; i < hi; ++i) {
      int64_t f = lo;
      while (!same(f, i)) ++f;  // the bucket's first row
      if (f == i) {
        pos[i] = base + B++;
      } else {
        pos[i] = pos[f];
      }
    }
    nbuckets[g] = B;
    base += B;
  }
}

template <typename T>
void lsh_bucket_reduce(T* out, int32_t* count, double* /*acc*/, const T* x, const int32_t* pos,
                       const int32_t* offsets, int G, int64_t B, int C, bool mean) {
  for (int64_t b = 0; b < B; ++b) {
    int32_t nb = 0;
    for (int c = 0; c < C; ++c) {
      double s = 0;
      nb = 0;
      for (int64_t i = offsets[0]; i < offsets[G]; ++i)
        if (pos[i] == b) {
          s += double(x[i * C + c]);
          ++nb;
        }
      out[b * C + c] = T(mean ? s * (nb > 0 ? 1.0 / nb : 0.0) : s);
    }
    if (mean) count[b] = nb;
  }
}

template <typename T>
void lsh_expand(T* yp, const T* yc, const T* xp, const T* xc, const int32_t* pos, int64_t n, int C,
                bool compensate) {
  for (int64_t i = 0; i < n; ++i)
    for (int c = 0; c < C; ++c) {
      const int64_t b = pos[i];
      yp[i * C + c] = compensate ? yc[b * C + c] + (xp[i * C + c] - xc[b * C + c]) : yc[b * C + c];
    }
}

template <typename T>
void lsh_expand_backward(T* dxp, const T* dxc, const T* dyc, const T* dyp, const int32_t* pos,
                         const int32_t* count, int64_t n, int C, bool compensate) {
  for (int64_t i = 0; i < n; ++i)
    for (int c = 0; c < C; ++c) {
      const int64_t b = pos[i];
      const T inv = T(1) / T(count[b]);
      const T dc = dxc[b * C + c];
      T& d = dxp[i * C + c];
      if (count[b] == 1) {
        d = dc;
      } else if (compensate) {
        d = (dc - dyc[b * C + c]) * inv + dyp[i * C + c];
      } else {
        d = dc * inv;
      }
    }
}

#define GROVE_INSTANTIATE_LSH(T)                                                                  \
  template void lsh_hash<T>(uint64_t*, const T*, const float*, const T*, const int32_t*, int64_t, \
                            int, int, int);                                                       \
  template void lsh_bucket_reduce<T>(T*, int32_t*, double*, const T*, const int32_t*,             \
                                     const int32_t*, int, int64_t, int, bool);                    \
  template void lsh_expand<T>(T*, const T*, const T*, const T*, const int32_t*, int64_t, int,     \
                              bool);                                                              \
  template void lsh_expand_backward<T>(T*, const T*, const T*, const T*, const int32_t*,          \
                                       const int32_t*, int64_t, int, bool);
GROVE_INSTANTIATE_LSH(float)
GROVE_INSTANTIATE_LSH(double)
#undef GROVE_INSTANTIATE_LSH

}  // namespace grove::ref
