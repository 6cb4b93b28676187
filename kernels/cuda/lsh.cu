// Capacity dropping and the LSH-compressed dispatch's kernels (docs/lsh.md), forward next to
// backward. Contracts and legend in ops.h; the semantics and expressions of kernels/cpu/lsh.cc:
//   capacity : per expert, the first cap assignments in (slot, token) order are kept
//   hash     : v_l = rot_l·(x − μ) in fp32 over c = 0..C-1 (no fused multiply-add, so the ids are
//              the CPU's bit for bit), code_l = 2·argmax|v_l| + (v < 0), id = Σ_l code_l·(2r)^l
//   bucket   : per group, rows with equal (prefix) ids share a bucket, numbered by first row
//   reduce   : c_b = Σ_{i ∈ b} x_i (/ n_b), in double in row order
//   expand   : y_i = y_b + (x_i − c_b);  backward: dx_i = (dc_b − dy_b)/n_b + dy_i  (n_b = 1: dc_b)
// Deterministic: no atomics; every sum has the CPU's order. The per-group passes (capacity,
// bucket numbering, the bucket sums) are sequential over a group's rows in one thread per
// (group, column), and the first-row search compares a row with the earlier rows of its group
// (O(n²) per group of n rows, n = tokens one rank routes to one expert).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;
constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  return int((n + kThreads - 1) / kThreads);
}

// ---- capacity ---------------------------------------------------------------------------------
// One thread per expert walks the assignments in (slot, token) order.
__global__ void capacity_kernel(int32_t* expert_kept, float* weight_kept, int32_t* counts_kept,
                                int32_t* dropped, const int32_t* expert, const float* weight, int N,
                                int k, int E, int64_t cap) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= E) return;
  int32_t kept = 0, drop = 0;
  for (int j = 0; j < k; ++j)
    for (int n = 0; n < N; ++n) {
      const int64_t a = int64_t(n) * k + j;
      if (expert[a] != e) continue;
      if (kept < cap) {
        ++kept;
        expert_kept[a] = e;
        weight_kept[a] = weight[a];
      } else {
        ++drop;
        expert_kept[a] = E;
        weight_kept[a] = 0.0f;
      }
    }
  counts_kept[e] = kept;
  dropped[e] = drop;
}

__global__ void dropped_total_kernel(int32_t* counts_kept, const int32_t* dropped, int E) {
  if (threadIdx.x != 0) return;
  int32_t s = 0;
  for (int e = 0; e < E; ++e) s += dropped[e];
  counts_kept[E] = s;
}

// ---- hash -------------------------------------------------------------------------------------
template <typename T>
__global__ void hash_kernel(uint64_t* ids, const T* x, const float* rot, const T* mu,
                            const int32_t* mu_row, int64_t n, int C, int L, int r) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const T* xi = x + i * C;
  const T* m = mu != nullptr ? mu + int64_t(mu_row[i]) * C : nullptr;
  uint64_t id = 0, base = 1;
  for (int l = 0; l < L; ++l) {
    int best = 0;
    float vbest = 0;
    for (int o = 0; o < r; ++o) {
      const float* q = rot + (int64_t(l) * r + o) * C;
      float v = 0;
      for (int c = 0; c < C; ++c) {
        const float xc = m != nullptr ? __fsub_rn(to_f32(xi[c]), to_f32(m[c])) : to_f32(xi[c]);
        v = __fadd_rn(v, __fmul_rn(xc, q[c]));
      }
      if (o == 0 || fabsf(v) > fabsf(vbest)) {
        best = o;
        vbest = v;
      }
    }
    id += (2 * uint64_t(best) + (vbest < 0 ? 1 : 0)) * base;
    base *= 2 * uint64_t(r);
  }
  ids[i] = id;
}

