// LocalMoe<B>: a mixture-of-experts MLP made of the backend's MoE kernels (kernels/backend.h),
// with every expert on this device or, with an expert-parallel group of P ranks, E/P experts on
// each (rank q owns experts [q·E/P, (q+1)·E/P)):
//
//   logits = x · Wr^T (fp32)           route:   probs, lse, top-k ids, combine weights, counts
//   capacity (capacity_factor > 0)     moe_capacity: each expert keeps its first
//                                      ceil(cf·N·k/E) assignments in (slot, token) order; the
//                                      dropped ones get weight 0 and a last row group (E)
//   xp     = permute(x)                rows grouped by expert: expert e owns rows
//                                      [offsets[e], offsets[e+1]) of xp [A = N·k, h]
//   LSH (model.moe.lsh.enabled)        per expert group: hash (x − μ_e), bucket, centroids
//                                      xc [C, h] (C ≤ kept rows); the experts see xc instead
//                                      of xp (docs/lsh.md), and yp = yc[pos] + (xp − xc[pos])
//   yp     = Wdown_e · (silu(Wgate_e·xp) * Wup_e·xp)   one GEMM per expert on its rows
//   out[n] = Σ_j weight[n,j] · yp[row_of[n·k + j]]
//
// Capacity and LSH follow parallel::MoeLayer's router and LshDispatcher exactly (the same drops,
// the same hash ids and buckets, the same centroids, residuals and backward): the compression is
// a transform of the permuted rows, xp → xc before the experts and yc → yp after them, so the
// combine, its backward and the expert exchange are the dropless path's.
//
// Expert parallelism (the plain all-to-all dispatch, as parallel::MoeLayer's AllToAllDispatcher):
// xp is sorted by global expert, so the rows for rank q are one contiguous block; the per-expert
// counts go first (an all_to_all of E/P counts per rank, through the host: the one host round trip
// of the layer), then the rows (all_to_all_v on the device buffers). The received rows are grouped
// by source rank and, within a source, by local expert; the expert GEMMs run per (source, expert)
// block, the outputs travel back by the reverse all_to_all_v, and the backward repeats both
// exchanges for dy and dx. Its buffers for received rows grow to the largest count seen (dropless:
// a rank may receive up to P·N·k rows).
//
// The aux (Switch load balancing) and z losses are taken over the statistics group (the
// data-parallel batch), as parallel::MoeLayer takes them (docs/moe.md). This is the MoE of the
// CUDA backend; its interface is MoeLayer's so that the transformer drives either one. The LSH
// warm-up clock is LshDispatcher's (set_step).
//
// Parameters are views bound by the owner (bind): the router and experts of one block, in the
// compute type for the GEMMs, their fp32 gradients. Per layer it keeps the routing and the
// experts' activations of the last forward (for the backward); the backward's scratch is shared
// by every layer (MoeScratch).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"
#include "kernels/kernel_types.h"
#include "model/weights.h"
#include "parallel/backend_collectives.h"
#include "parallel/lsh_rotations.h"
#include "parallel/moe_layer.h"  // MoeMetrics
#include "spec/model_config.h"

namespace grove {

template <class B>
class LocalMoe {
 public:
  using T = typename B::T;

  // Shared backward scratch of every LocalMoe of one model (sized for N tokens).
  struct Scratch {
    Tensor dyp, deact, degate, deup, dxp;  // [A, h], [A, fe] x3, [A, h]   (T)
    Tensor dweight;                        // [N, k] fp32
    Tensor dlogits, dlogits_t;             // [N, E] fp32, and in T for the bf16 router GEMM
    Tensor dyc, dxc;                       // LSH: [C, h] centroid gradients (grown on use)
  };
  static Scratch AllocateScratch(const MoeOptions& m, int h, int fe, int N) {
    const int64_t A = int64_t(N) * m.top_k;
    Scratch s;
    s.dyp = Tensor::empty({A, h}, B::kDType, B::kDevice);
    s.deact = Tensor::empty({A, fe}, B::kDType, B::kDevice);
    s.degate = Tensor::empty({A, fe}, B::kDType, B::kDevice);
    s.deup = Tensor::empty({A, fe}, B::kDType, B::kDevice);
    s.dxp = Tensor::empty({A, h}, B::kDType, B::kDevice);
    s.dweight = Tensor::empty({N, m.top_k}, DType::kF32, B::kDevice);
    s.dlogits = Tensor::empty({N, m.num_experts}, DType::kF32, B::kDevice);
    s.dlogits_t = Tensor::empty({N, m.num_experts}, B::kDType, B::kDevice);
    return s;
  }

