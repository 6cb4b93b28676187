// Plain scalar references in double for the CUDA kernel tests. Kept free of OpenBLAS and of the
// CPU kernel library, so test_cuda_kernels links with the CUDA libraries alone.
// Same contracts as kernels/cpu/ops.h; backward references accumulate (+=).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cuda/ops.h"

namespace grove::cuda::ref {

using Vec = std::vector<double>;
constexpr double kInf = std::numeric_limits<double>::infinity();

// Row-major C[M,N] = alpha op(A) op(B) + beta C.
inline void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const Vec& A, int lda,
                 const Vec& B, int ldb, double beta, Vec& C, int ldc) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double acc = 0;
      for (int k = 0; k < K; ++k)
        acc += (ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k]) *
               (tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j]);
      double& c = C[size_t(i) * ldc + j];
      c = alpha * acc + (beta == 0 ? 0.0 : beta * c);
    }
}

inline void linear_forward(Vec& out, const Vec& inp, const Vec& w, const Vec* bias, int N, int C,
                           int OC) {
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double acc = bias ? (*bias)[o] : 0.0;
      for (int c = 0; c < C; ++c) acc += inp[size_t(n) * C + c] * w[size_t(o) * C + c];
      out[size_t(n) * OC + o] = acc;
    }
}
inline void linear_backward(Vec* dinp, Vec& dw, Vec* db, const Vec& dout, const Vec& inp,
                            const Vec& w, int N, int C, int OC) {
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double g = dout[size_t(n) * OC + o];
      if (db) (*db)[o] += g;
      for (int c = 0; c < C; ++c) {
        if (dinp) (*dinp)[size_t(n) * C + c] += g * w[size_t(o) * C + c];
        dw[size_t(o) * C + c] += g * inp[size_t(n) * C + c];
      }
    }
}

inline void rmsnorm_forward(Vec& out, Vec& rstd, const Vec& x, const Vec& w, int N, int C,
                            double eps) {
  for (int n = 0; n < N; ++n) {
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += x[size_t(n) * C + c] * x[size_t(n) * C + c];
    double r = 1.0 / std::sqrt(ss / C + eps);
    rstd[n] = r;
    for (int c = 0; c < C; ++c) out[size_t(n) * C + c] = x[size_t(n) * C + c] * r * w[c];
  }
}
inline void rmsnorm_backward(Vec& dx, Vec& dw, const Vec& dy, const Vec& x, const Vec& w,
                             const Vec& rstd, int N, int C) {
  for (int n = 0; n < N; ++n) {
    double r = rstd[n], dot = 0;
    for (int c = 0; c < C; ++c) dot += dy[size_t(n) * C + c] * w[c] * x[size_t(n) * C + c];
    for (int c = 0; c < C; ++c) {
      size_t i = size_t(n) * C + c;
      dx[i] += r * w[c] * dy[i] - x[i] * r * r * r * dot / C;
      dw[c] += dy[i] * x[i] * r;
    }
  }
}

inline void rope_table(Vec& cos_t, Vec& sin_t, int max_pos, int HD, double theta) {
  int half = HD / 2;
  for (int p = 0; p < max_pos; ++p)
    for (int i = 0; i < half; ++i) {
      double a = p * std::pow(theta, -2.0 * i / HD);
      cos_t[size_t(p) * half + i] = std::cos(a);
      sin_t[size_t(p) * half + i] = std::sin(a);
    }
}
// sign +1: forward rotation; -1: inverse (backward).
inline void rope(Vec& x, const Vec& cos_t, const Vec& sin_t, int S, int B, int NHx, int HD,
                 int pos0, double sign) {
  int half = HD / 2;
  for (int s = 0; s < S; ++s)
    for (int bh = 0; bh < B * NHx; ++bh)
      for (int i = 0; i < half; ++i) {
        size_t base = (size_t(s) * B * NHx + bh) * HD;
        double c = cos_t[size_t(pos0 + s) * half + i],
               sn = sign * sin_t[size_t(pos0 + s) * half + i];
        double a = x[base + i], b = x[base + i + half];
        x[base + i] = a * c - b * sn;
        x[base + i + half] = b * c + a * sn;
      }
}

inline bool visible(const AttentionShape& s, int i, int j) {
  return !s.causal || s.k_pos0 + j <= s.q_pos0 + i;
}
inline size_t qi(const AttentionShape& s, int i, int b, int h) {
  return ((size_t(i) * s.B + b) * s.NH + h) * s.HD;
}
inline size_t ki(const AttentionShape& s, int j, int b, int h) {
  return ((size_t(j) * s.B + b) * s.NKV + h) * s.HD;
}
inline double score(const AttentionShape& s, const Vec& q, const Vec& k, int i, int j, int b,
                    int h) {
  double dot = 0;
  for (int d = 0; d < s.HD; ++d)
    dot += q[qi(s, i, b, h) + d] * k[ki(s, j, b, h / (s.NH / s.NKV)) + d];
  return dot / std::sqrt(double(s.HD));
}

