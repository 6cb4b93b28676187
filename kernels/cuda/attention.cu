// Attention forward and backward, tiled in the FlashAttention-2 manner: the [SQ, SK] score matrix
// is never stored; the forward keeps a running max / sum per query row and returns lse, the
// backward recomputes probabilities from q, k and lse.
//
// These scalar fp32-FMA kernels serve every T and 1 <= HD <= 256 (and the optional probs), and are
// the reference (attention_forward_reference / attention_backward_reference) for the bf16
// tensor-core kernels of attention_tc.cu, which attention_forward / attention_backward<bf16>
// take instead whenever attention_tc_supported() holds (HD 64 or 128, no probs; see the bottom).
//
// Tiles: Br = 32 query rows and Bc = 32 keys per step, 4 warps; a warp owns 8 query rows (forward,
// dq) or 8 keys (dk, dv accumulation); lane j of a warp handles key j of the tile when scores are
// formed. All arithmetic is fp32 whatever T is. Scores are kept in the log2 domain
// (x * scale * log2(e)) so exp2f can be used; lse is converted back to natural log.
//
//   forward : S = scale q k^T (masked), P = softmax(S), out = P v, lse = logsumexp(S)
//   backward: P = exp(S - lse), D_i = sum_d dout_i out_i, dS = P (dout v^T - D)
//             dv += P^T dout, dk += scale dS^T q  (kernel 1, one block per key tile and kv head,
//             looping over the query heads of its group: no atomics)
//             dq += scale dS k                  (kernel 2, one block per query tile and head)
//
// Masking: query i (position q_pos0 + i) sees key j (position k_pos0 + j) iff not causal or
// k_pos0 + j <= q_pos0 + i. A row that sees no key gets lse = -inf and a zero output, and
// contributes zero gradient (no NaN anywhere).
#include <type_traits>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::from_f32;
using detail::to_f32;

using attn::Dims;
using attn::k_index;
using attn::kLn2;
using attn::kLog2e;
using attn::q_index;
using attn::visible;

constexpr int kBr = 32;              // query rows per tile
constexpr int kBc = 32;              // keys per tile
constexpr int kWarps = 4;            // warps per block
constexpr int kRows = kBr / kWarps;  // query rows (or keys) per warp
constexpr int kMaxT = 8;             // head-dim slots per lane: HD <= 32 * kMaxT
constexpr int kThreads = kWarps * 32;
static_assert(kBc == 32, "lane j handles key j of a tile");

// One past the last key any of the query rows [i0, i0 + kBr) can see.
__device__ __forceinline__ int key_end(const Dims& s, int i0) {
  return attn::key_end(s, i0, kBr);
}

