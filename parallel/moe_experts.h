// The experts stage of an MoE layer: SwiGLU experts as a grouped GEMM, one linear call per local
// expert over its contiguous block of rows (the layout every Dispatcher hands over).
//
// Legend: R rows, E_l local experts, expert l owns rows [offset[l], offset[l+1]), h model dim,
// f expert hidden. Weights (torch.nn.Linear layout, one slab per local expert):
//   w_gate [E_l, f, h], w_up [E_l, f, h], w_down [E_l, h, f]
// Forward:  gate = x·W_g^T, up = x·W_u^T, y = (silu(gate) ⊙ up)·W_d^T.
// Backward: dx WRITTEN; dw_gate, dw_up, dw_down ACCUMULATED (+=). Nothing allocates: the caller
// passes the stash (gate, up: [R, f], kept from forward) and the scratch (act, dact: [R, f]).
#pragma once

#include <cstdint>

namespace grove::parallel {

struct ExpertWeights {
  const float* w_gate;  // [E_l, f, h]
  const float* w_up;    // [E_l, f, h]
  const float* w_down;  // [E_l, h, f]
};

struct ExpertGrads {
  float* w_gate;
  float* w_up;
  float* w_down;
};

// y[R,h] (written); gate, up [R,f] (written, the stash); act [R,f] scratch.
void swiglu_experts_forward(float* y, float* gate, float* up, float* act, const float* x,
                            const int64_t* offset, int E_l, int h, int f, const ExpertWeights& w);
// dx[R,h] (written), grads (+=). act, dact: [R,f] scratch; dgate, dup: [R,f] scratch.
void swiglu_experts_backward(float* dx, const ExpertGrads& g, float* act, float* dact, float* dgate,
                             float* dup, const float* dy, const float* x, const float* gate,
                             const float* up, const int64_t* offset, int E_l, int h, int f,
                             const ExpertWeights& w);

}  // namespace grove::parallel
