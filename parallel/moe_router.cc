// Router forward and backward; see moe_router.h for the formulas and the legend. The softmax,
// top-k, combine weights, this rank's statistics and the gradient of the logits are the CPU MoE
// kernels' (kernels/cpu/moe.cc, the same as the GPU's); capacity dropping, the statistics of the
// group and the GEMMs are the router's.
#include "parallel/moe_router.h"

#include <climits>
#include <cmath>

#include "kernels/cpu/ops.h"

namespace grove::parallel {

Router::Router(const MoeOptions& cfg, int h, int max_tokens)
    : E_(cfg.num_experts),
      k_(cfg.top_k),
      h_(h),
      max_tokens_(max_tokens),
      capacity_factor_(cfg.capacity_factor),
      aux_coef_(cfg.aux_loss_coef),
      z_coef_(cfg.z_loss_coef),
      probs_(size_t(max_tokens) * cfg.num_experts),
      lse_(max_tokens),
      dlogits_(size_t(max_tokens) * cfg.num_experts),
      counts_(cfg.num_experts) {
  stats_.tokens_per_expert.assign(E_, 0);
  stats_.dropped_per_expert.assign(E_, 0);
}

void Router::forward(Routing* r, const float* x, const float* w, int T, comm::Communicator* stats) {
  GROVE_CHECK(T >= 0 && T <= max_tokens_) << "T=" << T << " exceeds max_tokens=" << max_tokens_;
  T_ = T;
  r->T = T;
  r->k = k_;
  r->expert.resize(size_t(T) * k_);
  r->weight.resize(size_t(T) * k_);
  r->kept.assign(size_t(T) * k_, 1);
  float* logits = dlogits_.data();  // scratch until the backward
  if (T > 0) cpu::linear_forward<float>(logits, x, w, nullptr, T, h_, E_);

  // Local statistics: [0,E) routed counts, [E,2E) dropped, [2E,3E) Σ p, then Σ lse², T.
  std::vector<double> st(3 * size_t(E_) + 2, 0.0);
  // Top-k on the logits (largest first, a tie to the lower id), softmax in double, weights
  // renormalised over the k when k > 1 (Mixtral) and the raw probability when k = 1 (Switch; else
  // the weight would always be 1 and the router would learn only from the aux loss); Σ p and
  // Σ lse² in token order.
  cpu::moe_router_forward<float>(probs_.data(), lse_.data(), r->expert.data(), r->weight.data(),
                                 counts_.data(), st.data() + 2 * E_, st.data() + 3 * E_, logits, T,
                                 E_, k_);
  for (int e = 0; e < E_; ++e) st[e] = counts_[e];
  st[3 * E_ + 1] = T;

  if (capacity_factor_ > 0) {
    const int64_t cap = int64_t(std::ceil(double(capacity_factor_) * T * k_ / E_));
    std::vector<int64_t> used(E_, 0);
    for (int j = 0; j < k_; ++j) {
      for (int t = 0; t < T; ++t) {
        const size_t a = size_t(t) * k_ + j;
        const int e = r->expert[a];
        if (used[e] < cap) {
          ++used[e];
        } else {
          r->kept[a] = 0;
          st[E_ + e] += 1;
        }
      }
    }
  }

  if (stats != nullptr && stats->size() > 1) {
    stats->all_reduce(st.data(), int64_t(st.size()), DType::kF64, comm::ReduceOp::kSum);
  }
  const double T_all = st[3 * E_ + 1];
  stats_.tokens = int64_t(T_all);
  double aux = 0;
  for (int e = 0; e < E_; ++e) {
    stats_.tokens_per_expert[e] = int64_t(st[e]);
    stats_.dropped_per_expert[e] = int64_t(st[E_ + e]);
    GROVE_CHECK(st[e] <= INT_MAX) << "router: " << st[e] << " assignments to expert " << e
                                  << " in the stats group exceed int32";
    counts_[e] = int32_t(st[e]);  // the group's counts, for the backward
    const double f = T_all > 0 ? st[e] / (T_all * k_) : 0.0;
    aux += T_all > 0 ? f * st[2 * E_ + e] / T_all : 0.0;
  }
  stats_.aux_loss = float(double(aux_coef_) * E_ * aux);
  stats_.z_loss = T_all > 0 ? float(double(z_coef_) * st[3 * E_] / T_all) : 0.0f;
}

void Router::backward(float* din, float* dw, const float* dweight, const Routing& r, const float* x,
                      const float* w, float loss_scale) {
  const int T = T_;
  if (T == 0) return;
  // d/dlogits of Σ dweight·w + loss_scale·(aux + z), f_i held constant (the group's counts).
  cpu::moe_router_backward<float>(dlogits_.data(), dweight, probs_.data(), lse_.data(),
                                  r.expert.data(), r.weight.data(), counts_.data(), stats_.tokens,
                                  aux_coef_, z_coef_, loss_scale, T, E_, k_);
  cpu::linear_backward<float>(din, dw, nullptr, dlogits_.data(), x, w, T, h_, E_);
}

size_t Router::stash_bytes() const {
  return sizeof(float) * (size_t(T_) * E_ + T_);
}

}  // namespace grove::parallel