// rows x HD tile of a [S, B, heads, HD] tensor into shared memory (stride ld), zero past
// `rows_valid`.
template <typename T>
__device__ __forceinline__ void load_tile(float* dst, int ld, const T* src, int64_t row_stride,
                                          int rows, int rows_valid, int HD, float mul = 1.f) {
  for (int idx = threadIdx.x; idx < rows * HD; idx += blockDim.x) {
    int r = idx / HD, d = idx % HD;
    dst[r * ld + d] = r < rows_valid ? to_f32(src[r * row_stride + d]) * mul : 0.f;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(T* out, float* lse, const T* q, const T* k, const T* v, Dims s,
                             float scale_log2) {
  extern __shared__ float smem[];
  const int ld = s.HD + 1;  // odd stride: lanes reading different rows hit different banks
  float* Qs = smem;
  float* Ks = Qs + kBr * ld;
  float* Vs = Ks + kBc * ld;
  float* Ps = Vs + kBc * ld;  // [kBr][kBc]
  const int i0 = blockIdx.x * kBr, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (s.NH / s.NKV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t q_stride = int64_t{s.B} * s.NH * s.HD, k_stride = int64_t{s.B} * s.NKV * s.HD;

  load_tile(Qs, ld, q + q_index(s, i0, b, h), q_stride, kBr, s.SQ - i0, s.HD, scale_log2);
  float m[kRows], l[kRows], acc[kRows][kMaxT];
#pragma unroll
  for (int rr = 0; rr < kRows; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) acc[rr][t] = 0.f;
  }

  const int j_end = key_end(s, i0);
  for (int j0 = 0; j0 < j_end; j0 += kBc) {
    __syncthreads();  // the previous tile is no longer read
    load_tile(Ks, ld, k + k_index(s, j0, b, hk), k_stride, kBc, s.SK - j0, s.HD);
    load_tile(Vs, ld, v + k_index(s, j0, b, hk), k_stride, kBc, s.SK - j0, s.HD);
    __syncthreads();
    float sc[kRows];
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) sc[rr] = 0.f;
    for (int d = 0; d < s.HD; ++d) {
      float kv = Ks[lane * ld + d];
#pragma unroll
      for (int rr = 0; rr < kRows; ++rr) sc[rr] += Qs[(warp * kRows + rr) * ld + d] * kv;
    }
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) {
      int r = warp * kRows + rr;
      float x = visible(s, i0 + r, j0 + lane) ? sc[rr] : -INFINITY;
      float m_new = fmaxf(m[rr], detail::warp_max(x));
      float m_use = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: keep exp2 finite
      float p = exp2f(x - m_use);
      float alpha = exp2f(m[rr] - m_use);
      l[rr] = l[rr] * alpha + detail::warp_sum(p);
      m[rr] = m_new;
      Ps[r * kBc + lane] = p;
#pragma unroll
      for (int t = 0; t < kMaxT; ++t) acc[rr][t] *= alpha;
    }
    __syncwarp();
    for (int jj = 0; jj < kBc; ++jj) {
      float vv[kMaxT];
#pragma unroll
      for (int t = 0; t < kMaxT; ++t) {
        int d = lane + 32 * t;
        vv[t] = d < s.HD ? Vs[jj * ld + d] : 0.f;
      }
#pragma unroll
      for (int rr = 0; rr < kRows; ++rr) {
        float p = Ps[(warp * kRows + rr) * kBc + jj];
#pragma unroll
        for (int t = 0; t < kMaxT; ++t) acc[rr][t] += p * vv[t];
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRows; ++rr) {
    int i = i0 + warp * kRows + rr;
    if (i >= s.SQ) continue;
    float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
    T* o = out + q_index(s, i, b, h);
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) {
      int d = lane + 32 * t;
      if (d < s.HD) o[d] = from_f32<T>(acc[rr][t] * inv);
    }
    if (lane == 0)
      lse[(int64_t{b} * s.NH + h) * s.SQ + i] =
          l[rr] > 0.f ? (m[rr] + log2f(l[rr])) * kLn2 : -INFINITY;
  }
}

// Optional probabilities [B, NH, SQ, SK] from q, k and the final lse (one thread per entry).
template <typename T>
__global__ void attention_probs_kernel(T* probs, const float* lse, const T* q, const T* k, Dims s,
                                       float scale) {
  int64_t total = int64_t{s.B} * s.NH * s.SQ * s.SK;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    int j = static_cast<int>(idx % s.SK);
    int64_t bhi = idx / s.SK;  // (b * NH + h) * SQ + i
    int i = static_cast<int>(bhi % s.SQ);
    int h = static_cast<int>((bhi / s.SQ) % s.NH);
    int b = static_cast<int>(bhi / (int64_t{s.SQ} * s.NH));
    float L = lse[bhi];
    float p = 0.f;
    if (visible(s, i, j) && L != -INFINITY) {
      const T* qi = q + q_index(s, i, b, h);
      const T* kj = k + k_index(s, j, b, h / (s.NH / s.NKV));
      float dot = 0.f;
      for (int d = 0; d < s.HD; ++d) dot += to_f32(qi[d]) * to_f32(kj[d]);
      p = expf(dot * scale - L);
    }
    probs[idx] = from_f32<T>(p);
  }
}

