// Mixture of experts for one process, forward next to backward: route, permute, unpermute
// (combine) and the grouped expert GEMMs. Contracts and legend in ops.h; the same semantics and
// expressions as kernels/cuda/moe.cu:
//   route    : p = softmax(logits) (exp and sums in double), lse, top-k by logit (a tie to the
//              lower id), weights w_j = p_{e_j} / Σ_j' p_{e_j'} (k > 1) or p_{e_0} (k = 1)
//   backward : dp_e = α·E·f_e·ls / T_all + [e = e_j]·(dw_j − Σ_j' dw_j'·w_j') / S   (k > 1)
//                                         + [e = e_0]·dw_0                          (k = 1)
//              dlogit_e = p_e·(dp_e − Σ_e' dp_e'·p_e') + ls·β·2·lse·p_e / T_all
//   permute  : row_of[a] = offsets[expert[a]] + #{a' < a : expert[a'] = expert[a]}
//   combine  : y[n] = Σ_j w_{n,j}·yp[row_of[n·k + j]]
// Token loops run under OpenMP; every sum has a fixed order (the statistics are summed over the
// tokens in token order after the parallel loop), so results do not depend on the thread count.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grove::cpu {
namespace {

void check_shape(int N, int E, int k) {
  GROVE_CHECK(N >= 0 && E > 0 && k >= 1 && k <= E && k <= kMoeMaxTopK)
      << "moe: need N >= 0, E > 0, 1 <= k <= min(E, " << kMoeMaxTopK << "); got N=" << N
      << " E=" << E << " k=" << k;
  GROVE_CHECK(int64_t{N} * k <= INT_MAX) << "moe: N*k=" << int64_t{N} * k << " exceeds int32";
}
// For the ops that do not see E.
void check_slots(int N, int k) {
  check_shape(N, kMoeMaxTopK, k);
}

bool parallel_rows(int64_t rows, int64_t row_len) {
  return rows * std::max<int64_t>(row_len, 1) >= detail::kMinParallelWork;
}

}  // namespace

// ---- Route ------------------------------------------------------------------------------------

template <typename A>
void moe_router_forward(A* probs, A* lse, int32_t* expert, A* weight, int32_t* counts,
                        double* prob_sum, double* lse_sq_sum, const A* logits, int N, int E,
                        int k) {
  check_shape(N, E, k);
  // lse in double before it is rounded: its square is summed below (as the CPU router does).
  std::vector<double> lse_d(N);
#pragma omp parallel for schedule(static) if (parallel_rows(N, int64_t{E} * k))
  for (int n = 0; n < N; ++n) {
    const A* x = logits + int64_t{n} * E;
    int32_t* ex = expert + int64_t{n} * k;
    // Top-k on the logits: largest first; strict > keeps the lower id on a tie.
    for (int j = 0; j < k; ++j) {
      int best = -1;
      for (int e = 0; e < E; ++e) {
        if (std::find(ex, ex + j, e) != ex + j) continue;
        if (best < 0 || x[e] > x[best]) best = e;
      }
      ex[j] = best;
    }
    A mx = x[0];
    for (int e = 1; e < E; ++e) mx = std::max(mx, x[e]);
    double s = 0;
    for (int e = 0; e < E; ++e) s += std::exp(double(x[e]) - mx);
    const double l = mx + std::log(s);
    lse_d[n] = l;
    lse[n] = A(l);
    A* p = probs + int64_t{n} * E;
    for (int e = 0; e < E; ++e) p[e] = A(std::exp(double(x[e]) - l));
    A norm = 0;
    for (int j = 0; j < k; ++j) norm += p[ex[j]];
    if (k == 1) norm = 1;
    for (int j = 0; j < k; ++j) weight[int64_t{n} * k + j] = p[ex[j]] / norm;
  }
  // Statistics in token order (deterministic, as the router sums them).
  std::fill(counts, counts + E, 0);
  std::fill(prob_sum, prob_sum + E, 0.0);
  double lsq = 0;
  for (int n = 0; n < N; ++n) {
    const int32_t* ex = expert + int64_t{n} * k;
    for (int j = 0; j < k; ++j) ++counts[ex[j]];
    const A* p = probs + int64_t{n} * E;
    for (int e = 0; e < E; ++e) prob_sum[e] += p[e];
    lsq += lse_d[n] * lse_d[n];
  }
  *lse_sq_sum = lsq;
}