// ---- bucket -----------------------------------------------------------------------------------
__device__ int group_of(const int32_t* offsets, int G, int64_t i) {
  int lo = 0, hi = G - 1;  // the last g with offsets[g] <= i (empty groups skipped)
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

__device__ uint64_t prefix_mod(int code, int L, int r) {
  if (code <= 0 || code >= L) return 0;
  uint64_t mod = 1;
  for (int l = 0; l < code; ++l) mod *= 2 * uint64_t(r);
  return mod;
}

// first[i] = the first row of i's group with i's key.
__global__ void first_row_kernel(int32_t* first, const uint64_t* ids, const int32_t* codes,
                                 const int32_t* offsets, int G, int64_t n, int L, int r) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int g = group_of(offsets, G, i);
  const int code = codes[g];
  const int64_t lo = offsets[g];
  if (code == 0) {
    first[i] = int32_t(i);
    return;
  }
  if (code < 0) {
    first[i] = int32_t(lo);
    return;
  }
  const uint64_t mod = prefix_mod(code, L, r);
  const uint64_t key = mod ? ids[i] % mod : ids[i];
  int64_t f = lo;
  while (f < i && (mod ? ids[f] % mod : ids[f]) != key) ++f;
  first[i] = int32_t(f);
}

// One thread per group numbers its buckets in row order (local numbers).
__global__ void number_buckets_kernel(int32_t* pos, int32_t* nbuckets, const int32_t* first,
                                      const int32_t* offsets, int G) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= G) return;
  int32_t B = 0;
  for (int64_t i = offsets[g]; i < offsets[g + 1]; ++i)
    pos[i] = first[i] == i ? B++ : pos[first[i]];
  nbuckets[g] = B;
}

// Local bucket numbers → centroid rows (groups' centroids one after another).
__global__ void offset_buckets_kernel(int32_t* pos, const int32_t* nbuckets, const int32_t* offsets,
                                      int G) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= G) return;
  int32_t base = 0;
  for (int q = 0; q < g; ++q) base += nbuckets[q];
  for (int64_t i = offsets[g]; i < offsets[g + 1]; ++i) pos[i] += base;
}

// ---- bucket sums and means --------------------------------------------------------------------
// Thread (g, c) adds the rows of group g in order: a bucket's rows are summed in row order.
template <typename T>
__global__ void bucket_sum_kernel(double* acc, int32_t* count, const T* x, const int32_t* pos,
                                  const int32_t* offsets, int C) {
  const int g = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int64_t i = offsets[g]; i < offsets[g + 1]; ++i) {
    acc[int64_t(pos[i]) * C + c] += double(to_f32(x[i * C + c]));
    if (count != nullptr && c == 0) ++count[pos[i]];
  }
}

template <typename T>
__global__ void bucket_out_kernel(T* out, const int32_t* count, const double* acc, int64_t B,
                                  int C) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int64_t b = idx / C;
  const double inv = count != nullptr ? (count[b] > 0 ? 1.0 / double(count[b]) : 0.0) : 1.0;
  out[idx] = from_f32<T>(float(acc[idx] * inv));
}

// ---- expand -----------------------------------------------------------------------------------
template <typename T>
__global__ void expand_kernel(T* yp, const T* yc, const T* xp, const T* xc, const int32_t* pos,
                              int64_t n, int C, bool compensate) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * C) return;
  const int64_t i = idx / C, q = idx % C, b = pos[i];
  const float y = to_f32(yc[b * C + q]);
  yp[idx] =
      from_f32<T>(compensate ? __fadd_rn(y, __fsub_rn(to_f32(xp[idx]), to_f32(xc[b * C + q]))) : y);
}

template <typename T>
__global__ void expand_backward_kernel(T* dxp, const T* dxc, const T* dyc, const T* dyp,
                                       const int32_t* pos, const int32_t* count, int64_t n, int C,
                                       bool compensate) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * C) return;
  const int64_t i = idx / C, q = idx % C, b = pos[i];
  const float dc = to_f32(dxc[b * C + q]);
  if (count[b] == 1) {
    dxp[idx] = from_f32<T>(dc);
    return;
  }
  const float inv = 1.0f / float(count[b]);
  dxp[idx] =
      from_f32<T>(compensate ? __fadd_rn(__fmul_rn(__fsub_rn(dc, to_f32(dyc[b * C + q])), inv),
                                         to_f32(dyp[idx]))
                             : __fmul_rn(dc, inv));
}

}  // namespace