  // `ep`: the expert-parallel group (null or of size one: every expert here); the bound experts
  // are then this rank's E/P.
  LocalMoe(const MoeOptions& m, int h, int fe, int max_tokens, comm::Communicator* stats,
           Scratch* scratch, comm::Communicator* ep = nullptr)
      : m_(m),
        E_(m.num_experts),
        k_(m.top_k),
        h_(h),
        fe_(fe),
        N_(max_tokens),
        stats_(stats),
        s_(scratch),
        ep_(parallel::active(ep) ? ep : nullptr),
        P_(ep_ ? ep_->size() : 1),
        El_(E_ / P_) {
    GROVE_CHECK(k_ >= 1 && k_ <= B::kMoeMaxTopK && k_ <= E_)
        << "model.moe.top_k=" << k_ << " must lie in [1, min(num_experts, " << B::kMoeMaxTopK
        << ")]";
    GROVE_CHECK(E_ % P_ == 0) << "model.moe.num_experts=" << E_
                              << " is not divisible by parallel.ep=" << P_;
    GROVE_CHECK(m.capacity_factor >= 0)
        << "model.moe.capacity_factor=" << m.capacity_factor << " must be >= 0";
    const int64_t A = int64_t(N_) * k_;
    capacity_ = m.capacity_factor > 0;
    G_ = capacity_ ? E_ + 1 : E_;
    auto dev = [](Shape s, DType d) { return Tensor::empty(std::move(s), d, B::kDevice); };
    logits_ = dev({N_, E_}, DType::kF32);
    probs_ = dev({N_, E_}, DType::kF32);
    lse_ = dev({N_}, DType::kF32);
    expert_ = dev({N_, k_}, DType::kI32);
    weight_ = dev({N_, k_}, DType::kF32);
    counts_ = dev({E_}, DType::kI32);
    counts_all_ = dev({E_}, DType::kI32);
    prob_sum_ = dev({E_}, DType::kF64);
    lse_sq_ = dev({1}, DType::kF64);
    offsets_ = dev({G_ + 1}, DType::kI32);
    row_of_ = dev({A}, DType::kI32);
    xp_ = dev({A, h_}, B::kDType);
    egate_ = dev({A, fe_}, B::kDType);
    eup_ = dev({A, fe_}, B::kDType);
    eact_ = dev({A, fe_}, B::kDType);
    yp_ = dev({A, h_}, B::kDType);
    offsets_host_.assign(G_ + 1, 0);
    if (capacity_) {
      expert_kept_ = dev({N_, k_}, DType::kI32);
      weight_kept_ = dev({N_, k_}, DType::kF32);
      counts_kept_ = dev({E_ + 1}, DType::kI32);
      dropped_ = dev({E_}, DType::kI32);
    }
    if (m.lsh.enabled) {
      // The rotations are LshCompressor's (drawn from the config alone: every rank and both
      // backends hash with the same matrices).
      const Status st = m.lsh.Validate(h_);
      GROVE_CHECK(st.ok()) << st.message();
      const std::vector<float> rot = parallel::lsh_rotations(m.lsh, h_);
      rot_ = dev({int64_t(rot.size())}, DType::kF32);
      B::upload(rot_.raw(), rot.data(), sizeof(float) * rot.size());
      const int64_t Amax = std::max<int64_t>(A, 1);
      ids_ = dev({Amax}, DType::kI64);
      pos_ = dev({Amax}, DType::kI32);
      mu_pos_ = dev({Amax}, DType::kI32);
      first_ = dev({Amax}, DType::kI32);
      cnt_ = dev({Amax}, DType::kI32);
      nb_ = dev({E_}, DType::kI32);
      codes_ = dev({E_}, DType::kI32);
      mu_ = dev({E_, h_}, B::kDType);
      acc_ = dev({Amax, h_}, DType::kF64);
      xc_ = dev({Amax, h_}, B::kDType);
      yc_ = dev({Amax, h_}, B::kDType);
      cen_off_host_.assign(E_ + 1, 0);
    }
    if (ep_) {
      cnt_dev_ = dev({E_}, DType::kI32);
      cnt_recv_dev_ = dev({E_}, DType::kI32);
    }
    metrics_.tokens_per_expert.assign(E_, 0);
    metrics_.dropped_per_expert.assign(E_, 0);
  }