template <typename A>
void moe_router_backward(A* dlogits, const A* dweight, const A* probs, const A* lse,
                         const int32_t* expert, const A* weight, const int32_t* counts,
                         int64_t tokens_all, float aux_coef, float z_coef, float loss_scale, int N,
                         int E, int k) {
  check_shape(N, E, k);
  if (N == 0) return;
  GROVE_CHECK(tokens_all > 0) << "moe_router_backward: tokens_all=" << tokens_all
                              << " with N=" << N;
  const double T_all = double(tokens_all);
  // d(loss_scale·aux)/dp_{n,e} = loss_scale·α·E·f_e / T_all;  d(loss_scale·z)/dlogit_{n,e} =
  // loss_scale·β·2·lse_n·p_{n,e} / T_all.
  std::vector<double> daux(E);
  for (int e = 0; e < E; ++e) {
    const double f = double(counts[e]) / (T_all * k);
    daux[e] = double(loss_scale) * aux_coef * E * f / T_all;
  }
  const double dz = double(loss_scale) * z_coef * 2.0 / T_all;
#pragma omp parallel if (parallel_rows(N, E))
  {
    std::vector<double> d(E);
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n) {
      const A* p = probs + int64_t{n} * E;
      const int32_t* ex = expert + int64_t{n} * k;
      const A* wt = weight + int64_t{n} * k;
      const A* dwt = dweight + int64_t{n} * k;
      for (int e = 0; e < E; ++e) d[e] = daux[e];
      if (k == 1) {  // w = p_e: dp_e += dw
        d[ex[0]] += dwt[0];
      } else {  // w_j = p_{e_j} / S: dp_{e_j} += (dw_j − Σ_j' dw_j'·w_j') / S
        double S = 0, dot = 0;
        for (int j = 0; j < k; ++j) {
          S += p[ex[j]];
          dot += double(dwt[j]) * wt[j];
        }
        for (int j = 0; j < k; ++j) d[ex[j]] += (dwt[j] - dot) / S;
      }
      double s = 0;
      for (int e = 0; e < E; ++e) s += d[e] * p[e];
      A* g = dlogits + int64_t{n} * E;
      for (int e = 0; e < E; ++e) g[e] = A(p[e] * (d[e] - s) + dz * lse[n] * p[e]);
    }
  }
}

// ---- Permute ----------------------------------------------------------------------------------

template <typename T>
void moe_permute(T* xp, int32_t* offsets, int32_t* row_of, const T* x, const int32_t* expert,
                 const int32_t* counts, int N, int k, int E, int C) {
  check_shape(N, E, k);
  const int64_t A = int64_t{N} * k;
  offsets[0] = 0;
  for (int e = 0; e < E; ++e) {
    GROVE_CHECK(counts[e] >= 0) << "moe_permute: counts[" << e << "]=" << counts[e];
    offsets[e + 1] = offsets[e] + counts[e];
  }
  GROVE_CHECK(offsets[E] == A) << "moe_permute: the counts sum to " << offsets[E]
                               << ", not to N*k=" << A
                               << " (pass the routing's own counts, not a group's)";
  // Stable counting sort: (expert, token, slot) order.
  std::vector<int32_t> cursor(offsets, offsets + E);
  for (int64_t a = 0; a < A; ++a) {
    const int32_t e = expert[a];
    GROVE_CHECK(e >= 0 && e < E) << "moe_permute: expert[" << a << "]=" << e << " outside [0, " << E
                                 << ")";
    row_of[a] = cursor[e]++;
  }
  if (C == 0) return;
#pragma omp parallel for schedule(static) if (parallel_rows(A, C))
  for (int64_t a = 0; a < A; ++a) {
    std::memcpy(xp + int64_t{row_of[a]} * C, x + (a / k) * C, sizeof(T) * C);
  }
}