// Loads q (or nothing), dout, lse and D = rowsum(dout * out) of query rows [i0, i0 + kBr) of head
// h; warp w handles rows w*kRows ... Rows past SQ get lse = -inf (fully masked).
template <typename T>
__device__ __forceinline__ void load_query_side(float* Qs, float* dOs, float* lse_s, float* D_s,
                                                int ld, const T* q, const T* dout, const T* out,
                                                const float* lse, const Dims& s, int i0, int b,
                                                int h) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int rr = 0; rr < kRows; ++rr) {
    int r = warp * kRows + rr, i = i0 + r;
    float dsum = 0.f;
    if (i < s.SQ) {
      int64_t base = q_index(s, i, b, h);
      for (int d = lane; d < s.HD; d += 32) {
        float g = to_f32(dout[base + d]);
        Qs[r * ld + d] = to_f32(q[base + d]);
        dOs[r * ld + d] = g;
        dsum += g * to_f32(out[base + d]);
      }
    } else {
      for (int d = lane; d < s.HD; d += 32) Qs[r * ld + d] = dOs[r * ld + d] = 0.f;
    }
    dsum = detail::warp_sum(dsum);
    if (lane == 0) {
      D_s[r] = dsum;
      lse_s[r] = i < s.SQ ? lse[(int64_t{b} * s.NH + h) * s.SQ + i] * kLog2e : -INFINITY;
    }
  }
}

// For the warp's kRows query rows and key j0 + lane: p = exp(S - lse) and dS = p (dp - D).
__device__ __forceinline__ void probs_and_dscores(float* p, float* ds, const float* Qs,
                                                  const float* dOs, const float* Ks,
                                                  const float* Vs, const float* lse_s,
                                                  const float* D_s, int ld, const Dims& s, int i0,
                                                  int j0, float scale_log2) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float sc[kRows], dp[kRows];
#pragma unroll
  for (int rr = 0; rr < kRows; ++rr) sc[rr] = dp[rr] = 0.f;
  for (int d = 0; d < s.HD; ++d) {
    float kv = Ks[lane * ld + d], vv = Vs[lane * ld + d];
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) {
      int r = warp * kRows + rr;
      sc[rr] += Qs[r * ld + d] * kv;
      dp[rr] += dOs[r * ld + d] * vv;
    }
  }
#pragma unroll
  for (int rr = 0; rr < kRows; ++rr) {
    int r = warp * kRows + rr;
    float L = lse_s[r];
    bool ok = visible(s, i0 + r, j0 + lane) && L != -INFINITY;
    p[rr] = ok ? exp2f(sc[rr] * scale_log2 - L) : 0.f;
    ds[rr] = p[rr] * (dp[rr] - D_s[r]);
  }
}

