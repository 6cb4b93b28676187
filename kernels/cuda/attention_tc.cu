// bf16 attention forward and backward on tensor cores (FlashAttention-2), through the WMMA API:
// 16x16x16 bf16 fragments with fp32 accumulators. Same contract as the scalar kernels in
// attention.cu (see ops.h), for HD in {64, 128}; attention_forward / attention_backward<bf16>
// dispatch here when attention_tc_supported() says so.
//
// Legend: Br = 64 query rows and Bc = 64 keys per tile; HD head dim (64 or 128). Scores are kept in
// the log2 domain (x * scale * log2(e)) so exp2f can be used; lse is stored as natural log.
//
//   forward : S = scale q k^T (masked), P = softmax(S), out = P v, lse = logsumexp(S)
//   backward: P = exp(S - lse), D_i = sum_d dout_i out_i, dS = P (dout v^T - D)
//             dv += P^T dout, dk += scale dS^T q   (dkdv kernel: one block per key tile and kv
//             head, looping over the query heads of its group and the query tiles: no atomics)
//             dq += scale dS k                     (dq kernel: one block per query tile and head)
// Everything is deterministic (fixed summation order, no atomics).
//
// Precision: operands are bf16 (q, k, v, dout as given; P and dS rounded to bf16 before their
// matrix products), every product sum is fp32 on the tensor cores, and the softmax statistics
// (running max m, running sum l, lse, D) are fp32. Outputs are rounded to bf16 once; gradients
// are accumulated as bf16(old + fp32 increment), like the scalar kernels.
//
// WMMA fragment layouts are opaque, so everything that needs to know the (row, col) of an element
// goes through shared memory: score tiles are stored there for the softmax / dS computation, and
// per-row factors are applied to an accumulator fragment by loading a 16x16 tile whose row r holds
// the factor of row r into an accumulator fragment of the same type and multiplying elementwise.
// That is exact bookkeeping, not a guess about the layout: load_matrix_sync of an accumulator
// places element (r, c) in the slot where mma_sync produces element (r, c) (mma_sync computes
// D = A B + C elementwise), so two accumulator fragments of one type agree slot by slot.
//
// Tails: tiles are always full in shared memory; rows past SQ (queries) or SK (keys) are loaded as
// zeros and masked by `visible`, so they contribute exactly 0 (0 * 0, never 0 * garbage).
// Masking: causal key tiles entirely after a query tile's last row are skipped (forward, dq), and
// query tiles entirely before a key tile's first visible row are skipped (dk, dv).
#include <mma.h>

#include <cstdint>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

namespace wmma = nvcuda::wmma;
using attn::Dims;
using attn::k_index;
using attn::kLn2;
using attn::kLog2e;
using attn::q_index;
using attn::visible;

constexpr int kBr = 64;              // query rows per tile
constexpr int kBc = 64;              // keys per tile
constexpr int kFwdWarps = kBr / 16;  // forward: a warp owns 16 query rows
constexpr int kFwdThreads = kFwdWarps * 32;
constexpr int kBwdWarps = 8;  // backward: 16 blocks of 16x16 scores, two per warp
constexpr int kBwdThreads = kBwdWarps * 32;
static_assert(kBr == 64 && kBc == 64, "the warp-to-block maps below assume 64 x 64 tiles");

constexpr int kLdS = kBc + 4;  // fp32 stride of the forward's per-warp score rows (see softmax)
constexpr int kLdP = kBc + 8;  // bf16 stride of P / dS tiles [kBr][kLdP]

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major>;  // A^T in memory
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;  // B^T in memory
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Shared-memory carving: regions aligned to 128 bytes (WMMA needs 32-byte aligned pointers).
constexpr size_t align128(size_t bytes) {
  return (bytes + 127) / 128 * 128;
}
template <typename X>
__device__ __forceinline__ X* region(unsigned char* base, size_t offset) {
  return reinterpret_cast<X*>(base + offset);
}