template <typename T>
void moe_permute_backward(T* dx, const T* dxp, const int32_t* row_of, int N, int k, int C) {
  check_slots(N, k);
#pragma omp parallel for schedule(static) if (parallel_rows(N, int64_t{k} * C))
  for (int n = 0; n < N; ++n) {
    T* d = dx + int64_t{n} * C;
    for (int j = 0; j < k; ++j) {
      const T* g = dxp + int64_t{row_of[int64_t{n} * k + j]} * C;
      for (int c = 0; c < C; ++c) d[c] += g[c];
    }
  }
}

// ---- Unpermute (combine) --------------------------------------------------------------------

template <typename T>
void moe_unpermute(T* y, const T* yp, const acc_t<T>* weight, const int32_t* row_of, int N, int k,
                   int C) {
  check_slots(N, k);
#pragma omp parallel for schedule(static) if (parallel_rows(N, int64_t{k} * C))
  for (int n = 0; n < N; ++n) {
    T* o = y + int64_t{n} * C;
    std::fill(o, o + C, T(0));
    for (int j = 0; j < k; ++j) {
      const int64_t a = int64_t{n} * k + j;
      const acc_t<T> w = weight[a];
      const T* yr = yp + int64_t{row_of[a]} * C;
      for (int c = 0; c < C; ++c) o[c] += w * yr[c];
    }
  }
}

template <typename T>
void moe_unpermute_backward(T* dyp, acc_t<T>* dweight, const T* dy, const T* yp,
                            const acc_t<T>* weight, const int32_t* row_of, int N, int k, int C) {
  check_slots(N, k);
#pragma omp parallel for schedule(static) if (parallel_rows(N, int64_t{k} * C))
  for (int n = 0; n < N; ++n) {
    const T* g = dy + int64_t{n} * C;
    for (int j = 0; j < k; ++j) {
      const int64_t a = int64_t{n} * k + j, row = row_of[a];
      const T* yr = yp + row * C;
      T* dr = dyp + row * C;
      const acc_t<T> w = weight[a];
      double dot = 0;
      for (int c = 0; c < C; ++c) {
        dot += double(g[c]) * yr[c];
        dr[c] = w * g[c];
      }
      dweight[a] = acc_t<T>(dot);
    }
  }
}

// ---- Grouped linear ---------------------------------------------------------------------------

template <typename T>
void grouped_linear_forward(T* out, const T* inp, const T* weight, const int32_t* offsets_host,
                            int E, int C, int OC) {
  const int64_t slab = int64_t{OC} * C;
  for (int e = 0; e < E; ++e) {
    const int64_t r0 = offsets_host[e];
    const int n = offsets_host[e + 1] - offsets_host[e];
    GROVE_CHECK(n >= 0) << "grouped_linear_forward: offsets decrease at expert " << e;
    if (n == 0) continue;
    linear_forward<T>(out + r0 * OC, inp + r0 * C, weight + e * slab, nullptr, n, C, OC);
  }
}

template <typename T>
void grouped_linear_backward(T* dinp, acc_t<T>* dweight, const T* dout, const T* inp,
                             const T* weight, const int32_t* offsets_host, int E, int C, int OC) {
  const int64_t slab = int64_t{OC} * C;
  for (int e = 0; e < E; ++e) {
    const int64_t r0 = offsets_host[e];
    const int n = offsets_host[e + 1] - offsets_host[e];
    GROVE_CHECK(n >= 0) << "grouped_linear_backward: offsets decrease at expert " << e;
    if (n == 0) continue;
    linear_backward<T>(dinp != nullptr ? dinp + r0 * C : nullptr, dweight + e * slab, nullptr,
                       dout + r0 * OC, inp + r0 * C, weight + e * slab, n, C, OC);
  }
}

#define GROVE_MOE_INSTANTIATE(T)                                                                   \
  template void moe_router_forward<T>(T*, T*, int32_t*, T*, int32_t*, double*, double*, const T*,  \
                                      int, int, int);                                              \
  template void moe_router_backward<T>(T*, const T*, const T*, const T*, const int32_t*, const T*, \
                                       const int32_t*, int64_t, float, float, float, int, int,     \
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
GROVE_MOE_INSTANTIATE(float)
GROVE_MOE_INSTANTIATE(double)
#undef GROVE_MOE_INSTANTIATE

}  // namespace grove::cpu