// Kernel 1: dk, dv for one key tile and kv head; loops over its query heads and query tiles.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_kernel(T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                                   const T* out, const float* lse, Dims s, float scale,
                                   float scale_log2) {
  extern __shared__ float smem[];
  const int ld = s.HD + 1, ldp = kBc + 1;
  float* Ks = smem;
  float* Vs = Ks + kBc * ld;
  float* Qs = Vs + kBc * ld;
  float* dOs = Qs + kBr * ld;
  float* dKs = dOs + kBr * ld;
  float* dVs = dKs + kBc * ld;
  float* Ps = dVs + kBc * ld;  // [kBr][ldp]
  float* dSs = Ps + kBr * ldp;
  float* lse_s = dSs + kBr * ldp;
  float* D_s = lse_s + kBr;
  const int j0 = blockIdx.x * kBc, hk = blockIdx.y, b = blockIdx.z;
  const int group = s.NH / s.NKV;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t k_stride = int64_t{s.B} * s.NKV * s.HD;

  load_tile(Ks, ld, k + k_index(s, j0, b, hk), k_stride, kBc, s.SK - j0, s.HD);
  load_tile(Vs, ld, v + k_index(s, j0, b, hk), k_stride, kBc, s.SK - j0, s.HD);
  for (int idx = threadIdx.x; idx < kBc * ld; idx += blockDim.x) dKs[idx] = dVs[idx] = 0.f;

  // Causal: query rows before the first key's position see none of this tile.
  int i_first = attn::first_query(s, j0);
  int i_begin = (i_first / kBr) * kBr;
  for (int g = 0; g < group; ++g) {
    const int h = hk * group + g;
    for (int i0 = i_begin; i0 < s.SQ; i0 += kBr) {
      __syncthreads();  // the previous query tile is no longer read
      load_query_side(Qs, dOs, lse_s, D_s, ld, q, dout, out, lse, s, i0, b, h);
      __syncthreads();
      float p[kRows], ds[kRows];
      probs_and_dscores(p, ds, Qs, dOs, Ks, Vs, lse_s, D_s, ld, s, i0, j0, scale_log2);
#pragma unroll
      for (int rr = 0; rr < kRows; ++rr) {
        Ps[(warp * kRows + rr) * ldp + lane] = p[rr];
        dSs[(warp * kRows + rr) * ldp + lane] = ds[rr];
      }
      __syncthreads();
      // This warp accumulates keys warp*kRows + jj; lane handles d = lane + 32 t.
      for (int d = lane; d < s.HD; d += 32) {
        float av[kRows], ak[kRows];
#pragma unroll
        for (int jj = 0; jj < kRows; ++jj) av[jj] = ak[jj] = 0.f;
        for (int r = 0; r < kBr; ++r) {
          float g_o = dOs[r * ld + d], qv = Qs[r * ld + d];
#pragma unroll
          for (int jj = 0; jj < kRows; ++jj) {
            int j = warp * kRows + jj;
            av[jj] += Ps[r * ldp + j] * g_o;
            ak[jj] += dSs[r * ldp + j] * qv;
          }
        }
#pragma unroll
        for (int jj = 0; jj < kRows; ++jj) {
          int j = warp * kRows + jj;
          dVs[j * ld + d] += av[jj];
          dKs[j * ld + d] += ak[jj];
        }
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kBc * s.HD; idx += blockDim.x) {
    int jj = idx / s.HD, d = idx % s.HD, j = j0 + jj;
    if (j >= s.SK) continue;
    int64_t o = k_index(s, j, b, hk) + d;
    dk[o] = from_f32<T>(to_f32(dk[o]) + scale * dKs[jj * ld + d]);
    dv[o] = from_f32<T>(to_f32(dv[o]) + dVs[jj * ld + d]);
  }
}

// Kernel 2: dq for one query tile and head; loops over the key tiles it can see.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(T* dq, const T* dout, const T* q, const T* k, const T* v,
                                 const T* out, const float* lse, Dims s, float scale,
                                 float scale_log2) {
  extern __shared__ float smem[];
  const int ld = s.HD + 1;
  float* Qs = smem;
  float* dOs = Qs + kBr * ld;
  float* Ks = dOs + kBr * ld;
  float* Vs = Ks + kBc * ld;
  float* dSs = Vs + kBc * ld;  // [kBr][kBc]
  float* lse_s = dSs + kBr * kBc;
  float* D_s = lse_s + kBr;
  const int i0 = blockIdx.x * kBr, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (s.NH / s.NKV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t k_stride = int64_t{s.B} * s.NKV * s.HD;

  load_query_side(Qs, dOs, lse_s, D_s, ld, q, dout, out, lse, s, i0, b, h);
  float acc[kRows][kMaxT];
#pragma unroll
  for (int rr = 0; rr < kRows; ++rr)
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) acc[rr][t] = 0.f;

  const int j_end = key_end(s, i0);
  for (int j0 = 0; j0 < j_end; j0 += kBc) {
    __syncthreads();
    load_tile(Ks, ld, k + k_index(s, j0, b, hk), k_stride, kBc, s.SK - j0, s.HD);
    load_tile(Vs, ld, v + k_index(s, j0, b, hk), k_stride, kBc, s.SK - j0, s.HD);
    __syncthreads();
    float p[kRows], ds[kRows];
    probs_and_dscores(p, ds, Qs, dOs, Ks, Vs, lse_s, D_s, ld, s, i0, j0, scale_log2);
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) dSs[(warp * kRows + rr) * kBc + lane] = ds[rr];
    __syncwarp();  // a warp only reads back its own rows
    for (int jj = 0; jj < kBc; ++jj) {
      float kv[kMaxT];
#pragma unroll
      for (int t = 0; t < kMaxT; ++t) {
        int d = lane + 32 * t;
        kv[t] = d < s.HD ? Ks[jj * ld + d] : 0.f;
      }
#pragma unroll
      for (int rr = 0; rr < kRows; ++rr) {
        float g = dSs[(warp * kRows + rr) * kBc + jj];
#pragma unroll
        for (int t = 0; t < kMaxT; ++t) acc[rr][t] += g * kv[t];
      }
    }
    __syncwarp();
  }
#pragma unroll
  for (int rr = 0; rr < kRows; ++rr) {
    int i = i0 + warp * kRows + rr;
    if (i >= s.SQ) continue;
    T* o = dq + q_index(s, i, b, h);
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) {
      int d = lane + 32 * t;
      if (d < s.HD) o[d] = from_f32<T>(to_f32(o[d]) + scale * acc[rr][t]);
    }
  }
}