// out [SQ,B,NH,HD], lse [B,NH,SQ]; a row that sees no key: lse = -inf, out = 0.
inline void attention_forward(Vec& out, Vec& lse, const Vec& q, const Vec& k, const Vec& v,
                              const AttentionShape& s) {
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < s.SQ; ++i) {
        int hk = h / (s.NH / s.NKV);
        double m = -kInf;
        for (int j = 0; j < s.SK; ++j)
          if (visible(s, i, j)) m = std::max(m, score(s, q, k, i, j, b, h));
        double sum = 0;
        Vec o(s.HD, 0.0);
        if (m > -kInf)
          for (int j = 0; j < s.SK; ++j) {
            if (!visible(s, i, j)) continue;
            double p = std::exp(score(s, q, k, i, j, b, h) - m);
            sum += p;
            for (int d = 0; d < s.HD; ++d) o[d] += p * v[ki(s, j, b, hk) + d];
          }
        lse[(size_t(b) * s.NH + h) * s.SQ + i] = sum > 0 ? m + std::log(sum) : -kInf;
        for (int d = 0; d < s.HD; ++d) out[qi(s, i, b, h) + d] = sum > 0 ? o[d] / sum : 0.0;
      }
}

// dq, dk, dv += ...; out and lse may be combined ones (see ops.h).
inline void attention_backward(Vec& dq, Vec& dk, Vec& dv, const Vec& dout, const Vec& q,
                               const Vec& k, const Vec& v, const Vec& out, const Vec& lse,
                               const AttentionShape& s) {
  double scale = 1.0 / std::sqrt(double(s.HD));
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < s.SQ; ++i) {
        double L = lse[(size_t(b) * s.NH + h) * s.SQ + i];
        if (L == -kInf) continue;
        int hk = h / (s.NH / s.NKV);
        size_t qo = qi(s, i, b, h);
        double D = 0;
        for (int d = 0; d < s.HD; ++d) D += dout[qo + d] * out[qo + d];
        for (int j = 0; j < s.SK; ++j) {
          if (!visible(s, i, j)) continue;
          size_t ko = ki(s, j, b, hk);
          double p = std::exp(score(s, q, k, i, j, b, h) - L), dp = 0;
          for (int d = 0; d < s.HD; ++d) dp += dout[qo + d] * v[ko + d];
          double ds = p * (dp - D);
          for (int d = 0; d < s.HD; ++d) {
            dq[qo + d] += scale * ds * k[ko + d];
            dk[ko + d] += scale * ds * q[qo + d];
            dv[ko + d] += p * dout[qo + d];
          }
        }
      }
}

inline double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}
inline void swiglu_forward(Vec& out, const Vec& g, const Vec& u) {
  for (size_t i = 0; i < out.size(); ++i) out[i] = g[i] * sigmoid(g[i]) * u[i];
}
inline void swiglu_backward(Vec& dg, Vec& du, const Vec& dout, const Vec& g, const Vec& u) {
  for (size_t i = 0; i < dg.size(); ++i) {
    double sg = sigmoid(g[i]);
    dg[i] += dout[i] * u[i] * sg * (1 + g[i] * (1 - sg));
    du[i] += dout[i] * g[i] * sg;
  }
}

inline void cross_entropy_forward(Vec& losses, Vec& lse, const Vec& logits,
                                  const std::vector<int32_t>& t, int N, int V) {
  for (int n = 0; n < N; ++n) {
    double m = -kInf, s = 0;
    for (int v = 0; v < V; ++v) m = std::max(m, logits[size_t(n) * V + v]);
    for (int v = 0; v < V; ++v) s += std::exp(logits[size_t(n) * V + v] - m);
    lse[n] = m + std::log(s);
    losses[n] = t[n] < 0 ? 0.0 : lse[n] - logits[size_t(n) * V + t[n]];
  }
}
inline void cross_entropy_backward(Vec& dlogits, const Vec& logits, const Vec& lse,
                                   const std::vector<int32_t>& t, const Vec& dloss, int N, int V) {
  for (int n = 0; n < N; ++n)
    for (int v = 0; v < V; ++v) {
      size_t i = size_t(n) * V + v;
      dlogits[i] =
          t[n] < 0 ? 0.0 : (std::exp(logits[i] - lse[n]) - (v == t[n] ? 1.0 : 0.0)) * dloss[n];
    }
}

