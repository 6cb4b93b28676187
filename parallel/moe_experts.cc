// Grouped SwiGLU experts; see moe_experts.h.
#include "parallel/moe_experts.h"

#include <cstring>

#include "kernels/cpu/ops.h"

namespace grove::parallel {

void swiglu_experts_forward(float* y, float* gate, float* up, float* act, const float* x,
                            const int64_t* offset, int E_l, int h, int f, const ExpertWeights& w) {
  const int64_t fh = int64_t(f) * h;
  for (int l = 0; l < E_l; ++l) {
    const int64_t r0 = offset[l];
    const int n = int(offset[l + 1] - r0);
    if (n == 0) continue;
    const float* xl = x + r0 * h;
    float *gl = gate + r0 * f, *ul = up + r0 * f, *al = act + r0 * f;
    cpu::linear_forward<float>(gl, xl, w.w_gate + l * fh, nullptr, n, h, f);
    cpu::linear_forward<float>(ul, xl, w.w_up + l * fh, nullptr, n, h, f);
    cpu::swiglu_forward<float>(al, gl, ul, int64_t(n) * f);
    cpu::linear_forward<float>(y + r0 * h, al, w.w_down + l * fh, nullptr, n, f, h);
  }
}

void swiglu_experts_backward(float* dx, const ExpertGrads& g, float* act, float* dact, float* dgate,
                             float* dup, const float* dy, const float* x, const float* gate,
                             const float* up, const int64_t* offset, int E_l, int h, int f,
                             const ExpertWeights& w) {
  const int64_t fh = int64_t(f) * h;
  for (int l = 0; l < E_l; ++l) {
    const int64_t r0 = offset[l];
    const int n = int(offset[l + 1] - r0);
    if (n == 0) continue;
    const int64_t nf = int64_t(n) * f;
    const float *xl = x + r0 * h, *gl = gate + r0 * f, *ul = up + r0 * f;
    float *al = act + r0 * f, *dal = dact + r0 * f, *dgl = dgate + r0 * f, *dul = dup + r0 * f;
    float* dxl = dx + r0 * h;
    cpu::swiglu_forward<float>(al, gl, ul, nf);  // recomputed rather than stashed
    std::memset(dal, 0, sizeof(float) * nf);
    cpu::linear_backward<float>(dal, g.w_down + l * fh, nullptr, dy + r0 * h, al, w.w_down + l * fh,
                                n, f, h);
    std::memset(dgl, 0, sizeof(float) * nf);
    std::memset(dul, 0, sizeof(float) * nf);
    cpu::swiglu_backward<float>(dgl, dul, dal, gl, ul, nf);
    std::memset(dxl, 0, sizeof(float) * n * h);
    cpu::linear_backward<float>(dxl, g.w_gate + l * fh, nullptr, dgl, xl, w.w_gate + l * fh, n, h,
                                f);
    cpu::linear_backward<float>(dxl, g.w_up + l * fh, nullptr, dul, xl, w.w_up + l * fh, n, h, f);
  }
}

}  // namespace grove::parallel
