// CpuBf16Backend: the kernel backend (kernels/backend.h) of train.precision=bf16 on
// train.device=cpu. bf16 mixed precision as on the GPU: fp32 master weights, fp32 gradients and
// AdamW moments in the model's flat buffers, GEMMs on bf16 operands with fp32 accumulation and
// fp32 outputs (kernels/cpu/bf16.h, oneDNN). Unlike CudaBackend<bf16>, activations stay fp32
// (T = float) and are rounded to bf16 only where they enter a GEMM, so every non-GEMM kernel
// (norms, RoPE, attention with its fp32 accumulation, SwiGLU, softmax / cross-entropy, AdamW)
// is CpuBackend's, inherited unchanged.
//
// The weights a GEMM reads come from the bf16 copy of the model's flat parameter buffer
// (WeightCopy, registered by address and refreshed by TransformerT::sync_compute_weights after
// every optimizer step); a weight outside every live copy (a kernel called directly) is rounded
// into scratch on the fly: the same numbers, one conversion more.
//
// What stays fp32 GEMMs: the MoE router's logits (router_logits) and, on the host, the experts of
// parallel::MoeLayer (not backend-templated); docs/kernels.md#bf16-on-the-cpu.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"
#include "kernels/cpu/backend.h"
#include "kernels/cpu/bf16.h"

namespace grove {

struct CpuBf16Backend : CpuBackend {
  static constexpr const char* kName = "cpu-bf16";
  using WeightCopy = cpu::Bf16WeightCopy;

  // OK when this CPU runs bf16 GEMMs in hardware, else the error naming train.precision.
  static Status Supported() {
    if (cpu::bf16_gemm_supported()) return Status::Ok();
    return Status::Error(
        "train.precision=bf16 on train.device=cpu needs a CPU with AVX512_BF16 "
        "or AMX-BF16, and this one has neither (" +
        cpu::bf16_gemm_describe() + "); set train.precision=fp32 (or auto)");
  }

  static void linear_forward(T* out, const T* in, const T* w, const T* bias, int N, int C, int OC) {
    Weight bw(w, int64_t{OC} * C);
    cpu::linear_forward_bf16(out, in, bw.p, bias, N, C, OC);
  }
  static void linear_backward(T* din, float* dw, float* db, const T* dout, const T* in, const T* w,
                              int N, int C, int OC) {
    Weight bw(w, int64_t{OC} * C);
    cpu::linear_backward_bf16(din, dw, db, dout, in, bw.p, N, C, OC);
  }

 private:
  // The bf16 weight: the live copy's, else rounded into this thread's scratch.
  struct Weight {
    const cpu::bf16_bits* p;
    Weight(const float* w, int64_t n) : p(cpu::bf16_copy_of(w, n)) {
      if (p != nullptr) return;
      thread_local std::vector<cpu::bf16_bits> tmp;
      if (int64_t(tmp.size()) < n) tmp.resize(n);
      cpu::convert_to_bf16(tmp.data(), w, n);
      p = tmp.data();
    }
  };
};

}  // namespace grove