Dims make_dims(const AttentionShape& a) {
  Dims s = attn::make_dims(a);
  GROVE_CHECK(a.HD <= 32 * kMaxT) << "attention: the CUDA kernel supports 1 <= HD <= " << 32 * kMaxT
                                  << ", got " << a.HD;
  return s;
}
using attn::set_smem;

}  // namespace

template <typename T>
void attention_forward_reference(T* out, float* lse, T* probs, const T* q, const T* k, const T* v,
                                 const AttentionShape& shape, cudaStream_t stream) {
  Dims s = make_dims(shape);
  if (s.SQ == 0 || s.B == 0 || s.NH == 0) return;
  const float scale = 1.f / sqrtf(static_cast<float>(s.HD));
  const int ld = s.HD + 1;
  size_t smem = sizeof(float) * ((kBr + 2 * kBc) * ld + kBr * kBc);
  set_smem(attention_forward_kernel<T>, smem);
  dim3 grid((s.SQ + kBr - 1) / kBr, s.NH, s.B);
  attention_forward_kernel<T>
      <<<grid, kThreads, smem, stream>>>(out, lse, q, k, v, s, scale * kLog2e);
  GROVE_CUDA_CHECK_LAUNCH();
  if (probs != nullptr && s.SK > 0) {
    int64_t total = int64_t{s.B} * s.NH * s.SQ * s.SK;
    attention_probs_kernel<T>
        <<<detail::grid_for(total, 256), 256, 0, stream>>>(probs, lse, q, k, s, scale);
    GROVE_CUDA_CHECK_LAUNCH();
  }
}

template <typename T>
void attention_backward_reference(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                                  const T* v, const T* out, const float* lse, const T* probs,
                                  const AttentionShape& shape, cudaStream_t stream) {
  (void)probs;  // recomputed from q, k and lse (see ops.h)
  Dims s = make_dims(shape);
  if (s.SQ == 0 || s.SK == 0 || s.B == 0 || s.NH == 0) return;
  const float scale = 1.f / sqrtf(static_cast<float>(s.HD));
  const int ld = s.HD + 1;

  size_t smem1 = sizeof(float) * (4 * kBc * ld + 2 * kBr * ld + 2 * kBr * (kBc + 1) + 2 * kBr);
  set_smem(attention_backward_dkdv_kernel<T>, smem1);
  dim3 grid1((s.SK + kBc - 1) / kBc, s.NKV, s.B);
  attention_backward_dkdv_kernel<T><<<grid1, kThreads, smem1, stream>>>(
      dk, dv, dout, q, k, v, out, lse, s, scale, scale * kLog2e);
  GROVE_CUDA_CHECK_LAUNCH();

  size_t smem2 = sizeof(float) * (2 * kBr * ld + 2 * kBc * ld + kBr * kBc + 2 * kBr);
  set_smem(attention_backward_dq_kernel<T>, smem2);
  dim3 grid2((s.SQ + kBr - 1) / kBr, s.NH, s.B);
  attention_backward_dq_kernel<T>
      <<<grid2, kThreads, smem2, stream>>>(dq, dout, q, k, v, out, lse, s, scale, scale * kLog2e);
  GROVE_CUDA_CHECK_LAUNCH();
}

