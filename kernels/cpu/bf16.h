// bf16 GEMM operands on the CPU: the kernels of CpuBf16Backend (kernels/cpu/bf16_backend.h),
// train.precision=bf16 on train.device=cpu (docs/kernels.md#bf16-on-the-cpu).
//
// bf16 values are the upper 16 bits of an IEEE fp32 (uint16_t here: the CPU never does
// arithmetic on them). Conversion fp32 -> bf16 rounds to nearest even; GEMMs read bf16 A and B,
// accumulate in fp32 and write fp32 C (oneDNN matmul: AMX-BF16 tiles or AVX512_BF16 dot
// products, whichever oneDNN finds on the CPU). Everything that is not a GEMM stays fp32 and
// uses the fp32 kernels of kernels/cpu/ops.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace grove::cpu {

using bf16_bits = uint16_t;

// Whether this CPU runs bf16 GEMMs in hardware: oneDNN's effective ISA is AVX512_BF16 or AMX
// (it honours ONEDNN_MAX_CPU_ISA). Without it the bf16 backend is refused (no emulation).
bool bf16_gemm_supported();
// oneDNN's version and ISA for reports, e.g. "oneDNN 2.6.3 avx512_core_amx".
std::string bf16_gemm_describe();

// dst[i] = bf16(src[i]), round to nearest even (NaN stays NaN). The AVX512_BF16 path
// (vcvtneps2bf16) reads fp32 subnormals as zero, as the instruction does; the scalar path (CPUs
// without it, and the tails) keeps them. OpenMP over large n.
void convert_to_bf16(bf16_bits* dst, const float* src, int64_t n);
void convert_from_bf16(float* dst, const bf16_bits* src, int64_t n);
// One value, the scalar rule of convert_to_bf16 / exact widening.
bf16_bits to_bf16(float x);
float from_bf16(bf16_bits x);

// C[M,N] = op(A) op(B) + beta C, row-major with leading dimensions, A and B bf16, C fp32 and
// the accumulation fp32 (oneDNN matmul; primitives cached per shape). bf16_gemm_supported()
// must hold.
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const bf16_bits* A, int lda,
               const bf16_bits* B, int ldb, float beta, float* C, int ldc);

// The Linear layer (kernels/cpu/ops.h) with a bf16 weight [OC, C] and fp32 activations that are
// rounded to bf16 where they enter a GEMM (into the calling thread's scratch):
//   out[N,OC] = bf16(inp) @ weight^T (+ bias)
//   dinp += bf16(dout) @ weight;  dweight += bf16(dout)^T @ bf16(inp);  dbias += sum_rows(dout)
// dinp / bias / dbias may be null; the accumulations are fp32.
void linear_forward_bf16(float* out, const float* inp, const bf16_bits* weight, const float* bias,
                         int N, int C, int OC);
void linear_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const bf16_bits* weight, int N, int C, int OC);

// A bf16 copy of a flat fp32 buffer (a model's parameters) that the bf16 GEMMs find by address:
// while it lives, bf16_copy_of(w) for a weight w inside [master, master + n) is the copy at the
// same offset. refresh() re-rounds the whole buffer (after every write to the masters: the
// optimizer step, a checkpoint load); a copy starts refreshed. Copies of distinct buffers may
// live at the same time (several models, ranks as threads); registration is thread-safe.
class Bf16WeightCopy {
 public:
  Bf16WeightCopy(const float* master, int64_t n);
  ~Bf16WeightCopy();
  Bf16WeightCopy(const Bf16WeightCopy&) = delete;
  Bf16WeightCopy& operator=(const Bf16WeightCopy&) = delete;

  void refresh();
  int64_t bytes() const { return int64_t(copy_.size() * sizeof(bf16_bits)); }

 private:
  const float* master_;
  std::vector<bf16_bits> copy_;
};

// The live copy of w[0, n) (all inside one registered buffer), or null when none holds it.
const bf16_bits* bf16_copy_of(const float* w, int64_t n);

}  // namespace grove::cpu
