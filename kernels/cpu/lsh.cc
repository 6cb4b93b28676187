// Capacity dropping and the LSH-compressed dispatch's kernels, forward next to backward. Contracts
// and legend in ops.h; the same semantics and expressions as kernels/cuda/lsh.cu:
//   capacity : per expert, the first cap assignments in (slot, token) order are kept
//   hash     : v_l = rot_l·(x − μ) in fp32 over c = 0..C-1, code_l = 2·argmax|v_l| + (v < 0),
//              id = Σ_l code_l·(2r)^l
//   bucket   : per group, rows with equal (prefix) ids share a bucket, numbered by first row
//   reduce   : c_b = Σ_{i ∈ b} x_i (/ n_b), in double in row order
//   expand   : y_i = y_b + (x_i − c_b);  backward: dx_i = (dc_b − dy_b)/n_b + dy_i  (n_b = 1: dc_b)
#include <cmath>
#include <cstdint>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/ops.h"

namespace grove::cpu {
namespace {

// The key a row is bucketed by under `code` (see lsh_bucket in ops.h).
uint64_t bucket_key(uint64_t id, int64_t row, int code, int L, int r) {
  if (code == 0) return uint64_t(row);
  if (code < 0) return 0;
  if (code >= L) return id;
  uint64_t mod = 1;
  for (int l = 0; l < code; ++l) mod *= 2 * uint64_t(r);
  return id % mod;
}

}  // namespace

void moe_capacity(int32_t* expert_kept, float* weight_kept, int32_t* counts_kept, int32_t* dropped,
                  const int32_t* expert, const float* weight, int N, int k, int E, int64_t cap) {
  GROVE_CHECK(N >= 0 && k >= 1 && E > 0 && cap >= 0)
      << "moe_capacity: N=" << N << " k=" << k << " E=" << E << " cap=" << cap;
  std::fill(counts_kept, counts_kept + E + 1, 0);
  std::fill(dropped, dropped + E, 0);
  for (int j = 0; j < k; ++j) {
    for (int n = 0; n < N; ++n) {
      const int64_t a = int64_t(n) * k + j;
      const int32_t e = expert[a];
      if (counts_kept[e] < cap) {
        ++counts_kept[e];
        expert_kept[a] = e;
        weight_kept[a] = weight[a];
      } else {
        ++dropped[e];
        ++counts_kept[E];
        expert_kept[a] = E;
        weight_kept[a] = 0.0f;
      }
    }
  }
}

template <typename T>
void lsh_hash(uint64_t* ids, const T* x, const float* rot, const T* mu, const int32_t* mu_row,
              int64_t n, int C, int L, int r) {
#pragma omp parallel for schedule(static) if (n >= 256)
  for (int64_t i = 0; i < n; ++i) {
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
          const float xc = m != nullptr ? float(xi[c]) - float(m[c]) : float(xi[c]);
          v += xc * q[c];
        }
        if (o == 0 || std::fabs(v) > std::fabs(vbest)) {
          best = o;
          vbest = v;
        }
      }
      id += (2 * uint64_t(best) + (vbest < 0 ? 1 : 0)) * base;
      base *= 2 * uint64_t(r);
    }
    ids[i] = id;
  }
}

void lsh_bucket(int32_t* pos, int32_t* nbuckets, int32_t* /*scratch: the GPU's*/,
                const uint64_t* ids, const int32_t* codes, const int32_t* offsets, int G, int64_t n,
                int L, int r) {
  GROVE_CHECK(offsets[G] == n) << "lsh_bucket: offsets end at " << offsets[G] << ", not n=" << n;
  std::unordered_map<uint64_t, int32_t> first;
  int32_t base = 0;
  for (int g = 0; g < G; ++g) {
    first.clear();
    int32_t B = 0;
    for (int64_t i = offsets[g]; i < offsets[g + 1]; ++i) {
      auto [it, inserted] =
          first.try_emplace(bucket_key(ids[i], i - offsets[g], codes[g], L, r), B);
      if (inserted) ++B;
      pos[i] = base + it->second;
    }
    nbuckets[g] = B;
    base += B;
  }
}

template <typename T>
void lsh_bucket_reduce(T* out, int32_t* count, double* acc, const T* x, const int32_t* pos,
                       const int32_t* offsets, int G, int64_t B, int C, bool mean) {
  std::memset(acc, 0, sizeof(double) * B * C);
  if (mean) std::memset(count, 0, sizeof(int32_t) * B);
  for (int64_t i = offsets[0]; i < offsets[G]; ++i) {
    double* s = acc + int64_t(pos[i]) * C;
    const T* xi = x + i * C;
    if (mean) ++count[pos[i]];
    for (int c = 0; c < C; ++c) s[c] += double(xi[c]);
  }
#pragma omp parallel for schedule(static) if (B >= 256)
  for (int64_t b = 0; b < B; ++b) {
    const double inv = mean ? (count[b] > 0 ? 1.0 / double(count[b]) : 0.0) : 1.0;
    for (int c = 0; c < C; ++c) out[b * C + c] = T(acc[b * C + c] * inv);
  }
}

template <typename T>
void lsh_expand(T* yp, const T* yc, const T* xp, const T* xc, const int32_t* pos, int64_t n, int C,
                bool compensate) {
#pragma omp parallel for schedule(static) if (n >= 256)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = pos[i];
    T* o = yp + i * C;
    const T* y = yc + b * C;
    const T* x = xp + i * C;
    const T* c = xc + b * C;
    for (int q = 0; q < C; ++q) o[q] = compensate ? y[q] + (x[q] - c[q]) : y[q];
  }
}

template <typename T>
void lsh_expand_backward(T* dxp, const T* dxc, const T* dyc, const T* dyp, const int32_t* pos,
                         const int32_t* count, int64_t n, int C, bool compensate) {
#pragma omp parallel for schedule(static) if (n >= 256)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = pos[i];
    T* d = dxp + i * C;
    const T* dc = dxc + b * C;
    if (count[b] == 1) {
      std::memcpy(d, dc, sizeof(T) * C);
      continue;
    }
    const T inv = T(1) / T(count[b]);
    const T* dy = dyc + b * C;
    const T* g = dyp + i * C;
    for (int q = 0; q < C; ++q) d[q] = compensate ? (dc[q] - dy[q]) * inv + g[q] : dc[q] * inv;
  }
}

#define GROVE_LSH_INSTANTIATE(T)                                                                  \
  template void lsh_hash<T>(uint64_t*, const T*, const float*, const T*, const int32_t*, int64_t, \
                            int, int, int);                                                       \
  template void lsh_bucket_reduce<T>(T*, int32_t*, double*, const T*, const int32_t*,             \
                                     const int32_t*, int, int64_t, int, bool);                    \
  template void lsh_expand<T>(T*, const T*, const T*, const T*, const int32_t*, int64_t, int,     \
                              bool);                                                              \
  template void lsh_expand_backward<T>(T*, const T*, const T*, const T*, const int32_t*,          \
                                       const int32_t*, int64_t, int, bool);
GROVE_LSH_INSTANTIATE(float)
GROVE_LSH_INSTANTIATE(double)
#undef GROVE_LSH_INSTANTIATE

}  // namespace grove::cpu
