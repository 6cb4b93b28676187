// Shape, indexing and masking helpers shared by the two attention implementations: the scalar
// kernels (attention.cu, every T and HD <= 256) and the bf16 tensor-core kernels
// (attention_tc.cu). Internal to kernels/cuda.
//
// Masking: query i (position q_pos0 + i) sees key j (position k_pos0 + j) iff i < SQ, j < SK and
// (not causal or k_pos0 + j <= q_pos0 + i).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"

namespace grove::cuda::attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Dims {
  int SQ, SK, B, NH, NKV, HD, causal, q_pos0, k_pos0;
};

// Offset of element 0 of (row i, batch b, head h) in a [SQ, B, NH, HD] / [SK, B, NKV, HD] tensor.
__device__ __forceinline__ int64_t q_index(const Dims& s, int i, int b, int h) {
  return ((int64_t{i} * s.B + b) * s.NH + h) * s.HD;
}
__device__ __forceinline__ int64_t k_index(const Dims& s, int j, int b, int hk) {
  return ((int64_t{j} * s.B + b) * s.NKV + hk) * s.HD;
}
__device__ __forceinline__ bool visible(const Dims& s, int i, int j) {
  return i < s.SQ && j < s.SK && (!s.causal || s.k_pos0 + j <= s.q_pos0 + i);
}
// One past the last key any of the query rows [i0, i0 + rows) can see.
__device__ __forceinline__ int key_end(const Dims& s, int i0, int rows) {
  if (!s.causal) return s.SK;
  int last_q = s.q_pos0 + min(i0 + rows, s.SQ) - 1;
  return max(0, min(s.SK, last_q - s.k_pos0 + 1));
}
// The first query row that can see key j (0 when not causal; may be >= SQ).
__device__ __forceinline__ int first_query(const Dims& s, int j) {
  return s.causal ? max(0, s.k_pos0 + j - s.q_pos0) : 0;
}

// Validates the head layout and sizes (not HD: each implementation checks what it supports).
inline Dims make_dims(const AttentionShape& a) {
  GROVE_CHECK(a.NKV > 0 && a.NH % a.NKV == 0)
      << "attention: NH=" << a.NH << " must be a multiple of NKV=" << a.NKV;
  GROVE_CHECK(a.SQ >= 0 && a.SK >= 0 && a.B >= 0 && a.HD > 0) << "attention: negative size";
  return Dims{a.SQ, a.SK, a.B, a.NH, a.NKV, a.HD, a.causal ? 1 : 0, a.q_pos0, a.k_pos0};
}

// Allows `kernel` `bytes` of dynamic shared memory (above the default 48 KiB needs the opt-in).
template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  int device = 0, max_optin = 0;
  GROVE_CUDA_CHECK(cudaGetDevice(&device));
  GROVE_CUDA_CHECK(
      cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  GROVE_CHECK(bytes <= static_cast<size_t>(max_optin))
      << "attention needs " << bytes << " bytes of shared memory, the device allows " << max_optin;
  GROVE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
}

}  // namespace grove::cuda::attn