  // The block's router [E, h] and experts ([E, fe, h], [E, fe, h], [E, h, fe]) in the compute
  // type (w) and their fp32 gradients (g): views that must outlive the layer.
  void bind(const Tensor& router, const Tensor& w_gate, const Tensor& w_up, const Tensor& w_down,
            Tensor d_router, Tensor dw_gate, Tensor dw_up, Tensor dw_down) {
    w_router_ = router;
    w_gate_ = w_gate;
    w_up_ = w_up;
    w_down_ = w_down;
    g_router_ = d_router;
    g_gate_ = dw_gate;
    g_up_ = dw_up;
    g_down_ = dw_down;
  }

  // out[N,h] (written) for in[N,h]; `in` must stay unchanged until backward(). Returns aux + z.
  float forward(T* out, const T* in, int N) {
    GROVE_CHECK(N == N_) << "LocalMoe: " << N << " tokens, built for " << N_;
    in_ = in;
    B::router_logits(f(logits_), in, cw(w_router_), N_, h_, E_);
    B::moe_router_forward(f(probs_), f(lse_), i32(expert_), f(weight_), i32(counts_),
                          prob_sum_.data<double>(), lse_sq_.data<double>(), f(logits_), N_, E_, k_);
    const int32_t* perm_expert = i32(expert_);
    const int32_t* perm_counts = i32(counts_);
    if (capacity_) {
      B::moe_capacity(i32(expert_kept_), f(weight_kept_), i32(counts_kept_), i32(dropped_),
                      i32(expert_), f(weight_), N_, k_, E_, capacity());
      perm_expert = i32(expert_kept_);
      perm_counts = i32(counts_kept_);
    }
    const float loss = reduce_router_stats();
    B::moe_permute(p(xp_), i32(offsets_), i32(row_of_), in, perm_expert, perm_counts, N_, k_, G_,
                   h_);
    B::download(offsets_host_.data(), offsets_.raw(), sizeof(int32_t) * (G_ + 1));
    kept_ = offsets_host_[E_];
    // The rows the experts work on: xp, or its centroids under LSH.
    compressed_ = m_.lsh.enabled && step_ >= m_.lsh.warmup_steps;
    T* rows = p(xp_);
    T* rows_out = p(yp_);
    const int32_t* off = offsets_host_.data();
    if (compressed_) {
      compress();
      rows = p(xc_);
      rows_out = p(yc_);
      off = cen_off_host_.data();
    }
    if (ep_) {
      forward_expert_parallel(rows, rows_out, off);
    } else {
      B::grouped_linear_forward(p(egate_), rows, cw(w_gate_), off, E_, h_, fe_);
      B::grouped_linear_forward(p(eup_), rows, cw(w_up_), off, E_, h_, fe_);
      B::swiglu_forward(p(eact_), p(egate_), p(eup_), int64_t(off[E_]) * fe_);
      B::grouped_linear_forward(rows_out, p(eact_), cw(w_down_), off, E_, fe_, h_);
    }
    if (compressed_)
      B::lsh_expand(p(yp_), p(yc_), p(xp_), p(xc_), i32(pos_), kept_, h_, m_.lsh.compensate);
    const int64_t A = int64_t(N_) * k_;
    if (kept_ < A) B::zero(p(yp_) + kept_ * h_, sizeof(T) * (A - kept_) * h_);  // dropped rows
    B::moe_unpermute(out, p(yp_), combine_weight(), i32(row_of_), N_, k_, h_);
    return loss;
  }

