// Decode attention against one shard of a KV cache (parallel/kv_cache.h): one query row per
// (sequence, head), no mask, over `rows` cached keys; writes the partial (o, lse) that the tree
// combine or the ring merge of the context-parallel group then combines. The CPU reference is
// CpuBackend::decode_attention (cpu::attention_forward with one query row).
//
// One block per (b, head), kWarps warps. Warp w takes the key tiles w, w + kWarps, ... of 32 keys;
// lane j scores key j of its tile (q pre-scaled by scale·log2(e) in shared memory, scores in the
// log2 domain as attention.cu), then the warp keeps FlashAttention's running max m, sum l and
// accumulator (lane owns dims lane + 32t) with the tile's probabilities broadcast by shuffles. The
// warps' states are merged at the end in warp order (deterministic). rows = 0: o = 0, lse = -inf
// (the neutral partial).
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxT = 8;  // head-dim slots per lane: HD <= 256

__global__ void __launch_bounds__(kThreads)
    decode_attention_kernel(float* o, float* lse, const float* q, const float* k, const float* v,
                            int rows, int B, int NH, int NKV, int HD, float scale_log2) {
  // qs [HD] | per warp: m, l [kWarps] | acc [kWarps][HD]
  extern __shared__ float smem[];
  float* qs = smem;
  float* wm = qs + HD;
  float* wl = wm + kWarps;
  float* wacc = wl + kWarps;
  const int h = blockIdx.x, b = blockIdx.y, hk = h / (NH / NKV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t head = (int64_t{b} * NH + h) * HD;
  const int64_t kstride = int64_t{B} * NKV * HD, koff = (int64_t{b} * NKV + hk) * HD;
  for (int d = threadIdx.x; d < HD; d += blockDim.x) qs[d] = q[head + d] * scale_log2;
  __syncthreads();

  float m = -INFINITY, l = 0.f, acc[kMaxT];
#pragma unroll
  for (int t = 0; t < kMaxT; ++t) acc[t] = 0.f;
  for (int j0 = warp * 32; j0 < rows; j0 += kThreads) {
    const int j = j0 + lane, n = min(32, rows - j0);
    float s = -INFINITY;
    if (j < rows) {
      const float* kr = k + j * kstride + koff;
      s = 0.f;
      for (int d = 0; d < HD; ++d) s += qs[d] * kr[d];
    }
    const float m_new = fmaxf(m, detail::warp_max(s));  // finite: the tile has a key
    const float p = exp2f(s - m_new), alpha = exp2f(m - m_new);
    l = l * alpha + detail::warp_sum(p);
    m = m_new;
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) acc[t] *= alpha;
    for (int jj = 0; jj < n; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const float* vr = v + (j0 + jj) * kstride + koff;
#pragma unroll
      for (int t = 0; t < kMaxT; ++t) {
        const int d = lane + 32 * t;
        if (d < HD) acc[t] += pj * vr[d];
      }
    }
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
#pragma unroll
  for (int t = 0; t < kMaxT; ++t) {
    const int d = lane + 32 * t;
    if (d < HD) wacc[warp * HD + d] = acc[t];
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, wm[w]);
  float den = 0.f;
  for (int w = 0; w < kWarps; ++w) den += wm[w] == -INFINITY ? 0.f : wl[w] * exp2f(wm[w] - mx);
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float num = 0.f;
    for (int w = 0; w < kWarps; ++w)
      if (wm[w] != -INFINITY) num += wacc[w * HD + d] * exp2f(wm[w] - mx);
    o[head + d] = den > 0.f ? num / den : 0.f;
  }
  if (threadIdx.x == 0)
    lse[int64_t{b} * NH + h] = den > 0.f ? (mx + log2f(den)) * attn::kLn2 : -INFINITY;
}

}  // namespace

void decode_attention(float* o, float* lse, const float* q, const float* k, const float* v,
                      int rows, int B, int NH, int NKV, int HD, cudaStream_t stream) {
  GROVE_CHECK(rows >= 0 && B >= 0 && NKV > 0 && NH % NKV == 0 && HD >= 1 && HD <= 32 * kMaxT)
      << "decode_attention: rows=" << rows << " B=" << B << " NH=" << NH << " NKV=" << NKV
      << " HD=" << HD << " (NKV must divide NH, 1 <= HD <= " << 32 * kMaxT << ")";
  if (B == 0 || NH == 0) return;
  const size_t smem = sizeof(float) * (size_t(HD) * (kWarps + 1) + 2 * kWarps);
  const float scale_log2 = attn::kLog2e / sqrtf(float(HD));
  decode_attention_kernel<<<dim3(NH, B), kThreads, smem, stream>>>(o, lse, q, k, v, rows, B, NH,
                                                                   NKV, HD, scale_log2);
  GROVE_CUDA_CHECK_LAUNCH();
}

}  // namespace grove::cuda
