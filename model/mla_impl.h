// Multi-head latent attention (DeepSeek-V2), TransformerT<B>'s MLA members; included by
// model/transformer_impl.h. docs/model.md#multi-head-latent-attention has the math and
// docs/tensor_parallel.md#multi-head-latent-attention the parallel layout.
//
// Per block, with u = rms1(x) (this rank's R rows), a heads of dq = nope + rope, dv = v_head_dim:
//
//   q      = Wq·u                         or  Wq_b · rms_q(Wq_a·u)       [N, a, nope | rope]
//   c_kv   = rms_kv(Wkv_a·u)                                             [N, r_kv]   (the latent)
//   k_R    = rope(Wk_rope·u)                                             [N, rope]   (one head)
//   k      = [ Wk_b·c_kv | k_R in every head ]                           [N, a, dq]
//   v      = [ Wv_b·c_kv | 0 ]                                           [N, a, dq]  (zero pad)
//   att    = attention(q with its RoPE part rotated, k, v), scale 1/sqrt(dq)
//   out    = Wo · att[:, :, :dv]
//
// The attention kernels (and tree / ring attention) take one head width for q, k and v, so v is
// zero-padded from dv to dq (dv <= dq is validated): padded columns of v give zero output columns,
// whose gradient is zero, so the result is exact and the kernels stay as they are.
//
// Tensor parallelism: heads are split (wq / wq_b, wk_b, wv_b by rows; wo by columns). The
// down-projections Wq_a, Wkv_a, Wk_rope and the latent norms are replicated and run on this
// rank's rows of u (the sequence shard under SP), like the norms; the latents then enter the
// column-parallel up-projections through g (SP: all-gather, backward reduce-scatter) or f
// (TP without SP: identity, backward all-reduce), so their gradients are complete on the rows a
// rank holds. Under SP the replicated weights' gradients are SUM-all-reduced over TP at the end
// of the step, as the norm weights'.
#pragma once

#include "model/transformer.h"