  // din[N,h] += d/d(in) of (Σ out·dout + loss_scale·(aux + z)); the gradients +=.
  void backward(T* din, const T* dout, float loss_scale) {
    const int64_t A = int64_t(N_) * k_;
    B::moe_unpermute_backward(p(s_->dyp), f(s_->dweight), dout, p(yp_), combine_weight(),
                              i32(row_of_), N_, k_, h_);
    // The experts' rows: xp, or the centroids with dy summed per bucket.
    T* dy = p(s_->dyp);
    T* dx = p(s_->dxp);
    const T* rows = p(xp_);
    const int32_t* off = offsets_host_.data();
    if (compressed_) {
      const int64_t C = cen_off_host_[E_];
      ensure(s_->dyc, C, h_);
      ensure(s_->dxc, C, h_);
      B::lsh_bucket_reduce(p(s_->dyc), nullptr, acc_.data<double>(), p(s_->dyp), i32(pos_),
                           i32(offsets_), E_, C, h_, /*mean=*/false);
      dy = p(s_->dyc);
      dx = p(s_->dxc);
      rows = p(xc_);
      off = cen_off_host_.data();
    }
    if (ep_) {
      backward_expert_parallel(dy, dx);
    } else {
      experts_backward(dy, dx, rows, p(egate_), p(eup_), p(eact_), off[E_], {off});
    }
    if (compressed_)
      B::lsh_expand_backward(p(s_->dxp), p(s_->dxc), p(s_->dyc), p(s_->dyp), i32(pos_), i32(cnt_),
                             kept_, h_, m_.lsh.compensate);
    if (kept_ < A) B::zero(p(s_->dxp) + kept_ * h_, sizeof(T) * (A - kept_) * h_);
    B::moe_permute_backward(din, p(s_->dxp), i32(row_of_), N_, k_, h_);
    B::moe_router_backward(f(s_->dlogits), f(s_->dweight), f(probs_), f(lse_), i32(expert_),
                           f(weight_), i32(counts_all_), metrics_.tokens, m_.aux_loss_coef,
                           m_.z_loss_coef, loss_scale, N_, E_, k_);
    const T* dlogits = B::router_grad_operand(p(s_->dlogits_t), f(s_->dlogits), int64_t(N_) * E_);
    B::linear_backward(din, f(g_router_), nullptr, dlogits, in_, cw(w_router_), N_, h_, E_);
    ++step_;
  }

  // The LSH warm-up clock, as LshDispatcher::set_step: training steps completed before the coming
  // pass (model.moe.lsh.warmup_steps counts them). The trainer sets its global step before every
  // forward; each backward pass advances the clock by one, so a caller that never sets it counts
  // backward passes.
  void set_step(int64_t step) { step_ = step; }
  int64_t step() const { return step_; }

  // Rows the local or remote experts computed for this rank's tokens in the last forward: the
  // kept assignments, or their LSH centroids.
  int64_t experts_rows() const { return compressed_ ? cen_off_host_[E_] : kept_; }
  float aux_loss() const { return metrics_.aux_loss; }
  float z_loss() const { return metrics_.z_loss; }
  parallel::MoeMetrics metrics() const { return metrics_; }
  // Routing and expert activations kept from the forward for the backward.
  size_t stash_bytes() const {
    size_t n = 0;
    for (const Tensor* t :
         {&logits_,      &probs_,       &lse_,     &expert_, &weight_, &counts_, &counts_all_,
          &prob_sum_,    &lse_sq_,      &offsets_, &row_of_, &xp_,     &egate_,  &eup_,
          &eact_,        &yp_,          &xr_,      &rgate_,  &rup_,    &ract_,   &expert_kept_,
          &weight_kept_, &counts_kept_, &dropped_, &pos_,    &cnt_,    &xc_,     &yc_})
      n += t->bytes();
    return n;
  }

 private:
  // The experts' backward over `rows` rows grouped into blocks (each block: El_ + 1 absolute row
  // offsets, one expert's rows per range): dx [rows, h] (written) from dy [rows, h] and the
  // forward's x, gate, up, act; the expert gradients +=.
  void experts_backward(const T* dy, T* dx, const T* x, const T* gate, const T* up, const T* act,
                        int64_t rows, const std::vector<const int32_t*>& blocks) {
    const size_t es = sizeof(T);
    const int E = ep_ ? El_ : E_;
    ensure(s_->deact, rows, fe_);
    ensure(s_->degate, rows, fe_);
    ensure(s_->deup, rows, fe_);
    B::zero(s_->deact.raw(), es * rows * fe_);
    for (const int32_t* off : blocks)
      B::grouped_linear_backward(p(s_->deact), f(g_down_), dy, act, cw(w_down_), off, E, fe_, h_);
    B::zero(s_->degate.raw(), es * rows * fe_);
    B::zero(s_->deup.raw(), es * rows * fe_);
    B::swiglu_backward(p(s_->degate), p(s_->deup), p(s_->deact), gate, up, rows * fe_);
    B::zero(dx, es * rows * h_);
    for (const int32_t* off : blocks) {
      B::grouped_linear_backward(dx, f(g_gate_), p(s_->degate), x, cw(w_gate_), off, E, h_, fe_);
      B::grouped_linear_backward(dx, f(g_up_), p(s_->deup), x, cw(w_up_), off, E, h_, fe_);
    }
  }