// rows x HD tile of a [S, B, heads, HD] tensor (row r at src + r * row_stride) into shared memory
// with row stride HD + 8, in 16-byte vectors; rows >= rows_valid are zero.
template <int HD, int kRows>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t row_stride,
                                          int rows_valid) {
  constexpr int kVecs = HD / 8;
  for (int idx = threadIdx.x; idx < kRows * kVecs; idx += blockDim.x) {
    const int r = idx / kVecs, c = (idx % kVecs) * 8;
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (r < rows_valid) val = *reinterpret_cast<const uint4*>(src + r * row_stride + c);
    *reinterpret_cast<uint4*>(dst + r * (HD + 8) + c) = val;
  }
}

// dst[r * row_stride + c] = bf16(dst + mul * f(r, c)) for the rows r < rows_valid of one 16x16
// accumulator fragment, through the warp's 256-float staging buffer. Lane l handles
// (r, c) = (l / 16 + 2 t, l % 16), t = 0..7: conflict-free reads of the 16-float rows.
__device__ __forceinline__ void accumulate_fragment(bf16* dst, int64_t row_stride, int rows_valid,
                                                    const FragC& f, float* stage, float mul) {
  const int lane = threadIdx.x & 31;
  wmma::store_matrix_sync(stage, f, 16, wmma::mem_row_major);
  __syncwarp();
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    const int r = lane / 16 + 2 * t, c = lane % 16;
    if (r < rows_valid) {
      bf16* p = dst + r * row_stride + c;
      *p = __float2bfloat16_rn(__bfloat162float(*p) + mul * stage[r * 16 + c]);
    }
  }
  __syncwarp();  // the staging buffer is reused by the next call
}

// ---- forward ----------------------------------------------------------------------------------
template <int HD>
struct FwdSmem {
  static constexpr int kLd = HD + 8;  // bf16 row stride of Q, K, V (16-byte rows, no conflicts)
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + align128(sizeof(bf16) * kBr * kLd);
  static constexpr size_t kV = kK + align128(sizeof(bf16) * kBc * kLd);
  static constexpr size_t kS = kV + align128(sizeof(bf16) * kBc * kLd);    // per warp [16][kLdS]
  static constexpr size_t kP = kS + align128(sizeof(float) * kBr * kLdS);  // per warp [16][kLdP]
  static constexpr size_t kR = kP + align128(sizeof(bf16) * kBr * kLdP);   // per warp [16][16]
  static constexpr size_t kBytes = kR + align128(sizeof(float) * kFwdWarps * 256);
};