inline void adamw(Vec& p, const Vec& g, Vec& m, Vec& v, double lr, double b1, double b2, double eps,
                  double wd, int step) {
  for (size_t i = 0; i < p.size(); ++i) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    double mh = m[i] / (1 - std::pow(b1, step)), vh = v[i] / (1 - std::pow(b2, step));
    p[i] -= lr * (mh / (std::sqrt(vh) + eps) + wd * p[i]);
  }
}

// ---- Mixture of experts (one process): parallel/moe_router.cc and the single-rank
// AllToAllDispatcher / grouped experts, in double. Legend as in ops.h: N tokens, E experts, k
// slots, a = n·k + j.
struct MoeRoute {
  Vec probs, lse;               // [N,E], [N]
  std::vector<int32_t> expert;  // [N,k] top-k by logit, a tie to the lower id
  Vec weight;                   // [N,k] renormalised over the k when k > 1, p_e when k == 1
  std::vector<int32_t> counts;  // [E] assignments per expert
  Vec prob_sum;                 // [E] Σ_n p_{n,e}
  double lse_sq_sum = 0;        // Σ_n lse_n²
};
inline MoeRoute moe_router_forward(const Vec& logits, int N, int E, int k) {
  MoeRoute r;
  r.probs.assign(size_t(N) * E, 0.0);
  r.lse.assign(N, 0.0);
  r.expert.assign(size_t(N) * k, -1);
  r.weight.assign(size_t(N) * k, 0.0);
  r.counts.assign(E, 0);
  r.prob_sum.assign(E, 0.0);
  for (int n = 0; n < N; ++n) {
    const double* x = logits.data() + size_t(n) * E;
    int32_t* ex = r.expert.data() + size_t(n) * k;
    for (int j = 0; j < k; ++j) {  // the CPU router's scan: strict >, so a tie keeps the lower id
      int best = -1;
      for (int e = 0; e < E; ++e) {
        bool taken = false;
        for (int i = 0; i < j; ++i) taken = taken || ex[i] == e;
        if (!taken && (best < 0 || x[e] > x[best])) best = e;
      }
      ex[j] = best;
    }
    double m = -kInf, s = 0;
    for (int e = 0; e < E; ++e) m = std::max(m, x[e]);
    for (int e = 0; e < E; ++e) s += std::exp(x[e] - m);
    const double l = m + std::log(s);
    r.lse[n] = l;
    r.lse_sq_sum += l * l;
    double* p = r.probs.data() + size_t(n) * E;
    for (int e = 0; e < E; ++e) {
      p[e] = std::exp(x[e] - l);
      r.prob_sum[e] += p[e];
    }
    double S = 0;
    for (int j = 0; j < k; ++j) S += p[ex[j]];
    for (int j = 0; j < k; ++j) {
      r.weight[size_t(n) * k + j] = k == 1 ? p[ex[j]] : p[ex[j]] / S;
      ++r.counts[ex[j]];
    }
  }
  return r;
}
// aux + z of a routing over N = T_all tokens: α·E·Σ_i f_i·P_i + β·Σ lse² / T_all.
inline double moe_router_aux_z(const MoeRoute& r, int N, int E, int k, double aux_coef,
                               double z_coef) {
  if (N == 0) return 0.0;
  double aux = 0;
  for (int e = 0; e < E; ++e) aux += double(r.counts[e]) / (double(N) * k) * r.prob_sum[e] / N;
  return aux_coef * E * aux + z_coef * r.lse_sq_sum / N;
}
// dlogits (WRITTEN) of Σ dweight·w + loss_scale·(aux + z), f_i (from counts) held constant.
inline void moe_router_backward(Vec& dlogits, const Vec& dweight, const Vec& probs, const Vec& lse,
                                const std::vector<int32_t>& expert, const Vec& weight,
                                const std::vector<int32_t>& counts, double tokens_all,
                                double aux_coef, double z_coef, double loss_scale, int N, int E,
                                int k) {
  Vec d(E);
  for (int n = 0; n < N; ++n) {
    const double* p = probs.data() + size_t(n) * E;
    const int32_t* ex = expert.data() + size_t(n) * k;
    const double* w = weight.data() + size_t(n) * k;
    const double* dw = dweight.data() + size_t(n) * k;
    // dL/dp_e: the aux term, then the combine weights (w_j = p_{e_j} / S, or p_{e_0} for k = 1).
    for (int e = 0; e < E; ++e)
      d[e] = loss_scale * aux_coef * E * (counts[e] / (tokens_all * k)) / tokens_all;
    if (k == 1) {
      d[ex[0]] += dw[0];
    } else {
      double S = 0, dot = 0;
      for (int j = 0; j < k; ++j) {
        S += p[ex[j]];
        dot += dw[j] * w[j];
      }
      for (int j = 0; j < k; ++j) d[ex[j]] += (dw[j] - dot) / S;
    }
    double s = 0;
    for (int e = 0; e < E; ++e) s += d[e] * p[e];
    const double dz = loss_scale * z_coef * 2.0 / tokens_all;  // d(lse²)/dlogit_e = 2·lse·p_e
    for (int e = 0; e < E; ++e) dlogits[size_t(n) * E + e] = p[e] * (d[e] - s) + dz * lse[n] * p[e];
  }
}

