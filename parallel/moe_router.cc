// Router forward and backward; see moe_router.h for the formulas and the legend.
#include "parallel/moe_router.h"

#include <algorithm>
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
      f_(cfg.num_experts) {
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
  float* p = probs_.data();
  if (T > 0) cpu::linear_forward<float>(p, x, w, nullptr, T, h_, E_);  // logits, in place below

  // Local statistics: [0,E) routed counts, [E,2E) dropped, [2E,3E) Σ p, then Σ lse², T.
  std::vector<double> st(3 * size_t(E_) + 2, 0.0);
  for (int t = 0; t < T; ++t) {
    float* row = p + size_t(t) * E_;
    int32_t* ex = r->expert.data() + size_t(t) * k_;
    // top-k on the logits: largest first, a tie goes to the lower id (strict > below).
    for (int j = 0; j < k_; ++j) {
      int best = -1;
      for (int e = 0; e < E_; ++e) {
        if (std::find(ex, ex + j, e) != ex + j) continue;
        if (best < 0 || row[e] > row[best]) best = e;
      }
      ex[j] = best;
    }
    float mx = row[0];
    for (int e = 1; e < E_; ++e) mx = std::max(mx, row[e]);
    double sum = 0;
    for (int e = 0; e < E_; ++e) sum += std::exp(double(row[e]) - mx);
    const double lse = mx + std::log(sum);
    lse_[t] = float(lse);
    for (int e = 0; e < E_; ++e) row[e] = float(std::exp(double(row[e]) - lse));
    // k > 1: renormalise over the chosen experts (Mixtral); k = 1: the raw probability (Switch),
    // else the weight would always be 1 and the router would learn only from the aux loss.
    float norm = 0;
    for (int j = 0; j < k_; ++j) norm += row[ex[j]];
    if (k_ == 1) norm = 1.0f;
    for (int j = 0; j < k_; ++j) r->weight[size_t(t) * k_ + j] = row[ex[j]] / norm;
    for (int j = 0; j < k_; ++j) st[ex[j]] += 1;
    for (int e = 0; e < E_; ++e) st[2 * E_ + e] += row[e];
    st[3 * E_] += lse * lse;
  }
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
    f_[e] = T_all > 0 ? st[e] / (T_all * k_) : 0.0;
    aux += T_all > 0 ? f_[e] * st[2 * E_ + e] / T_all : 0.0;
  }
  stats_.aux_loss = float(double(aux_coef_) * E_ * aux);
  stats_.z_loss = T_all > 0 ? float(double(z_coef_) * st[3 * E_] / T_all) : 0.0f;
}

void Router::backward(float* din, float* dw, const float* dweight, const Routing& r, const float* x,
                      const float* w, float loss_scale) {
  const int T = T_;
  if (T == 0) return;
  const double T_all = double(stats_.tokens);
  // d(loss_scale·aux)/dp_{t,i} = loss_scale·α·E·f_i / T_all;  d(loss_scale·z)/dlogit_{t,e} =
  // loss_scale·β·2·lse_t·p_{t,e} / T_all.
  std::vector<double> daux(E_);
  for (int e = 0; e < E_; ++e) daux[e] = double(loss_scale) * aux_coef_ * E_ * f_[e] / T_all;
  const double dz = double(loss_scale) * z_coef_ * 2.0 / T_all;
#pragma omp parallel if (T >= 256)
  {
    std::vector<double> d(E_);
#pragma omp for schedule(static)
    for (int t = 0; t < T; ++t) {
      const float* p = probs_.data() + size_t(t) * E_;
      const int32_t* ex = r.expert.data() + size_t(t) * k_;
      const float* wt = r.weight.data() + size_t(t) * k_;
      const float* dwt = dweight + size_t(t) * k_;
      for (int e = 0; e < E_; ++e) d[e] = daux[e];
      if (k_ == 1) {  // w = p_{e}: dp_e += dw
        d[ex[0]] += dwt[0];
      } else {  // w_j = p_{e_j} / S:  dp_{e_j} += (dw_j − Σ_j' dw_j'·w_j') / S.
        double S = 0, dot = 0;
        for (int j = 0; j < k_; ++j) {
          S += p[ex[j]];
          dot += double(dwt[j]) * wt[j];
        }
        for (int j = 0; j < k_; ++j) d[ex[j]] += (dwt[j] - dot) / S;
      }
      double s = 0;
      for (int e = 0; e < E_; ++e) s += d[e] * p[e];
      float* g = dlogits_.data() + size_t(t) * E_;
      for (int e = 0; e < E_; ++e) g[e] = float(p[e] * (d[e] - s) + dz * lse_[t] * p[e]);
    }
  }
  cpu::linear_backward<float>(din, dw, nullptr, dlogits_.data(), x, w, T, h_, E_);
}

size_t Router::stash_bytes() const {
  return sizeof(float) * (size_t(T_) * E_ + T_);
}

}  // namespace grove::parallel