// One block per (query tile, head, batch); warp w owns query rows [16 w, 16 w + 16) of the tile.
// Per key tile: S = Q K^T (tensor cores) -> the warp's score rows in shared memory -> online
// softmax in fp32 (4 lanes per row) -> P (bf16) and the rescale factors alpha -> O = alpha O + P V.
template <int HD>
__global__ void __launch_bounds__(kFwdThreads)
    attention_tc_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                Dims s, float scale_log2) {
  using L = FwdSmem<HD>;
  constexpr int kLd = L::kLd;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = region<bf16>(smem, L::kQ);
  bf16* Ks = region<bf16>(smem, L::kK);
  bf16* Vs = region<bf16>(smem, L::kV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* Sw = region<float>(smem, L::kS) + warp * 16 * kLdS;  // this warp's 16 score rows
  bf16* Pw = region<bf16>(smem, L::kP) + warp * 16 * kLdP;    // its 16 probability rows
  float* Rw = region<float>(smem, L::kR) + warp * 256;        // its row-factor tile
  const int i0 = blockIdx.x * kBr, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (s.NH / s.NKV);
  const int64_t q_stride = int64_t{s.B} * s.NH * HD, k_stride = int64_t{s.B} * s.NKV * HD;

  load_tile<HD, kBr>(Qs, q + q_index(s, i0, b, h), q_stride, s.SQ - i0);

  FragC o[HD / 16];
#pragma unroll
  for (int n = 0; n < HD / 16; ++n) wmma::fill_fragment(o[n], 0.f);
  // Softmax state: lane owns rows r = lane / 4 + 8 * pass of the warp's 16 (pass = 0, 1), with
  // columns c = 4 t + quad; the 4 lanes of a row keep identical copies of m and l.
  const int quad = lane & 3;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  const int j_end = attn::key_end(s, i0, kBr);
  for (int j0 = 0; j0 < j_end; j0 += kBc) {
    __syncthreads();  // every warp is done with the previous K, V (and Q is visible)
    load_tile<HD, kBc>(Ks, k + k_index(s, j0, b, hk), k_stride, s.SK - j0);
    load_tile<HD, kBc>(Vs, v + k_index(s, j0, b, hk), k_stride, s.SK - j0);
    __syncthreads();

    // S (16 x 64) = Q_w K^T; K^T is K read column-major.
    FragC sc[kBc / 16];
#pragma unroll
    for (int n = 0; n < kBc / 16; ++n) wmma::fill_fragment(sc[n], 0.f);
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      FragA a;
      wmma::load_matrix_sync(a, Qs + warp * 16 * kLd + kk * 16, kLd);
#pragma unroll
      for (int n = 0; n < kBc / 16; ++n) {
        FragBT bt;
        wmma::load_matrix_sync(bt, Ks + n * 16 * kLd + kk * 16, kLd);
        wmma::mma_sync(sc[n], a, bt, sc[n]);
      }
    }
#pragma unroll
    for (int n = 0; n < kBc / 16; ++n)
      wmma::store_matrix_sync(Sw + n * 16, sc[n], kLdS, wmma::mem_row_major);
    __syncwarp();

    // Online softmax. With the row stride kLdS = 68 (= 4 mod 32 banks), the 32 lanes reading
    // (r, 4 t + quad) for r = 0..7 hit 32 different banks.
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
      const int r = lane / 4 + 8 * pass, i = i0 + warp * 16 + r;
      float x[kBc / 4];
      float mx = -INFINITY;
#pragma unroll
      for (int t = 0; t < kBc / 4; ++t) {
        const int c = 4 * t + quad;
        x[t] = visible(s, i, j0 + c) ? Sw[r * kLdS + c] * scale_log2 : -INFINITY;
        mx = fmaxf(mx, x[t]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[pass], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: keep exp2 finite
      const float alpha = exp2f(m[pass] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int t = 0; t < kBc / 4; ++t) {
        const float p = exp2f(x[t] - m_use);
        sum += p;
        Pw[r * kLdP + 4 * t + quad] = __float2bfloat16_rn(p);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l[pass] = l[pass] * alpha + sum;
      m[pass] = m_new;
#pragma unroll
      for (int t = 0; t < 4; ++t) Rw[r * 16 + quad * 4 + t] = alpha;
    }
    __syncwarp();

    // O = diag(alpha) O + P V.
    FragC alpha_f;
    wmma::load_matrix_sync(alpha_f, Rw, 16, wmma::mem_row_major);
#pragma unroll
    for (int n = 0; n < HD / 16; ++n)
#pragma unroll
      for (int e = 0; e < o[n].num_elements; ++e) o[n].x[e] *= alpha_f.x[e];
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      FragA pa;
      wmma::load_matrix_sync(pa, Pw + kk * 16, kLdP);
#pragma unroll
      for (int n = 0; n < HD / 16; ++n) {
        FragB vb;
        wmma::load_matrix_sync(vb, Vs + kk * 16 * kLd + n * 16, kLd);
        wmma::mma_sync(o[n], pa, vb, o[n]);
      }
    }
    // Sw, Pw and Rw are rewritten only after the next iteration's __syncthreads.
  }

  // out = O / l (0 for a row that saw no key), lse = m + log2(l) in natural log (-inf if none).
  __syncwarp();  // every lane is done reading Rw
#pragma unroll
  for (int pass = 0; pass < 2; ++pass) {
    const int r = lane / 4 + 8 * pass, i = i0 + warp * 16 + r;
    if (quad == 0) Rw[r] = l[pass] > 0.f ? 1.f / l[pass] : 0.f;
    if (quad == 0 && i < s.SQ)
      lse[(int64_t{b} * s.NH + h) * s.SQ + i] =
          l[pass] > 0.f ? (m[pass] + log2f(l[pass])) * kLn2 : -INFINITY;
  }
  __syncwarp();
  const int row0 = i0 + warp * 16;
#pragma unroll
  for (int n = 0; n < HD / 16; ++n) {
    wmma::store_matrix_sync(Sw, o[n], 16, wmma::mem_row_major);
    __syncwarp();
#pragma unroll
    for (int t = 0; t < 8; ++t) {
      const int r = lane / 16 + 2 * t, c = lane % 16;
      if (row0 + r < s.SQ)
        out[q_index(s, row0 + r, b, h) + n * 16 + c] = __float2bfloat16_rn(Sw[r * 16 + c] * Rw[r]);
    }
    __syncwarp();
  }
}

// ---- backward ---------------------------------------------------------------------------------
// D[b, h, i] = sum_d dout * out (fp32), one warp per row; same layout as lse.
template <int HD>
__global__ void attention_tc_dot_kernel(float* D, const bf16* dout, const bf16* out, Dims s) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = int64_t{s.B} * s.NH * s.SQ;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x >> 5);
  for (int64_t row = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) >> 5; row < rows;
       row += warps) {
    const int i = static_cast<int>(row % s.SQ);
    const int h = static_cast<int>((row / s.SQ) % s.NH);
    const int b = static_cast<int>(row / (int64_t{s.SQ} * s.NH));
    const int64_t base = q_index(s, i, b, h);
    float acc = 0.f;
#pragma unroll
    for (int d = lane; d < HD; d += 32)
      acc += __bfloat162float(dout[base + d]) * __bfloat162float(out[base + d]);
    acc = detail::warp_sum(acc);
    if (lane == 0) D[row] = acc;
  }
}