  // Grows t to at least [rows, cols] of the compute type (contents not kept).
  static void ensure(Tensor& t, int64_t rows, int64_t cols) {
    if (!t.defined() || t.numel() < rows * cols)
      t = Tensor::empty({std::max<int64_t>(rows, 1), cols}, B::kDType, B::kDevice);
  }

  // The combine weights: the routing's, 0 for dropped assignments.
  const float* combine_weight() { return capacity_ ? f(weight_kept_) : f(weight_); }
  // Each source rank sends each expert at most this many assignments.
  int64_t capacity() const { return int64_t(std::ceil(double(m_.capacity_factor) * N_ * k_ / E_)); }

  // LSH: the kept rows of xp [kept_, h] → pos_ (each row's centroid), cnt_ (bucket sizes),
  // xc_ (centroids) and cen_off_host_ (each expert's first centroid), as LshDispatcher buckets
  // (docs/lsh.md): per expert group of n ≥ min_tokens rows, the ids of x − μ (center) or x; with
  // target_compression, the longest prefix of the L codes that keeps n / B ≥ target.
  void compress() {
    const LshOptions& o = m_.lsh;
    const int L = o.num_hashes, r = o.rotation_dim;
    const int32_t* off = offsets_host_.data();
    auto* ids = reinterpret_cast<uint64_t*>(ids_.raw());
    std::vector<int32_t> codes(E_);
    auto bucket = [&](Tensor& pos) {
      B::upload(codes_.raw(), codes.data(), sizeof(int32_t) * E_);
      B::lsh_bucket(i32(pos), i32(nb_), i32(first_), ids, i32(codes_), i32(offsets_), E_, kept_, L,
                    r);
      std::vector<int32_t> nb(E_);
      B::download(nb.data(), nb_.raw(), sizeof(int32_t) * E_);
      return nb;
    };
    const T* mu = nullptr;
    if (o.center) {  // μ_e: the mean of group e's rows (one bucket per group)
      std::fill(codes.begin(), codes.end(), -1);
      int64_t groups = 0;
      for (int32_t b : bucket(mu_pos_)) groups += b;
      B::lsh_bucket_reduce(p(mu_), i32(cnt_), acc_.data<double>(), p(xp_), i32(mu_pos_),
                           i32(offsets_), E_, groups, h_, /*mean=*/true);
      mu = p(mu_);
    }
    B::lsh_hash(ids, p(xp_), f(rot_), mu, mu ? i32(mu_pos_) : nullptr, kept_, h_, L, r);
    std::vector<int32_t> chosen(E_, 0);
    for (int e = 0; e < E_; ++e) {
      const int64_t n = off[e + 1] - off[e];
      if (n > 0 && n >= o.min_tokens) chosen[e] = o.target_compression > 0 && L > 1 ? 1 : L;
    }
    if (o.target_compression > 0 && L > 1) {
      // Prefix l refines prefix l−1: keep the longest whose buckets still reach the target.
      std::vector<uint8_t> open(E_);
      for (int e = 0; e < E_; ++e) open[e] = chosen[e] > 0;
      for (int l = 1; l <= L; ++l) {
        bool any = false;
        for (int e = 0; e < E_; ++e) {
          codes[e] = open[e] ? l : 0;
          any = any || open[e];
        }
        if (!any) break;
        const std::vector<int32_t> nb = bucket(pos_);
        for (int e = 0; e < E_; ++e) {
          if (!open[e]) continue;
          if (double(off[e + 1] - off[e]) < o.target_compression * double(nb[e])) {
            open[e] = 0;
          } else {
            chosen[e] = l;
          }
        }
      }
    }
    codes = chosen;
    const std::vector<int32_t> nb = bucket(pos_);
    for (int e = 0; e < E_; ++e) cen_off_host_[e + 1] = cen_off_host_[e] + nb[e];
    B::lsh_bucket_reduce(p(xc_), i32(cnt_), acc_.data<double>(), p(xp_), i32(pos_), i32(offsets_),
                         E_, cen_off_host_[E_], h_, /*mean=*/true);
  }

