// Mixture of experts for one process (docs/moe.md), forward next to backward: route, permute,
// unpermute (combine) and the grouped expert GEMMs. Contracts and legend in ops.h; the semantics
// are those of parallel/moe_router.cc and the single-rank AllToAllDispatcher.
//   route    : p = softmax(logits) (exp and sums in double), lse, top-k by logit, weights
//              w_j = p_{e_j} / Σ_j' p_{e_j'} (k > 1) or p_{e_0} (k = 1)
//   backward : dp_e = α·E·f_e·ls / T_all + [e = e_j]·(dw_j − Σ_j' dw_j'·w_j') / S   (k > 1)
//                                         + [e = e_0]·dw_0                          (k = 1)
//              dlogit_e = p_e·(dp_e − Σ_e' dp_e'·p_e') + ls·β·2·lse·p_e / T_all
//   permute  : row_of[a] = offsets[expert[a]] + #{a' < a : expert[a'] = expert[a]}
//   combine  : y[n] = Σ_j w_{n,j}·yp[row_of[n·k + j]]
// Dropless only (no capacity factor on the GPU).
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarps = 8;  // tokens per block in the router kernels (one warp per token)

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

// ---- Route ------------------------------------------------------------------------------------

// One warp per token. Top-k by repeated warp argmax under the total order (logit descending, id
// ascending), which is the CPU's strict-> scan; then the softmax in double, as on the CPU.
__global__ void router_forward_kernel(float* probs, float* lse, int32_t* expert, float* weight,
                                      const float* logits, int N, int E, int k) {
  const int n = blockIdx.x * kWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (n >= N) return;
  const float* x = logits + int64_t{n} * E;
  int chosen[kMoeMaxTopK];
  for (int j = 0; j < k; ++j) {
    float bv = -INFINITY;
    int bi = INT_MAX;  // INT_MAX: no candidate yet
    for (int e = lane; e < E; e += 32) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= chosen[i] == e;
      if (taken) continue;
      const float v = x[e];
      if (bi == INT_MAX || v > bv) {  // e increases: a tie keeps the lower id
        bv = v;
        bi = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(kFull, bv, o);
      const int oi = __shfl_xor_sync(kFull, bi, o);
      if (oi != INT_MAX && (bi == INT_MAX || ov > bv || (ov == bv && oi < bi))) {
        bv = ov;
        bi = oi;
      }
    }
    chosen[j] = bi;
  }
  float mx = -INFINITY;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, x[e]);
  mx = detail::warp_max(mx);
  double s = 0;
  for (int e = lane; e < E; e += 32) s += exp(double(x[e]) - mx);
  s = detail::warp_sum(s);
  const double l = mx + log(s);
  float* p = probs + int64_t{n} * E;
  for (int e = lane; e < E; e += 32) p[e] = float(exp(double(x[e]) - l));
  if (lane == 0) {
    lse[n] = float(l);
    // Recomputed rather than read back: the same expression gives the same float as p[e].
    float pj[kMoeMaxTopK];
    float norm = 0.f;
    for (int j = 0; j < k; ++j) {
      pj[j] = float(exp(double(x[chosen[j]]) - l));
      norm += pj[j];
    }
    if (k == 1) norm = 1.f;
    for (int j = 0; j < k; ++j) {
      expert[int64_t{n} * k + j] = chosen[j];
      weight[int64_t{n} * k + j] = pj[j] / norm;
    }
  }
}

// counts[e] and prob_sum[e], one block per expert: each thread sums rows tid, tid + blockDim, ...;
// then a fixed-shape block reduction. Deterministic; many blocks even when N is large and E small.
__global__ void router_stats_kernel(int32_t* counts, double* prob_sum, const float* probs,
                                    const int32_t* expert, int N, int E, int k) {
  __shared__ double dscratch[32];
  __shared__ int iscratch[32];
  const int e = blockIdx.x;
  double acc = 0;
  int cnt = 0;
  for (int n = threadIdx.x; n < N; n += blockDim.x) {
    acc += probs[int64_t{n} * E + e];
    for (int j = 0; j < k; ++j) cnt += expert[int64_t{n} * k + j] == e;
  }
  acc = detail::block_reduce(acc, dscratch, 0.0, detail::SumOp{});
  cnt = detail::block_reduce(cnt, iscratch, 0, detail::SumOp{});
  if (threadIdx.x == 0) {
    prob_sum[e] = acc;
    counts[e] = cnt;
  }
}