// bf16 takes the tensor-core kernels (attention_tc.cu) where they apply; everything else, and
// fp32 always, the scalar kernels above.
template <typename T>
void attention_forward(T* out, float* lse, T* probs, const T* q, const T* k, const T* v,
                       const AttentionShape& shape, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (attention_tc_supported(shape, probs, {out, q, k, v})) {
      attention_tc_forward(out, lse, q, k, v, shape, stream);
      return;
    }
  }
  attention_forward_reference<T>(out, lse, probs, q, k, v, shape, stream);
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const float* lse, const T* probs, const AttentionShape& shape,
                        cudaStream_t stream) {
  if constexpr (std::is_same_v<T, bf16>) {
    // probs is not read by either backward: it does not decide the path.
    if (attention_tc_supported(shape, nullptr, {dq, dk, dv, dout, q, k, v, out})) {
      attention_tc_backward(dq, dk, dv, dout, q, k, v, out, lse, shape, stream);
      return;
    }
  }
  attention_backward_reference<T>(dq, dk, dv, dout, q, k, v, out, lse, probs, shape, stream);
}

// ---- Merge of partial results (contracts in ops.h) ---------------------------------------------
// One thread per row (b, h, i) in a grid-stride loop, fp32 whatever T is; the weights once per
// row, then HD multiply-adds. The same expressions as the CPU kernels (kernels/cpu/attention.cc).
namespace {

// Row r = (b·NH + h)·SQ + i of the lse layout → offset of its out row in [SQ, B, NH, HD].
__device__ __forceinline__ int64_t merge_out_row(int64_t r, int SQ, int B, int NH, int HD) {
  const int64_t bh = r / SQ, i = r % SQ;
  return ((i * B + bh / NH) * NH + bh % NH) * HD;
}

template <typename T>
__global__ void attention_merge_kernel(T* out, float* lse, const T* part_out, const float* part_lse,
                                       int SQ, int B, int NH, int HD, int row0, int SQp) {
  const int64_t rows = int64_t{B} * NH * SQp;
  GROVE_GRID_STRIDE(r, rows) {
    const int64_t bh = r / SQp, i = r % SQp;
    float* la = lse + bh * SQ + row0 + i;
    const float lb = part_lse[r];
    const float m = fmaxf(*la, lb);
    if (m == -INFINITY) continue;  // both empty: unchanged
    const float wa = expf(*la - m), wb = expf(lb - m);
    const float sum = wa + wb, inv = 1.f / sum;
    T* oa = out + merge_out_row(bh * SQ + row0 + i, SQ, B, NH, HD);
    const T* ob = part_out + merge_out_row(r, SQp, B, NH, HD);
    for (int d = 0; d < HD; ++d)
      oa[d] = from_f32<T>((to_f32(oa[d]) * wa + to_f32(ob[d]) * wb) * inv);
    *la = m + logf(sum);
  }
}

template <typename T>
__global__ void attention_merge_scale_kernel(T* num, float* den, const T* out, const float* lse,
                                             const float* lse_max, int SQ, int B, int NH, int HD) {
  const int64_t rows = int64_t{B} * NH * SQ;
  GROVE_GRID_STRIDE(r, rows) {
    const float w = lse[r] == -INFINITY ? 0.f : expf(lse[r] - lse_max[r]);
    den[r] = w;
    const int64_t o = merge_out_row(r, SQ, B, NH, HD);
    for (int d = 0; d < HD; ++d) num[o + d] = from_f32<T>(to_f32(out[o + d]) * w);
  }
}

template <typename T>
__global__ void attention_merge_finish_kernel(T* out, float* lse, const T* num, const float* den,
                                              const float* lse_max, int SQ, int B, int NH, int HD) {
  const int64_t rows = int64_t{B} * NH * SQ;
  GROVE_GRID_STRIDE(r, rows) {
    const float d = den[r], m = lse_max[r];
    const float inv = d > 0 ? 1.f / d : 0.f;
    const int64_t o = merge_out_row(r, SQ, B, NH, HD);
    for (int c = 0; c < HD; ++c) out[o + c] = from_f32<T>(to_f32(num[o + c]) * inv);
    lse[r] = d > 0 ? m + logf(d) : -INFINITY;
  }
}

constexpr int kMergeThreads = 128;

}  // namespace