  // Expert parallelism, forward: counts, `rows` out (grouped by global expert as `off` says),
  // the local experts, their outputs back into rows_out.
  void forward_expert_parallel(const T* rows, T* rows_out, const int32_t* off) {
    // Counts: block q of cnt (E/P entries) = my rows for rank q's experts; block s of recv_cnt_ =
    // rank s's rows for my experts.
    std::vector<int32_t> cnt(E_);
    for (int e = 0; e < E_; ++e) cnt[e] = off[e + 1] - off[e];
    B::upload(cnt_dev_.raw(), cnt.data(), sizeof(int32_t) * E_);
    parallel::all_to_all_v<B>(ep_, cnt_dev_.raw(), std::vector<int64_t>(P_, El_),
                              cnt_recv_dev_.raw(), std::vector<int64_t>(P_, El_), DType::kI32);
    recv_cnt_.resize(E_);
    B::download(recv_cnt_.data(), cnt_recv_dev_.raw(), sizeof(int32_t) * E_);
    send_rows_.assign(P_, 0);
    recv_rows_.assign(P_, 0);
    for (int q = 0; q < P_; ++q)
      for (int e = 0; e < El_; ++e) {
        send_rows_[q] += cnt[q * El_ + e];
        recv_rows_[q] += recv_cnt_[q * El_ + e];
      }
    // Per source block: El_ + 1 absolute row offsets into the received rows.
    R_ = 0;
    block_off_.assign(size_t(P_) * (El_ + 1), 0);
    for (int s = 0; s < P_; ++s) {
      int32_t* o = &block_off_[size_t(s) * (El_ + 1)];
      o[0] = static_cast<int32_t>(R_);
      for (int e = 0; e < El_; ++e) o[e + 1] = o[e] + recv_cnt_[s * El_ + e];
      R_ += recv_rows_[s];
    }
    ensure(xr_, R_, h_);
    ensure(rgate_, R_, fe_);
    ensure(rup_, R_, fe_);
    ensure(ract_, R_, fe_);
    ensure(yr_, R_, h_);
    metrics_.a2a_bytes_sent = 0;
    rows_exchange(rows, p(xr_), /*to_experts=*/true);
    const std::vector<const int32_t*> blocks = source_blocks();
    for (const int32_t* o : blocks) {
      B::grouped_linear_forward(p(rgate_), p(xr_), cw(w_gate_), o, El_, h_, fe_);
      B::grouped_linear_forward(p(rup_), p(xr_), cw(w_up_), o, El_, h_, fe_);
    }
    B::swiglu_forward(p(ract_), p(rgate_), p(rup_), R_ * fe_);
    for (const int32_t* o : blocks)
      B::grouped_linear_forward(p(yr_), p(ract_), cw(w_down_), o, El_, fe_, h_);
    rows_exchange(p(yr_), rows_out, /*to_experts=*/false);
  }

  // Expert parallelism, backward: dy to the experts, their backward, dx back.
  void backward_expert_parallel(const T* dy, T* dx) {
    ensure(dyr_, R_, h_);
    ensure(dxr_, R_, h_);
    rows_exchange(dy, p(dyr_), /*to_experts=*/true);
    experts_backward(p(dyr_), p(dxr_), p(xr_), p(rgate_), p(rup_), p(ract_), R_, source_blocks());
    rows_exchange(p(dxr_), dx, /*to_experts=*/false);
  }

  std::vector<const int32_t*> source_blocks() const {
    std::vector<const int32_t*> blocks;
    for (int s = 0; s < P_; ++s) blocks.push_back(&block_off_[size_t(s) * (El_ + 1)]);
    return blocks;
  }

  // [rows, h] rows of T: token order (sorted by global expert) -> the experts' ranks, or back.
  void rows_exchange(const T* in, T* out, bool to_experts) {
    std::vector<int64_t> send(P_), recv(P_);
    for (int q = 0; q < P_; ++q) {
      send[q] = int64_t(to_experts ? send_rows_[q] : recv_rows_[q]) * h_;
      recv[q] = int64_t(to_experts ? recv_rows_[q] : send_rows_[q]) * h_;
      if (q != ep_->rank()) metrics_.a2a_bytes_sent += send[q] * int64_t(sizeof(T));
    }
    parallel::all_to_all_v<B>(ep_, in, send, out, recv, B::kDType);
  }