// lse_sq_sum[0] = Σ_n lse_n² in double, one block.
__global__ void lse_sq_sum_kernel(double* result, const float* lse, int N) {
  __shared__ double scratch[32];
  double acc = 0;
  for (int n = threadIdx.x; n < N; n += blockDim.x) acc += double(lse[n]) * lse[n];
  acc = detail::block_reduce(acc, scratch, 0.0, detail::SumOp{});
  if (threadIdx.x == 0) *result = acc;
}

// One warp per token; dp_e is recomputed where needed (E is small) instead of being stored.
__global__ void router_backward_kernel(float* dlogits, const float* dweight, const float* probs,
                                       const float* lse, const int32_t* expert, const float* weight,
                                       const int32_t* counts, double tokens_all, float aux_coef,
                                       float z_coef, float loss_scale, int N, int E, int k) {
  const int n = blockIdx.x * kWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (n >= N) return;
  const float* p = probs + int64_t{n} * E;
  const int32_t* ex = expert + int64_t{n} * k;
  const float* wt = weight + int64_t{n} * k;
  const float* dwt = dweight + int64_t{n} * k;
  double S = 0, dot = 0;  // k > 1: w_j = p_{e_j} / S
  for (int j = 0; j < k; ++j) {
    S += p[ex[j]];
    dot += double(dwt[j]) * wt[j];
  }
  // The CPU router's expressions, in its order of operations.
  auto dp = [&](int e) {
    const double f = double(counts[e]) / (tokens_all * k);
    double d = double(loss_scale) * aux_coef * E * f / tokens_all;
    if (k == 1) {
      if (ex[0] == e) d += dwt[0];
    } else {
      for (int j = 0; j < k; ++j)
        if (ex[j] == e) d += (dwt[j] - dot) / S;
    }
    return d;
  };
  double s = 0;
  for (int e = lane; e < E; e += 32) s += dp(e) * p[e];
  s = detail::warp_sum(s);
  const double dz = double(loss_scale) * z_coef * 2.0 / tokens_all;
  float* g = dlogits + int64_t{n} * E;
  for (int e = lane; e < E; e += 32) g[e] = float(p[e] * (dp(e) - s) + dz * lse[n] * p[e]);
}

// ---- Permute ----------------------------------------------------------------------------------

constexpr int kScanThreads = 512, kScanItems = 4;  // a tile of 2048 assignments per iteration

// One block per expert e scans all A assignments in order: a block-wide exclusive scan of
// "assignment is routed to e" gives each of e's assignments its rank, hence its row. No atomics;
// the layout is the CPU's counting sort exactly.
__global__ void permute_layout_kernel(int32_t* offsets, int32_t* row_of, const int32_t* expert,
                                      const int32_t* counts, int A, int E) {
  __shared__ int warp_incl[kScanThreads / 32];
  __shared__ int base;
  const int e = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int kNumWarps = kScanThreads / 32;
  if (threadIdx.x == 0) {
    int b = 0;
    for (int i = 0; i < e; ++i) b += counts[i];
    base = b;
    offsets[e] = b;
    if (e == E - 1) offsets[E] = b + counts[e];
  }
  __syncthreads();
  int running = base;
  for (int64_t tile = 0; tile < A; tile += kScanThreads * kScanItems) {
    const int64_t a0 = tile + threadIdx.x * kScanItems;
    int c = 0, mine = 0;  // mine: bit i set if assignment a0 + i goes to e
#pragma unroll
    for (int i = 0; i < kScanItems; ++i)
      if (a0 + i < A && expert[a0 + i] == e) {
        mine |= 1 << i;
        ++c;
      }
    int incl = c;  // inclusive scan within the warp
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += v;
    }
    if (lane == 31) warp_incl[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int v = lane < kNumWarps ? warp_incl[lane] : 0;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int u = __shfl_up_sync(kFull, v, o);
        if (lane >= o) v += u;
      }
      if (lane < kNumWarps) warp_incl[lane] = v;
    }
    __syncthreads();
    int r = running + incl - c + (warp > 0 ? warp_incl[warp - 1] : 0);
#pragma unroll
    for (int i = 0; i < kScanItems; ++i)
      if (mine >> i & 1) row_of[a0 + i] = r++;
    running += warp_incl[kNumWarps - 1];
    __syncthreads();  // warp_incl is rewritten by the next tile
  }
}

constexpr int kRowThreads = 128;