void moe_capacity(int32_t* expert_kept, float* weight_kept, int32_t* counts_kept, int32_t* dropped,
                  const int32_t* expert, const float* weight, int N, int k, int E, int64_t cap,
                  cudaStream_t stream) {
  GROVE_CHECK(N >= 0 && k >= 1 && E > 0 && cap >= 0)
      << "moe_capacity: N=" << N << " k=" << k << " E=" << E << " cap=" << cap;
  capacity_kernel<<<blocks_for(E), kThreads, 0, stream>>>(expert_kept, weight_kept, counts_kept,
                                                          dropped, expert, weight, N, k, E, cap);
  GROVE_CUDA_CHECK_LAUNCH();
  dropped_total_kernel<<<1, 32, 0, stream>>>(counts_kept, dropped, E);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void lsh_hash(uint64_t* ids, const T* x, const float* rot, const T* mu, const int32_t* mu_row,
              int64_t n, int C, int L, int r, cudaStream_t stream) {
  if (n == 0) return;
  hash_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(ids, x, rot, mu, mu_row, n, C, L, r);
  GROVE_CUDA_CHECK_LAUNCH();
}

void lsh_bucket(int32_t* pos, int32_t* nbuckets, int32_t* scratch, const uint64_t* ids,
                const int32_t* codes, const int32_t* offsets, int G, int64_t n, int L, int r,
                cudaStream_t stream) {
  if (G == 0) return;
  if (n > 0) {
    first_row_kernel<<<blocks_for(n), kThreads, 0, stream>>>(scratch, ids, codes, offsets, G, n, L,
                                                             r);
    GROVE_CUDA_CHECK_LAUNCH();
  }
  number_buckets_kernel<<<blocks_for(G), kThreads, 0, stream>>>(pos, nbuckets, scratch, offsets, G);
  GROVE_CUDA_CHECK_LAUNCH();
  offset_buckets_kernel<<<blocks_for(G), kThreads, 0, stream>>>(pos, nbuckets, offsets, G);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void lsh_bucket_reduce(T* out, int32_t* count, double* acc, const T* x, const int32_t* pos,
                       const int32_t* offsets, int G, int64_t B, int C, bool mean,
                       cudaStream_t stream) {
  if (B == 0 || C == 0) return;
  GROVE_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(double) * B * C, stream));
  if (mean) GROVE_CUDA_CHECK(cudaMemsetAsync(count, 0, sizeof(int32_t) * B, stream));
  const dim3 grid(unsigned(G), unsigned((C + kThreads - 1) / kThreads));
  bucket_sum_kernel<T>
      <<<grid, kThreads, 0, stream>>>(acc, mean ? count : nullptr, x, pos, offsets, C);
  GROVE_CUDA_CHECK_LAUNCH();
  bucket_out_kernel<T>
      <<<blocks_for(B * C), kThreads, 0, stream>>>(out, mean ? count : nullptr, acc, B, C);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void lsh_expand(T* yp, const T* yc, const T* xp, const T* xc, const int32_t* pos, int64_t n, int C,
                bool compensate, cudaStream_t stream) {
  if (n == 0 || C == 0) return;
  expand_kernel<T>
      <<<blocks_for(n * C), kThreads, 0, stream>>>(yp, yc, xp, xc, pos, n, C, compensate);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void lsh_expand_backward(T* dxp, const T* dxc, const T* dyc, const T* dyp, const int32_t* pos,
                         const int32_t* count, int64_t n, int C, bool compensate,
                         cudaStream_t stream) {
  if (n == 0 || C == 0) return;
  expand_backward_kernel<T><<<blocks_for(n * C), kThreads, 0, stream>>>(dxp, dxc, dyc, dyp, pos,
                                                                        count, n, C, compensate);
  GROVE_CUDA_CHECK_LAUNCH();
}

#define GROVE_LSH_INSTANTIATE(T)                                                                  \
  template void lsh_hash<T>(uint64_t*, const T*, const float*, const T*, const int32_t*, int64_t, \
                            int, int, int, cudaStream_t);                                         \
  template void lsh_bucket_reduce<T>(T*, int32_t*, double*, const T*, const int32_t*,             \
                                     const int32_t*, int, int64_t, int, bool, cudaStream_t);      \
  template void lsh_expand<T>(T*, const T*, const T*, const T*, const int32_t*, int64_t, int,     \
                              bool, cudaStream_t);                                                \
  template void lsh_expand_backward<T>(T*, const T*, const T*, const T*, const int32_t*,          \
                                       const int32_t*, int64_t, int, bool, cudaStream_t);
GROVE_LSH_INSTANTIATE(float)
GROVE_LSH_INSTANTIATE(bf16)
#undef GROVE_LSH_INSTANTIATE

}  // namespace grove::cuda