// Row statistics of query rows [i0, i0 + kBr) of head h: lse in the log2 domain and D; rows past
// SQ get lse = -inf (nothing visible) and D = 0.
__device__ __forceinline__ void load_row_stats(float* lse_s, float* D_s, const float* lse,
                                               const float* D, const Dims& s, int i0, int b,
                                               int h) {
  for (int r = threadIdx.x; r < kBr; r += blockDim.x) {
    const int i = i0 + r;
    const int64_t row = (int64_t{b} * s.NH + h) * s.SQ + i;
    lse_s[r] = i < s.SQ ? lse[row] * kLog2e : -INFINITY;
    D_s[r] = i < s.SQ ? D[row] : 0.f;
  }
}

// For the 16x16 block (query rows 16 qb.., keys 16 kb.. of the current tiles): S = Q K^T and
// dP = dO V^T on tensor cores, staged in the warp's 512 floats; then P = exp2(S scale_log2 - lse)
// (0 where masked or lse = -inf) and dS = P (dP - D), written as bf16 into Ps (if not null) and dSs
// ([kBr][kLdP]). Lane l handles (r, c) = (l / 16 + 2 t, l % 16), t = 0..7.
template <int HD>
__device__ __forceinline__ void probs_and_dscores(bf16* Ps, bf16* dSs, float* stage, const bf16* Qs,
                                                  const bf16* dOs, const bf16* Ks, const bf16* Vs,
                                                  const float* lse_s, const float* D_s,
                                                  const Dims& s, int i0, int j0, int qb, int kb,
                                                  float scale_log2) {
  constexpr int kLd = HD + 8;
  FragC sc, dp;
  wmma::fill_fragment(sc, 0.f);
  wmma::fill_fragment(dp, 0.f);
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    FragA a;
    FragBT bt;
    wmma::load_matrix_sync(a, Qs + qb * 16 * kLd + kk * 16, kLd);
    wmma::load_matrix_sync(bt, Ks + kb * 16 * kLd + kk * 16, kLd);
    wmma::mma_sync(sc, a, bt, sc);
    wmma::load_matrix_sync(a, dOs + qb * 16 * kLd + kk * 16, kLd);
    wmma::load_matrix_sync(bt, Vs + kb * 16 * kLd + kk * 16, kLd);
    wmma::mma_sync(dp, a, bt, dp);
  }
  wmma::store_matrix_sync(stage, sc, 16, wmma::mem_row_major);
  wmma::store_matrix_sync(stage + 256, dp, 16, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    const int r = lane / 16 + 2 * t, c = lane % 16;
    const int row = qb * 16 + r, col = kb * 16 + c;
    const float L = lse_s[row];
    const bool ok = visible(s, i0 + row, j0 + col) && L != -INFINITY;
    const float p = ok ? exp2f(stage[r * 16 + c] * scale_log2 - L) : 0.f;
    const float ds = p * (stage[256 + r * 16 + c] - D_s[row]);
    if (Ps != nullptr) Ps[row * kLdP + col] = __float2bfloat16_rn(p);
    dSs[row * kLdP + col] = __float2bfloat16_rn(ds);
  }
  __syncwarp();  // the staging buffer is reused by the warp's next block
}