// The counting sort of moe_permute: offsets[E+1], row_of[N·k] in (expert, token, slot) order.
inline void moe_permute_layout(std::vector<int32_t>& offsets, std::vector<int32_t>& row_of,
                               const std::vector<int32_t>& expert, int N, int k, int E) {
  offsets.assign(E + 1, 0);
  row_of.assign(size_t(N) * k, -1);
  for (size_t a = 0; a < size_t(N) * k; ++a) ++offsets[expert[a] + 1];
  for (int e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  std::vector<int32_t> cursor(offsets.begin(), offsets.end() - 1);
  for (size_t a = 0; a < size_t(N) * k; ++a) row_of[a] = cursor[expert[a]]++;
}
// xp[row_of[a]] = x[a / k] (xp sized N·k·C).
inline void moe_permute(Vec& xp, const Vec& x, const std::vector<int32_t>& row_of, int N, int k,
                        int C) {
  for (size_t a = 0; a < size_t(N) * k; ++a)
    for (int c = 0; c < C; ++c) xp[size_t(row_of[a]) * C + c] = x[(a / k) * C + c];
}
// dx[n] += Σ_j dxp[row_of[n·k + j]].
inline void moe_permute_backward(Vec& dx, const Vec& dxp, const std::vector<int32_t>& row_of, int N,
                                 int k, int C) {
  for (size_t a = 0; a < size_t(N) * k; ++a)
    for (int c = 0; c < C; ++c) dx[(a / k) * C + c] += dxp[size_t(row_of[a]) * C + c];
}
// y[n] = Σ_j w[n,j]·yp[row_of[n·k + j]] (WRITTEN).
inline void moe_unpermute(Vec& y, const Vec& yp, const Vec& w, const std::vector<int32_t>& row_of,
                          int N, int k, int C) {
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      double acc = 0;
      for (int j = 0; j < k; ++j)
        acc += w[size_t(n) * k + j] * yp[size_t(row_of[size_t(n) * k + j]) * C + c];
      y[size_t(n) * C + c] = acc;
    }
}
// dyp[row_of[a]] = w[a]·dy[n], dw[a] = <dy[n], yp[row_of[a]]> (both WRITTEN).
inline void moe_unpermute_backward(Vec& dyp, Vec& dw, const Vec& dy, const Vec& yp, const Vec& w,
                                   const std::vector<int32_t>& row_of, int N, int k, int C) {
  for (size_t a = 0; a < size_t(N) * k; ++a) {
    const size_t n = a / k, row = size_t(row_of[a]);
    double dot = 0;
    for (int c = 0; c < C; ++c) {
      dot += dy[n * C + c] * yp[row * C + c];
      dyp[row * C + c] = w[a] * dy[n * C + c];
    }
    dw[a] = dot;
  }
}
// Expert e's rows [offsets[e], offsets[e+1]) times its slab of weight[E,OC,C].
inline void grouped_linear_forward(Vec& out, const Vec& inp, const Vec& w,
                                   const std::vector<int32_t>& offsets, int E, int C, int OC) {
  for (int e = 0; e < E; ++e)
    for (int r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int o = 0; o < OC; ++o) {
        double acc = 0;
        for (int c = 0; c < C; ++c) acc += inp[size_t(r) * C + c] * w[(size_t(e) * OC + o) * C + c];
        out[size_t(r) * OC + o] = acc;
      }
}
// dinp += ..., dw += ... (dinp may be null).
inline void grouped_linear_backward(Vec* dinp, Vec& dw, const Vec& dout, const Vec& inp,
                                    const Vec& w, const std::vector<int32_t>& offsets, int E, int C,
                                    int OC) {
  for (int e = 0; e < E; ++e)
    for (int r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int o = 0; o < OC; ++o) {
        const double g = dout[size_t(r) * OC + o];
        for (int c = 0; c < C; ++c) {
          const size_t wi = (size_t(e) * OC + o) * C + c;
          if (dinp) (*dinp)[size_t(r) * C + c] += g * w[wi];
          dw[wi] += g * inp[size_t(r) * C + c];
        }
      }
}

}  // namespace grove::cuda::ref