// One block per assignment a: dst row row_of[a] = src row a / k, copied as V (16-byte vectors
// when the rows allow, else elements).
template <typename V>
__global__ void gather_rows_kernel(V* dst, const V* src, const int32_t* row_of, int k,
                                   int64_t row_len) {
  const int a = blockIdx.x;
  const V* s = src + int64_t{a / k} * row_len;
  V* d = dst + int64_t{row_of[a]} * row_len;
  for (int64_t c = threadIdx.x; c < row_len; c += blockDim.x) d[c] = s[c];
}

template <typename T>
__global__ void permute_backward_kernel(T* dx, const T* dxp, const int32_t* row_of, int k, int C) {
  const int n = blockIdx.x;
  __shared__ int rows[kMoeMaxTopK];
  if (threadIdx.x < k) rows[threadIdx.x] = row_of[int64_t{n} * k + threadIdx.x];
  __syncthreads();
  T* d = dx + int64_t{n} * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = to_f32(d[c]);
    for (int j = 0; j < k; ++j) acc += to_f32(dxp[int64_t{rows[j]} * C + c]);
    d[c] = from_f32<T>(acc);
  }
}

// ---- Unpermute (combine) --------------------------------------------------------------------

template <typename T>
__global__ void unpermute_kernel(T* y, const T* yp, const float* weight, const int32_t* row_of,
                                 int k, int C) {
  const int n = blockIdx.x;
  __shared__ int rows[kMoeMaxTopK];
  __shared__ float w[kMoeMaxTopK];
  if (threadIdx.x < k) {
    rows[threadIdx.x] = row_of[int64_t{n} * k + threadIdx.x];
    w[threadIdx.x] = weight[int64_t{n} * k + threadIdx.x];
  }
  __syncthreads();
  T* o = y + int64_t{n} * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < k; ++j) acc += w[j] * to_f32(yp[int64_t{rows[j]} * C + c]);
    o[c] = from_f32<T>(acc);
  }
}

template <typename T>
__global__ void unpermute_backward_kernel(T* dyp, float* dweight, const T* dy, const T* yp,
                                          const float* weight, const int32_t* row_of, int k,
                                          int C) {
  const int n = blockIdx.x;
  __shared__ float scratch[32];
  const T* g = dy + int64_t{n} * C;
  for (int j = 0; j < k; ++j) {
    const int64_t a = int64_t{n} * k + j, row = row_of[a];
    const float w = weight[a];
    const T* yr = yp + row * C;
    T* dr = dyp + row * C;
    float dot = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const float gc = to_f32(g[c]);
      dot += gc * to_f32(yr[c]);
      dr[c] = from_f32<T>(w * gc);
    }
    dot = detail::block_reduce(dot, scratch, 0.f, detail::SumOp{});
    if (threadIdx.x == 0) dweight[a] = dot;
  }
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

void moe_router_forward(float* probs, float* lse, int32_t* expert, float* weight, int32_t* counts,
                        double* prob_sum, double* lse_sq_sum, const float* logits, int N, int E,
                        int k, cudaStream_t stream) {
  check_shape(N, E, k);
  if (N > 0) {
    router_forward_kernel<<<(N + kWarps - 1) / kWarps, kWarps * 32, 0, stream>>>(
        probs, lse, expert, weight, logits, N, E, k);
    GROVE_CUDA_CHECK_LAUNCH();
  }
  // Also for N == 0: the statistics are written (zeros).
  router_stats_kernel<<<E, 256, 0, stream>>>(counts, prob_sum, probs, expert, N, E, k);
  GROVE_CUDA_CHECK_LAUNCH();
  lse_sq_sum_kernel<<<1, 1024, 0, stream>>>(lse_sq_sum, lse, N);
  GROVE_CUDA_CHECK_LAUNCH();
}