namespace grove {

template <class B>
void TransformerT<B>::mla_allocate_scratch() {
  const int64_t N = N_, R = rows_, H = heads_, rope = rope_d_;
  MlaScratch& s = mla_s_;
  if (qr_ > 0) {
    if (sp_) s.cqn_full = act({N, qr_});
    if (sp_) s.dcqn = act({R, qr_});
    s.dcqn_full = act({N, qr_});
    s.dcq = act({R, qr_});
  }
  if (sp_) s.ckvn_full = act({N, kvr_});
  if (sp_) s.kr_full = act({N, rope});
  if (sp_) s.dckvn = act({R, kvr_});
  s.kr = act({R, rope});
  s.qrope = act({N, H * rope});
  s.kn = act({N, H * nope_});
  s.vc = act({N, H * vd_});
  s.attc = act({N, H * vd_});
  s.dattc = act({N, H * vd_});
  s.dkr_full = act({N, rope});
  s.dkr_head = act({N, rope});
  s.dckvn_full = act({N, kvr_});
  s.dckv = act({R, kvr_});
}

template <class B>
typename B::T* TransformerT<B>::gather_latent(Tensor& shard, Tensor& full, int cols) {
  if (!sp_) return p(shard);
  parallel::gather_from_sequence_region_forward<B>(tp_, p(shard), p(full), N_, cols);
  return p(full);
}

template <class B>
typename B::T* TransformerT<B>::reduce_latent_grad(Tensor& full, Tensor& shard, int cols) {
  if (sp_) {
    parallel::gather_from_sequence_region_backward<B>(tp_, p(full), p(shard), N_, cols);
    return p(shard);
  }
  parallel::copy_to_tp_region_backward<B>(tp_, p(full), int64_t(N_) * cols);
  return p(full);
}

template <class B>
void TransformerT<B>::mla_rope_q(T* q, bool backward) {
  const size_t es = sizeof(T), rows = size_t(N_) * heads_;
  T* qr = p(mla_s_.qrope);
  B::copy_2d(qr, es * rope_d_, q + nope_, es * d_, es * rope_d_, rows);
  rope(qr, heads_, backward);
  B::copy_2d(q + nope_, es * d_, qr, es * rope_d_, es * rope_d_, rows);
}

template <class B>
const typename B::T* TransformerT<B>::mla_compact_att(const BlockActivations& a) {
  const size_t es = sizeof(T);
  B::copy_2d(mla_s_.attc.raw(), es * vd_, a.att.raw(), es * d_, es * vd_, size_t(N_) * heads_);
  return p(mla_s_.attc);
}

template <class B>
void TransformerT<B>::mla_qkv_forward(int l, BlockActivations& a, const T* ln1_full) {
  const LayerWeights& m = params_.layers[l];   // fp32 masters: norm weights
  const LayerWeights& w = compute_.layers[l];  // compute copy: matrices
  MlaScratch& s = mla_s_;
  const int N = N_, R = static_cast<int>(rows_), h = h_, H = heads_;
  const size_t es = sizeof(T), rows = size_t(N) * H;
  const float eps = config_.norm_eps;
  const T* u = p(a.ln1);  // this rank's rows

  // Queries [N, H*dq], each head [nope | rope]; RoPE on the rope part.
  if (qr_ == 0) {
    B::linear_forward(p(a.q), ln1_full, p(w.wq), nullptr, N, h, qd_);
  } else {
    B::linear_forward(p(a.cq), u, p(w.wq_a), nullptr, R, h, qr_);
    B::rmsnorm_forward(p(a.cqn), f(a.rstdq), p(a.cq), f(m.q_norm), R, qr_, eps);
    const T* cqn = gather_latent(a.cqn, s.cqn_full, qr_);
    B::linear_forward(p(a.q), cqn, p(w.wq_b), nullptr, N, qr_, qd_);
  }
  mla_rope_q(p(a.q), /*backward=*/false);

  // The KV latent and the shared RoPE key, on this rank's rows, then g / f.
  B::linear_forward(p(a.ckv), u, p(w.wkv_a), nullptr, R, h, kvr_);
  B::rmsnorm_forward(p(a.ckvn), f(a.rstdkv), p(a.ckv), f(m.kv_norm), R, kvr_, eps);
  B::linear_forward(p(s.kr), u, p(w.wk_rope), nullptr, R, h, rope_d_);
  const T* ckvn = gather_latent(a.ckvn, s.ckvn_full, kvr_);
  T* kr = gather_latent(s.kr, s.kr_full, rope_d_);
  rope(kr, 1, /*backward=*/false);
  if (mla_attend_) {  // decoding with the latent cache: no up-projections, no K/V
    mla_attend_(l, p(s.attc), p(a.q), ckvn, kr);
    return;
  }

  // Up-projections of this rank's heads, then the kernels' layout: k = [k_nope | k_R] per head,
  // v zero-padded from dv to dq.
  B::linear_forward(p(s.kn), ckvn, p(w.wk_b), nullptr, N, kvr_, H * nope_);
  B::linear_forward(p(s.vc), ckvn, p(w.wv_b), nullptr, N, kvr_, H * vd_);
  B::copy_2d(a.k.raw(), es * d_, s.kn.raw(), es * nope_, es * nope_, rows);
  for (int hh = 0; hh < H; ++hh)
    B::copy_2d(p(a.k) + hh * d_ + nope_, es * qd_, kr, es * rope_d_, es * rope_d_, N);
  if (vd_ < d_) B::zero(a.v.raw(), es * rows * d_);
  B::copy_2d(a.v.raw(), es * d_, s.vc.raw(), es * vd_, es * vd_, rows);
}

template <class B>
void TransformerT<B>::mla_qkv_backward(int l, BlockActivations& a) {
  const LayerWeights& m = params_.layers[l];
  const LayerWeights& w = compute_.layers[l];
  LayerWeights& gw = grads_.layers[l];
  MlaScratch& s = mla_s_;
  const int N = N_, R = static_cast<int>(rows_), h = h_, H = heads_;
  const size_t es = sizeof(T), rows = size_t(N) * H;
  const T* u = p(a.ln1);

  // Keys: the no-RoPE part per head, and the RoPE key's gradient summed over this rank's heads.
  T* dk = p(g_.dk);
  B::copy_2d(s.kn.raw(), es * nope_, dk, es * d_, es * nope_, rows);
  T* dkr = p(s.dkr_full);
  B::copy_2d(dkr, es * rope_d_, dk + nope_, es * qd_, es * rope_d_, N);
  for (int hh = 1; hh < H; ++hh) {
    B::copy_2d(s.dkr_head.raw(), es * rope_d_, dk + hh * d_ + nope_, es * qd_, es * rope_d_, N);
    B::add_inplace(dkr, p(s.dkr_head), int64_t(N) * rope_d_);
  }
  rope(dkr, 1, /*backward=*/true);
  // Values: drop the padding's (zero) gradient.
  B::copy_2d(s.vc.raw(), es * vd_, g_.dv.raw(), es * d_, es * vd_, rows);

  // Up-projections: d(latent) [N, r_kv] from this rank's heads.
  const T* ckvn = gather_latent(a.ckvn, s.ckvn_full, kvr_);  // SP keeps only the shard
  B::zero(s.dckvn_full.raw(), es * N * kvr_);
  B::linear_backward(p(s.dckvn_full), f(gw.wk_b), nullptr, p(s.kn), ckvn, p(w.wk_b), N, kvr_,
                     H * nope_);
  B::linear_backward(p(s.dckvn_full), f(gw.wv_b), nullptr, p(s.vc), ckvn, p(w.wv_b), N, kvr_,
                     H * vd_);

  // Queries: RoPE backward, then the column-parallel wq (its input gradient reduced like MHA's)
  // or wq_b, q_norm and the replicated wq_a on this rank's rows.
  mla_rope_q(p(g_.dq), /*backward=*/true);
  if (qr_ == 0) {
    const T* ln1 = gather_rows(a.ln1);
    B::zero(g_.dfull.raw(), es * N * h);
    B::linear_backward(p(g_.dfull), f(gw.wq), nullptr, p(g_.dq), ln1, p(w.wq), N, h, qd_);
    reduce_input_grad();  // g_.dln = d(loss)/d(u) through the queries
  } else {
    const T* cqn = gather_latent(a.cqn, s.cqn_full, qr_);
    B::zero(s.dcqn_full.raw(), es * N * qr_);
    B::linear_backward(p(s.dcqn_full), f(gw.wq_b), nullptr, p(g_.dq), cqn, p(w.wq_b), N, qr_, qd_);
    const T* dcqn = reduce_latent_grad(s.dcqn_full, s.dcqn, qr_);
    B::zero(s.dcq.raw(), es * R * qr_);
    B::rmsnorm_backward(p(s.dcq), f(gw.q_norm), dcqn, p(a.cq), f(m.q_norm), f(a.rstdq), R, qr_);
    B::zero(g_.dln.raw(), es * R * h);
    B::linear_backward(p(g_.dln), f(gw.wq_a), nullptr, p(s.dcq), u, p(w.wq_a), R, h, qr_);
  }

  // The KV latent and the RoPE key: complete gradients on this rank's rows after f / g.
  const T* dckvn = reduce_latent_grad(s.dckvn_full, s.dckvn, kvr_);
  B::zero(s.dckv.raw(), es * R * kvr_);
  B::rmsnorm_backward(p(s.dckv), f(gw.kv_norm), dckvn, p(a.ckv), f(m.kv_norm), f(a.rstdkv), R,
                      kvr_);
  B::linear_backward(p(g_.dln), f(gw.wkv_a), nullptr, p(s.dckv), u, p(w.wkv_a), R, h, kvr_);
  const T* dkr_rows = reduce_latent_grad(s.dkr_full, s.kr, rope_d_);
  B::linear_backward(p(g_.dln), f(gw.wk_rope), nullptr, dkr_rows, u, p(w.wk_rope), R, h, rope_d_);
}

}  // namespace grove
