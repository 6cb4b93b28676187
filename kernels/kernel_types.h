// Types and small host helpers shared by both kernel back ends, kernels/cpu/ops.h (grove::cpu)
// and kernels/cuda/ops.h (grove::cuda). Header only, no dependencies: the GPU tests and the
// reference library include it without OpenBLAS, MPI or the CUDA runtime.
//
// One interface, two back ends: grove::cpu and grove::cuda declare the same kernels with the same
// names, argument lists and shapes; the CUDA ones add a trailing `cudaStream_t stream = 0` and
// take device pointers. The element type T of activations is float or double on the CPU and float
// or bf16 on the GPU.
//
// Type rule (acc_t<T>): the quantities that must stay accurate whatever T is are stored in
// acc_t<T>: weight gradients (dweight, dbias, dtable), norm weights, rstd, attention lse, the
// MoE router's tensors (probs, lse, combine weights and their gradients), losses. acc_t<T> is
// double for T = double (the CPU's finite-difference tests) and float otherwise, so the cpu:: and
// cuda:: signatures coincide for T = float.
#pragma once

#include <cstdint>
#include <type_traits>

namespace grove::kernels {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// ---- Attention shape --------------------------------------------------------------------------
// q: [SQ, B, NH, HD]; k, v: [SK, B, NKV, HD]; out: [SQ, B, NH, HD]; lse: [B, NH, SQ] (natural log
// of the softmax denominator of the scaled scores; -inf for a fully masked row, whose output is
// 0). Scale = 1/sqrt(HD). With causal, query i (global position q_pos0 + i) sees key j (global
// position k_pos0 + j) iff k_pos0 + j <= q_pos0 + i. The offsets let a shard of queries attend to
// a shard of keys (tree / ring / context-parallel attention merge the partials with
// attention_merge).
struct AttentionShape {
  int SQ, SK, B, NH, NKV, HD;
  bool causal;
  int q_pos0 = 0;
  int k_pos0 = 0;
};

// ---- Mixture of experts -----------------------------------------------------------------------
// Largest number of experts per token (k) the MoE kernels accept.
constexpr int kMoeMaxTopK = 16;

// The aux and z losses (already multiplied by α and β) from the router forward's statistics of
// a stats group of tokens_all tokens (host copies on the GPU): with f_i = counts_i / (T_all·k)
// and P_i = prob_sum_i / T_all, aux = α·E·Σ_i f_i·P_i and z = β·lse_sq_sum / T_all; zeros when
// tokens_all == 0. The router's formula and order of operations (parallel/moe_router.cc).
struct MoeRouterLosses {
  float aux = 0, z = 0;
};
inline MoeRouterLosses moe_router_losses(const int32_t* counts, const double* prob_sum,
                                         double lse_sq_sum, int64_t tokens_all, int E, int k,
                                         float aux_coef, float z_coef) {
  MoeRouterLosses l;
  const double T_all = double(tokens_all);
  if (T_all <= 0) return l;
  double aux = 0;
  for (int e = 0; e < E; ++e) aux += double(counts[e]) / (T_all * k) * prob_sum[e] / T_all;
  l.aux = float(double(aux_coef) * E * aux);
  l.z = float(double(z_coef) * lse_sq_sum / T_all);
  return l;
}

}  // namespace grove::kernels