template <int HD>
struct DkdvSmem {
  static constexpr int kLd = HD + 8;
  static constexpr size_t kK = 0;
  static constexpr size_t kV = kK + align128(sizeof(bf16) * kBc * kLd);
  static constexpr size_t kQ = kV + align128(sizeof(bf16) * kBc * kLd);
  static constexpr size_t kdO = kQ + align128(sizeof(bf16) * kBr * kLd);
  static constexpr size_t kP = kdO + align128(sizeof(bf16) * kBr * kLd);
  static constexpr size_t kdS = kP + align128(sizeof(bf16) * kBr * kLdP);
  static constexpr size_t kStage = kdS + align128(sizeof(bf16) * kBr * kLdP);  // 512 per warp
  static constexpr size_t kLse = kStage + align128(sizeof(float) * kBwdWarps * 512);
  static constexpr size_t kD = kLse + align128(sizeof(float) * kBr);
  static constexpr size_t kBytes = kD + align128(sizeof(float) * kBr);
};

// dk, dv for one key tile and kv head. Warp w computes the score blocks (qb, kb) = (w / 4, w % 4)
// and (w / 4 + 2, w % 4), and accumulates keys [16 (w % 4), +16) x dims [(w / 4) HD/2, +HD/2) of
// dv and dk in registers over every query tile of every query head of the group.
// Two blocks per SM (<= 128 registers per thread; the shared memory allows two at HD = 128).
template <int HD>
__global__ void __launch_bounds__(kBwdThreads, 2)
    attention_tc_dkdv_kernel(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                             const bf16* v, const float* lse, const float* D, Dims s, float scale,
                             float scale_log2) {
  using L = DkdvSmem<HD>;
  constexpr int kLd = L::kLd, kN = HD / 32;  // 16-wide dim blocks per warp
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Ks = region<bf16>(smem, L::kK);
  bf16* Vs = region<bf16>(smem, L::kV);
  bf16* Qs = region<bf16>(smem, L::kQ);
  bf16* dOs = region<bf16>(smem, L::kdO);
  bf16* Ps = region<bf16>(smem, L::kP);
  bf16* dSs = region<bf16>(smem, L::kdS);
  float* lse_s = region<float>(smem, L::kLse);
  float* D_s = region<float>(smem, L::kD);
  const int warp = threadIdx.x >> 5;
  float* stage = region<float>(smem, L::kStage) + warp * 512;
  const int j0 = blockIdx.x * kBc, hk = blockIdx.y, b = blockIdx.z;
  const int group = s.NH / s.NKV;
  const int kb = warp % 4, d0 = (warp / 4) * (HD / 2);
  const int64_t q_stride = int64_t{s.B} * s.NH * HD, k_stride = int64_t{s.B} * s.NKV * HD;

  load_tile<HD, kBc>(Ks, k + k_index(s, j0, b, hk), k_stride, s.SK - j0);
  load_tile<HD, kBc>(Vs, v + k_index(s, j0, b, hk), k_stride, s.SK - j0);
  FragC dv_acc[kN], dk_acc[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    wmma::fill_fragment(dv_acc[n], 0.f);
    wmma::fill_fragment(dk_acc[n], 0.f);
  }

  // Causal: query tiles before the first row that sees key j0 see none of this tile.
  const int i_begin = attn::first_query(s, j0) / kBr * kBr;
  for (int g = 0; g < group; ++g) {
    const int h = hk * group + g;
    for (int i0 = i_begin; i0 < s.SQ; i0 += kBr) {
      __syncthreads();  // every warp is done with the previous query tile (K, V are visible)
      load_tile<HD, kBr>(Qs, q + q_index(s, i0, b, h), q_stride, s.SQ - i0);
      load_tile<HD, kBr>(dOs, dout + q_index(s, i0, b, h), q_stride, s.SQ - i0);
      load_row_stats(lse_s, D_s, lse, D, s, i0, b, h);
      __syncthreads();
      for (int blk = warp; blk < 16; blk += kBwdWarps)
        probs_and_dscores<HD>(Ps, dSs, stage, Qs, dOs, Ks, Vs, lse_s, D_s, s, i0, j0, blk / 4,
                              blk % 4, scale_log2);
      __syncthreads();
      // dv += P^T dO, dk += dS^T Q over the tile's 64 query rows; P^T is P read column-major.
#pragma unroll
      for (int qq = 0; qq < kBr / 16; ++qq) {
        FragAT pt, dst;
        wmma::load_matrix_sync(pt, Ps + qq * 16 * kLdP + kb * 16, kLdP);
        wmma::load_matrix_sync(dst, dSs + qq * 16 * kLdP + kb * 16, kLdP);
#pragma unroll
        for (int n = 0; n < kN; ++n) {
          FragB bo, bq;
          wmma::load_matrix_sync(bo, dOs + qq * 16 * kLd + d0 + n * 16, kLd);
          wmma::mma_sync(dv_acc[n], pt, bo, dv_acc[n]);
          wmma::load_matrix_sync(bq, Qs + qq * 16 * kLd + d0 + n * 16, kLd);
          wmma::mma_sync(dk_acc[n], dst, bq, dk_acc[n]);
        }
      }
    }
  }

  const int key0 = j0 + kb * 16;
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    const int64_t o = k_index(s, key0, b, hk) + d0 + n * 16;
    accumulate_fragment(dv + o, k_stride, s.SK - key0, dv_acc[n], stage, 1.f);
    accumulate_fragment(dk + o, k_stride, s.SK - key0, dk_acc[n], stage, scale);
  }
}