  // This device's router statistics -> those of the statistics group; aux + z of this layer.
  float reduce_router_stats() {
    std::vector<int32_t> counts(E_);
    // prob_sum[E], counts[E], Σ lse², tokens, dropped[E]
    std::vector<double> stats(3 * E_ + 2, 0.0);
    B::download(counts.data(), counts_.raw(), sizeof(int32_t) * E_);
    B::download(stats.data(), prob_sum_.raw(), sizeof(double) * E_);
    B::download(&stats[2 * E_], lse_sq_.raw(), sizeof(double));
    for (int e = 0; e < E_; ++e) stats[E_ + e] = counts[e];
    stats[2 * E_ + 1] = N_;
    if (capacity_) {
      std::vector<int32_t> dropped(E_);
      B::download(dropped.data(), dropped_.raw(), sizeof(int32_t) * E_);
      for (int e = 0; e < E_; ++e) stats[2 * E_ + 2 + e] = dropped[e];
    }
    comm::all_reduce_host_f64(stats_, stats.data(), int64_t(stats.size()));
    metrics_.dropped = 0;
    for (int e = 0; e < E_; ++e) {
      counts[e] = static_cast<int32_t>(stats[E_ + e]);
      metrics_.tokens_per_expert[e] = counts[e];
      metrics_.dropped_per_expert[e] = static_cast<int64_t>(stats[2 * E_ + 2 + e]);
      metrics_.dropped += metrics_.dropped_per_expert[e];
    }
    metrics_.tokens = static_cast<int64_t>(stats[2 * E_ + 1]);
    B::upload(counts_all_.raw(), counts.data(), sizeof(int32_t) * E_);
    const kernels::MoeRouterLosses l =
        kernels::moe_router_losses(counts.data(), stats.data(), stats[2 * E_], metrics_.tokens, E_,
                                   k_, m_.aux_loss_coef, m_.z_loss_coef);
    metrics_.aux_loss = l.aux;
    metrics_.z_loss = l.z;
    return l.aux + l.z;
  }
  static T* p(Tensor& t) { return static_cast<T*>(t.raw()); }
  static float* f(Tensor& t) { return t.data<float>(); }
  static int32_t* i32(Tensor& t) { return t.data<int32_t>(); }
  static const T* cw(const Tensor& t) { return static_cast<const T*>(t.raw()); }

  MoeOptions m_;
  int E_, k_, h_, fe_, N_;
  comm::Communicator* stats_;
  Scratch* s_;
  comm::Communicator* ep_;  // null: every expert here
  int P_, El_;              // ep size, experts per rank
  bool capacity_ = false;   // capacity_factor > 0
  int G_ = 0;               // row groups of the permute: E, and the dropped rows' with capacity
  const T* in_ = nullptr;
  Tensor w_router_, w_gate_, w_up_, w_down_, g_router_, g_gate_, g_up_, g_down_;
  Tensor logits_, probs_, lse_, expert_, weight_, counts_, counts_all_, prob_sum_, lse_sq_,
      offsets_, row_of_, xp_, egate_, eup_, eact_, yp_;
  std::vector<int32_t> offsets_host_;
  int64_t kept_ = 0;  // rows the experts' groups hold (offsets_host_[E])
  // Capacity: the routing with drops (expert E, weight 0), kept counts [E+1], drops per expert.
  Tensor expert_kept_, weight_kept_, counts_kept_, dropped_;
  // LSH: rotations [L·r·h]; per kept row its id, centroid, group-mean row and first-row scratch;
  // bucket sizes [C], buckets and codes per expert, group means [E, h], the double sums, the
  // centroids xc [C, h] and the experts' outputs for them yc [C, h] (C ≤ A).
  Tensor rot_, ids_, pos_, mu_pos_, first_, cnt_, nb_, codes_, mu_, acc_, xc_, yc_;
  std::vector<int32_t> cen_off_host_;  // [E + 1] each expert's first centroid
  bool compressed_ = false;            // the last forward ran the compression
  int64_t step_ = 0;                   // the LSH warm-up clock (set_step)
  parallel::MoeMetrics metrics_;
  // Expert parallelism: per-expert counts (device [E] for the exchange, host copies), rows per
  // rank each way, the received rows' (source, expert) block offsets, and the received rows'
  // activations [R, ...] (kept for the backward) and gradients.
  Tensor cnt_dev_, cnt_recv_dev_;
  std::vector<int32_t> recv_cnt_, block_off_;
  std::vector<int64_t> send_rows_, recv_rows_;
  int64_t R_ = 0;
  Tensor xr_, rgate_, rup_, ract_, yr_, dyr_, dxr_;
};

}  // namespace grove