void moe_router_backward(float* dlogits, const float* dweight, const float* probs, const float* lse,
                         const int32_t* expert, const float* weight, const int32_t* counts,
                         int64_t tokens_all, float aux_coef, float z_coef, float loss_scale, int N,
                         int E, int k, cudaStream_t stream) {
  check_shape(N, E, k);
  if (N == 0) return;
  GROVE_CHECK(tokens_all > 0) << "moe_router_backward: tokens_all=" << tokens_all
                              << " with N=" << N;
  router_backward_kernel<<<(N + kWarps - 1) / kWarps, kWarps * 32, 0, stream>>>(
      dlogits, dweight, probs, lse, expert, weight, counts, double(tokens_all), aux_coef, z_coef,
      loss_scale, N, E, k);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void moe_permute(T* xp, int32_t* offsets, int32_t* row_of, const T* x, const int32_t* expert,
                 const int32_t* counts, int N, int k, int E, int C, cudaStream_t stream) {
  check_shape(N, E, k);
  const int A = N * k;
  permute_layout_kernel<<<E, kScanThreads, 0, stream>>>(offsets, row_of, expert, counts, A, E);
  GROVE_CUDA_CHECK_LAUNCH();
  if (A == 0 || C == 0) return;
  const int64_t row_bytes = int64_t{C} * sizeof(T);
  if (row_bytes % 16 == 0 && aligned16(x) && aligned16(xp)) {
    gather_rows_kernel<uint4><<<A, kRowThreads, 0, stream>>>(
        reinterpret_cast<uint4*>(xp), reinterpret_cast<const uint4*>(x), row_of, k, row_bytes / 16);
  } else {
    gather_rows_kernel<T><<<A, kRowThreads, 0, stream>>>(xp, x, row_of, k, C);
  }
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void moe_permute_backward(T* dx, const T* dxp, const int32_t* row_of, int N, int k, int C,
                          cudaStream_t stream) {
  check_slots(N, k);
  if (N == 0 || C == 0) return;
  permute_backward_kernel<T><<<N, 256, 0, stream>>>(dx, dxp, row_of, k, C);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void moe_unpermute(T* y, const T* yp, const float* weight, const int32_t* row_of, int N, int k,
                   int C, cudaStream_t stream) {
  check_slots(N, k);
  if (N == 0 || C == 0) return;
  unpermute_kernel<T><<<N, 256, 0, stream>>>(y, yp, weight, row_of, k, C);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void moe_unpermute_backward(T* dyp, float* dweight, const T* dy, const T* yp, const float* weight,
                            const int32_t* row_of, int N, int k, int C, cudaStream_t stream) {
  check_slots(N, k);
  if (N == 0) return;
  unpermute_backward_kernel<T><<<N, 256, 0, stream>>>(dyp, dweight, dy, yp, weight, row_of, k, C);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void grouped_linear_forward(T* out, const T* inp, const T* weight, const int32_t* offsets_host,
                            int E, int C, int OC, cudaStream_t stream) {
  const int64_t slab = int64_t{OC} * C;
  for (int e = 0; e < E; ++e) {
    const int64_t r0 = offsets_host[e];
    const int n = offsets_host[e + 1] - offsets_host[e];
    GROVE_CHECK(n >= 0) << "grouped_linear_forward: offsets decrease at expert " << e;
    if (n == 0) continue;
    linear_forward<T>(out + r0 * OC, inp + r0 * C, weight + e * slab, nullptr, n, C, OC, stream);
  }
}

template <typename T>
void grouped_linear_backward(T* dinp, float* dweight, const T* dout, const T* inp, const T* weight,
                             const int32_t* offsets_host, int E, int C, int OC,
                             cudaStream_t stream) {
  const int64_t slab = int64_t{OC} * C;
  for (int e = 0; e < E; ++e) {
    const int64_t r0 = offsets_host[e];
    const int n = offsets_host[e + 1] - offsets_host[e];
    GROVE_CHECK(n >= 0) << "grouped_linear_backward: offsets decrease at expert " << e;
    if (n == 0) continue;
    linear_backward<T>(dinp != nullptr ? dinp + r0 * C : nullptr, dweight + e * slab, nullptr,
                       dout + r0 * OC, inp + r0 * C, weight + e * slab, n, C, OC, stream);
  }
}

#define GROVE_MOE_INSTANTIATE(T)                                                                 \
  template void moe_permute<T>(T*, int32_t*, int32_t*, const T*, const int32_t*, const int32_t*, \
                               int, int, int, int, cudaStream_t);                                \
  template void moe_permute_backward<T>(T*, const T*, const int32_t*, int, int, int,             \
                                        cudaStream_t);                                           \
  template void moe_unpermute<T>(T*, const T*, const float*, const int32_t*, int, int, int,      \
                                 cudaStream_t);                                                  \
  template void moe_unpermute_backward<T>(T*, float*, const T*, const T*, const float*,          \
                                          const int32_t*, int, int, int, cudaStream_t);          \
  template void grouped_linear_forward<T>(T*, const T*, const T*, const int32_t*, int, int, int, \
                                          cudaStream_t);                                         \
  template void grouped_linear_backward<T>(T*, float*, const T*, const T*, const T*,             \
                                           const int32_t*, int, int, int, cudaStream_t);
GROVE_MOE_INSTANTIATE(float)
GROVE_MOE_INSTANTIATE(bf16)
#undef GROVE_MOE_INSTANTIATE

}  // namespace grove::cuda