template <int HD>
struct DqSmem {
  static constexpr int kLd = HD + 8;
  static constexpr size_t kQ = 0;
  static constexpr size_t kdO = kQ + align128(sizeof(bf16) * kBr * kLd);
  static constexpr size_t kK = kdO + align128(sizeof(bf16) * kBr * kLd);
  static constexpr size_t kV = kK + align128(sizeof(bf16) * kBc * kLd);
  static constexpr size_t kdS = kV + align128(sizeof(bf16) * kBc * kLd);
  static constexpr size_t kStage = kdS + align128(sizeof(bf16) * kBr * kLdP);  // 512 per warp
  static constexpr size_t kLse = kStage + align128(sizeof(float) * kBwdWarps * 512);
  static constexpr size_t kD = kLse + align128(sizeof(float) * kBr);
  static constexpr size_t kBytes = kD + align128(sizeof(float) * kBr);
};

// dq for one query tile and head. Warp w computes the score blocks (w / 4, w % 4) and
// (w / 4 + 2, w % 4), and accumulates query rows [16 (w % 4), +16) x dims [(w / 4) HD/2, +HD/2)
// of dq in registers over the key tiles the query tile can see.
template <int HD>
__global__ void __launch_bounds__(kBwdThreads)
    attention_tc_dq_kernel(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                           const float* lse, const float* D, Dims s, float scale,
                           float scale_log2) {
  using L = DqSmem<HD>;
  constexpr int kLd = L::kLd, kN = HD / 32;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = region<bf16>(smem, L::kQ);
  bf16* dOs = region<bf16>(smem, L::kdO);
  bf16* Ks = region<bf16>(smem, L::kK);
  bf16* Vs = region<bf16>(smem, L::kV);
  bf16* dSs = region<bf16>(smem, L::kdS);
  float* lse_s = region<float>(smem, L::kLse);
  float* D_s = region<float>(smem, L::kD);
  const int warp = threadIdx.x >> 5;
  float* stage = region<float>(smem, L::kStage) + warp * 512;
  const int i0 = blockIdx.x * kBr, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (s.NH / s.NKV);
  const int qb = warp % 4, d0 = (warp / 4) * (HD / 2);
  const int64_t q_stride = int64_t{s.B} * s.NH * HD, k_stride = int64_t{s.B} * s.NKV * HD;

  load_tile<HD, kBr>(Qs, q + q_index(s, i0, b, h), q_stride, s.SQ - i0);
  load_tile<HD, kBr>(dOs, dout + q_index(s, i0, b, h), q_stride, s.SQ - i0);
  load_row_stats(lse_s, D_s, lse, D, s, i0, b, h);
  FragC acc[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) wmma::fill_fragment(acc[n], 0.f);

  const int j_end = attn::key_end(s, i0, kBr);
  for (int j0 = 0; j0 < j_end; j0 += kBc) {
    __syncthreads();  // every warp is done with the previous K, V, dS (and Q, dO are visible)
    load_tile<HD, kBc>(Ks, k + k_index(s, j0, b, hk), k_stride, s.SK - j0);
    load_tile<HD, kBc>(Vs, v + k_index(s, j0, b, hk), k_stride, s.SK - j0);
    __syncthreads();
    for (int blk = warp; blk < 16; blk += kBwdWarps)
      probs_and_dscores<HD>(nullptr, dSs, stage, Qs, dOs, Ks, Vs, lse_s, D_s, s, i0, j0, blk / 4,
                            blk % 4, scale_log2);
    __syncthreads();
    // dq += dS K over the tile's 64 keys.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      FragA a;
      wmma::load_matrix_sync(a, dSs + qb * 16 * kLdP + kk * 16, kLdP);
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        FragB bk;
        wmma::load_matrix_sync(bk, Ks + kk * 16 * kLd + d0 + n * 16, kLd);
        wmma::mma_sync(acc[n], a, bk, acc[n]);
      }
    }
  }

  const int row0 = i0 + qb * 16;
