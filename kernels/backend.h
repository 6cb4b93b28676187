// The kernel backend: how the model picks its compute kernels at compile time.
//
// A backend B is a struct with
//   using T;                           the compute type of activations and matrix operands
//                                      (float, or bf16 for mixed precision on GPUs)
//   static constexpr Device kDevice;   where every buffer the model allocates lives
//   static constexpr DType kDType;     dtype_of<T>
//   static constexpr const char* kName;
// and the kernels of the one kernel interface as static functions with identical names and
// argument lists on every backend (kernels/cpu/ops.h and kernels/cuda/ops.h document them; the
// CUDA functions take a trailing stream, which the backend leaves at the default stream):
//   linear_forward / linear_backward, router_logits (linear with an fp32 output),
//   rmsnorm_forward / rmsnorm_backward, rope_table / rope_forward / rope_backward,
//   attention_forward / attention_backward, attention_merge / attention_merge_scale /
//   attention_merge_finish (context-parallel attention), decode_attention (one query row against
//   a KV-cache shard, fp32: parallel/kv_cache.h), swiglu_forward / swiglu_backward,
//   embedding_forward / embedding_backward, cross_entropy_forward / cross_entropy_backward,
//   their vocabulary-shard forms for the vocabulary-parallel embedding and loss
//   (embedding_forward_shard / embedding_backward_shard, cross_entropy_shard_max / _sums /
//   _finish / _backward), add_inplace, scale_inplace, sum_squares, adamw_update, convert (fp32 ->
//   T), the MoE kernels (moe_router_forward / backward, moe_permute / backward, moe_unpermute /
//   backward, grouped_linear_forward / backward, moe_capacity), the LSH-compressed dispatch's
//   (lsh_hash, lsh_bucket, lsh_bucket_reduce, lsh_expand / backward), and memory movement: upload
//   (host -> B), download (B -> host), copy (B -> B), copy_2d (strided rows, B -> B), zero.
// Types follow one rule: weight gradients, norm weights, rstd, lse, router tensors and losses
// are fp32 whatever T is (double only in the CPU kernels' double instantiation used by the
// finite-difference tests).
//
// Backends: CpuBackend (kernels/cpu/backend.h: OpenBLAS + OpenMP, fp32) and CudaBackend<T>
// (kernels/cuda/backend.h: cuBLAS / cuBLASLt + own CUDA kernels, T = float or bf16), and
// CpuBf16Backend (kernels/cpu/bf16_backend.h: CpuBackend with bf16 GEMM operands, T = float). The
// model (model/transformer.h) is one template over B; docs/kernels.md describes both backends.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace grove::kernels {

// The reduced-precision copy of the model's flat fp32 parameters that a backend's GEMMs read when
// its activations are fp32 but its GEMM operands are not (CpuBf16Backend: B::WeightCopy). The
// model constructs it over its flat parameter buffer (ptr, n) and calls refresh() after every
// write to the parameters; the backend finds it by address. Other backends: NoWeightCopy (their
// compute copy, if any, is the model's own compute_ buffer in T).
struct NoWeightCopy {
  NoWeightCopy(const float*, int64_t) {}
  void refresh() {}
  int64_t bytes() const { return 0; }
};
template <class B>
struct WeightCopyOf {
  using type = NoWeightCopy;
};
template <class B>
requires requires {
  typename B::WeightCopy;
}
struct WeightCopyOf<B> {
  using type = typename B::WeightCopy;
};

// Whether a backend's buffers live in host memory (the CPU backend), i.e. whether host-side
// parallel code (parallel/) can read them directly.
template <class B>
inline constexpr bool kHostBackend = B::kDevice == Device::kCPU;

}  // namespace grove::kernels