template <typename T>
void attention_merge(T* out, float* lse, const T* part_out, const float* part_lse, int SQ, int B,
                     int NH, int HD, int row0, int SQp, cudaStream_t stream) {
  GROVE_CHECK(row0 >= 0 && SQp >= 0 && row0 + SQp <= SQ)
      << "attention_merge: rows [" << row0 << ", " << row0 + SQp << ") outside [0, " << SQ << ")";
  const int64_t rows = int64_t{B} * NH * SQp;
  if (rows == 0) return;
  attention_merge_kernel<T><<<detail::grid_for(rows, kMergeThreads), kMergeThreads, 0, stream>>>(
      out, lse, part_out, part_lse, SQ, B, NH, HD, row0, SQp);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void attention_merge_scale(T* num, float* den, const T* out, const float* lse, const float* lse_max,
                           int SQ, int B, int NH, int HD, cudaStream_t stream) {
  const int64_t rows = int64_t{B} * NH * SQ;
  if (rows == 0) return;
  attention_merge_scale_kernel<T>
      <<<detail::grid_for(rows, kMergeThreads), kMergeThreads, 0, stream>>>(num, den, out, lse,
                                                                            lse_max, SQ, B, NH, HD);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void attention_merge_finish(T* out, float* lse, const T* num, const float* den,
                            const float* lse_max, int SQ, int B, int NH, int HD,
                            cudaStream_t stream) {
  const int64_t rows = int64_t{B} * NH * SQ;
  if (rows == 0) return;
  attention_merge_finish_kernel<T>
      <<<detail::grid_for(rows, kMergeThreads), kMergeThreads, 0, stream>>>(out, lse, num, den,
                                                                            lse_max, SQ, B, NH, HD);
  GROVE_CUDA_CHECK_LAUNCH();
}

#define GROVE_INSTANTIATE(T)                                                                     \
  template void attention_merge<T>(T*, float*, const T*, const float*, int, int, int, int, int,  \
                                   int, cudaStream_t);                                           \
  template void attention_merge_scale<T>(T*, float*, const T*, const float*, const float*, int,  \
                                         int, int, int, cudaStream_t);                           \
  template void attention_merge_finish<T>(T*, float*, const T*, const float*, const float*, int, \
                                          int, int, int, cudaStream_t);                          \
  template void attention_forward<T>(T*, float*, T*, const T*, const T*, const T*,               \
                                     const AttentionShape&, cudaStream_t);                       \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                      const T*, const float*, const T*, const AttentionShape&,   \
                                      cudaStream_t);                                             \
  template void attention_forward_reference<T>(T*, float*, T*, const T*, const T*, const T*,     \
                                               const AttentionShape&, cudaStream_t);             \
  template void attention_backward_reference<T>(T*, T*, T*, const T*, const T*, const T*,        \
                                                const T*, const T*, const float*, const T*,      \
                                                const AttentionShape&, cudaStream_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(bf16)
#undef GROVE_INSTANTIATE

}  // namespace grove::cuda