#pragma unroll
  for (int n = 0; n < kN; ++n)
    accumulate_fragment(dq + q_index(s, row0, b, h) + d0 + n * 16, q_stride, s.SQ - row0, acc[n],
                        stage, scale);
}

// ---- host side --------------------------------------------------------------------------------
Dims checked_dims(const AttentionShape& shape, const void* probs,
                  std::initializer_list<const void*> tensors) {
  GROVE_CHECK(attention_tc_supported(shape, probs, tensors))
      << "attention_tc: unsupported call (HD=" << shape.HD << " must be 64 or 128, NH=" << shape.NH
      << " a multiple of NKV=" << shape.NKV << ", probs null, tensors 16-byte aligned)";
  return attn::make_dims(shape);
}

template <int HD>
void launch_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                    const Dims& s, float scale_log2, cudaStream_t stream) {
  constexpr size_t smem = FwdSmem<HD>::kBytes;
  attn::set_smem(attention_tc_forward_kernel<HD>, smem);
  dim3 grid((s.SQ + kBr - 1) / kBr, s.NH, s.B);
  attention_tc_forward_kernel<HD>
      <<<grid, kFwdThreads, smem, stream>>>(out, lse, q, k, v, s, scale_log2);
  GROVE_CUDA_CHECK_LAUNCH();
}

template <int HD>
void launch_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                     const bf16* v, const bf16* out, const float* lse, float* D, const Dims& s,
                     float scale, cudaStream_t stream) {
  const int64_t rows = int64_t{s.B} * s.NH * s.SQ;
  attention_tc_dot_kernel<HD>
      <<<detail::grid_for(rows * 32, 256), 256, 0, stream>>>(D, dout, out, s);
  GROVE_CUDA_CHECK_LAUNCH();

  constexpr size_t smem1 = DkdvSmem<HD>::kBytes;
  attn::set_smem(attention_tc_dkdv_kernel<HD>, smem1);
  dim3 grid1((s.SK + kBc - 1) / kBc, s.NKV, s.B);
  attention_tc_dkdv_kernel<HD><<<grid1, kBwdThreads, smem1, stream>>>(dk, dv, dout, q, k, v, lse, D,
                                                                      s, scale, scale * kLog2e);
  GROVE_CUDA_CHECK_LAUNCH();

  constexpr size_t smem2 = DqSmem<HD>::kBytes;
  attn::set_smem(attention_tc_dq_kernel<HD>, smem2);
  dim3 grid2((s.SQ + kBr - 1) / kBr, s.NH, s.B);
  attention_tc_dq_kernel<HD>
      <<<grid2, kBwdThreads, smem2, stream>>>(dq, dout, q, k, v, lse, D, s, scale, scale * kLog2e);
  GROVE_CUDA_CHECK_LAUNCH();
}

// Largest layouts (HD = 128) stay under sm_90's 227 KiB opt-in, with room for two blocks per SM.
static_assert(FwdSmem<128>::kBytes <= 113 * 1024);
static_assert(DkdvSmem<128>::kBytes <= 113 * 1024);
static_assert(DqSmem<128>::kBytes <= 113 * 1024);

}  // namespace

bool attention_tc_supported(const AttentionShape& shape, const void* probs,
                            std::initializer_list<const void*> tensors) {
  if (probs != nullptr) return false;
  if (shape.HD != 64 && shape.HD != 128) return false;
  if (shape.NKV <= 0 || shape.NH % shape.NKV != 0) return false;
  for (const void* p : tensors)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

void attention_tc_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                          const AttentionShape& shape, cudaStream_t stream) {
  Dims s = checked_dims(shape, nullptr, {out, q, k, v});
  if (s.SQ == 0 || s.B == 0 || s.NH == 0) return;
  const float scale_log2 = kLog2e / sqrtf(static_cast<float>(s.HD));
  if (s.HD == 64)
    launch_forward<64>(out, lse, q, k, v, s, scale_log2, stream);
  else
    launch_forward<128>(out, lse, q, k, v, s, scale_log2, stream);
}

void attention_tc_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                           const bf16* k, const bf16* v, const bf16* out, const float* lse,
                           const AttentionShape& shape, cudaStream_t stream) {
  Dims s = checked_dims(shape, nullptr, {dq, dk, dv, dout, q, k, v, out});
  if (s.SQ == 0 || s.SK == 0 || s.B == 0 || s.NH == 0) return;
  const float scale = 1.f / sqrtf(static_cast<float>(s.HD));
  float* D = nullptr;  // [B, NH, SQ]
  GROVE_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&D),
                                   sizeof(float) * int64_t{s.B} * s.NH * s.SQ, stream));
  try {
    if (s.HD == 64)
      launch_backward<64>(dq, dk, dv, dout, q, k, v, out, lse, D, s, scale, stream);
    else
      launch_backward<128>(dq, dk, dv, dout, q, k, v, out, lse, D, s, scale, stream);
    GROVE_CUDA_CHECK(cudaFreeAsync(D, stream));
  } catch (...) {
    cudaFreeAsync(D, stream);
    throw;
  }
}

}  // namespace grove::cuda
