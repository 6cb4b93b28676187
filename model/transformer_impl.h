// TransformerT<B>'s definitions (model/transformer.h), included by the translation units that
// instantiate a backend: model/transformer.cc (CpuBackend) and model/cuda/cuda_transformer.cc
// (CudaBackend<float>, CudaBackend<bf16>). Tensor and sequence parallelism run on every backend
// (parallel/tensor_parallel.h, parallel/vocab_parallel.h are templates over B), and so does
// context parallelism (parallel/cp_attention.h, zigzag.h); expert parallelism is MoeImpl's
// (parallel::MoeLayer on the host, LocalMoe<B> on a device; both drop by capacity and compress
// by LSH the same way).
#pragma once

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "model/transformer.h"
#include "parallel/lsh_dispatcher.h"
#include "parallel/tensor_parallel.h"

namespace grove {

namespace transformer_detail {

inline comm::Communicator* group_or_null(const parallel::ParallelGrid* grid, parallel::Group g) {
  if (grid == nullptr) return nullptr;
  comm::Communicator& c = grid->group(g);
  return c.size() > 1 ? &c : nullptr;
}

}  // namespace transformer_detail

template <class B>
Status TransformerT<B>::Supports(const ModelConfig& c, int batch, int seq,
                                 const ModelParallel& par) {
  if (Status st = c.Validate(); !st.ok()) return st;
  if (batch <= 0) return Status::Error("batch must be positive");
  if (seq <= 0 || seq > c.max_seq_len)
    return Status::Error("seq " + std::to_string(seq) + " must lie in [1, model.max_seq_len=" +
                         std::to_string(c.max_seq_len) + "]");
  if constexpr (requires { B::Supported(); }) {
    if (Status st = B::Supported(); !st.ok()) return st;
  }
  if constexpr (!kHost) {
    if (c.moe.num_experts > 0 && c.moe.top_k > B::kMoeMaxTopK)
      return Status::Error("model.moe.top_k=" + std::to_string(c.moe.top_k) +
                           " exceeds the GPU router's limit of " + std::to_string(B::kMoeMaxTopK));
    if (c.attn_qk_dim() > 256 || c.attn_qk_dim() % 2 != 0)
      return Status::Error(
          "the GPU attention kernel needs an even head dim <= 256; model.d_model / model.n_heads "
          "(MLA: model.mla.qk_nope_head_dim + qk_rope_head_dim) = " +
          std::to_string(c.attn_qk_dim()));
    if (!cuda_device_available())
      return Status::Error(
          "no CUDA device is available to this process (train.device=cuda); check nvidia-smi and "
          "CUDA_VISIBLE_DEVICES, or set train.device=cpu");
  }
  return Status::Ok();
}

template <class B>
Tensor TransformerT<B>::alloc(Shape shape, DType dtype) {
  Tensor t = Tensor::zeros(std::move(shape), dtype, B::kDevice);
  allocated_ += int64_t(t.bytes());
  return t;
}

template <class B>
TransformerT<B>::TransformerT(const ModelConfig& config, int batch, int seq, Recompute mode,
                              ModelParallel parallel, bool training)
    : config_(config), b_(batch), s_(seq), mode_(mode), par_(parallel) {
  namespace par = parallel;
  using transformer_detail::group_or_null;
  const Status st = Supports(config, batch, seq, parallel);
  GROVE_CHECK(st.ok()) << st.message();
  const par::ParallelGrid* grid = parallel.grid;
  tp_ = group_or_null(grid, par::Group::kTp);
  edp_ = group_or_null(grid, par::Group::kEdp);
  cp_ = group_or_null(grid, par::Group::kCp);
  dpcp_ = group_or_null(grid, par::Group::kDpCp);
  if (grid == nullptr && parallel.data_parallel != nullptr && parallel.data_parallel->size() > 1)
    dpcp_ = parallel.data_parallel;
  cp_size_ = cp_ ? cp_->size() : 1;
  t_ = parallel::tp_size(tp_);
  sp_ = parallel.sequence_parallel && t_ > 1;
  GROVE_CHECK(seq % (2 * cp_size_) == 0 || cp_size_ == 1)
      << "context parallelism cuts the sequence into 2·cp chunks: cp=" << cp_size_ << " needs seq ("
      << seq << ") divisible by " << 2 * cp_size_;
  s_ = seq / cp_size_;
  GROVE_CHECK(config_.n_heads % t_ == 0 && config_.kv_heads() % t_ == 0)
      << "tp=" << t_ << " must divide model.n_heads=" << config_.n_heads << " and the kv heads ("
      << config_.kv_heads() << ")";
  GROVE_CHECK(!sp_ || s_ % t_ == 0)
      << "sequence parallelism splits the sequence: tp=" << t_ << " must divide seq/cp " << s_;
  N_ = b_ * s_;
  h_ = config_.d_model;
  d_ = config_.attn_qk_dim();
  vd_ = config_.attn_v_dim();
  rope_d_ = config_.rope_dim();
  heads_ = config_.n_heads / t_;
  kv_heads_ = config_.kv_heads() / t_;
  qd_ = heads_ * d_;
  kvd_ = kv_heads_ * d_;
  od_ = heads_ * vd_;
  mla_ = config_.is_mla();
  if (mla_) {
    nope_ = config_.mla_nope_dim();
    qr_ = config_.mla.q_lora_rank;
    kvr_ = config_.mla_kv_rank();
  }
  f_ = config_.ffn() / t_;
  Vl_ = config_.vocab_size / t_;
  rows_ = sp_ ? N_ / t_ : N_;
  const int64_t N = N_, h = h_, R = rows_;
  const int ep = grid ? grid->shape().ep : 1, ep_rank = grid ? grid->coord().ep : 0;

  // Parameters: one flat fp32 buffer (and its gradient) with named views; a compute copy in T.
  layout_ = ParamLayout::Of(config_, t_, ep);
  params_flat_ = alloc({layout_.size}, DType::kF32);
  params_ = Weights::View(params_flat_, layout_);
  if (training) {
    grads_flat_ = alloc({layout_.size}, DType::kF32);
    grads_ = Weights::View(grads_flat_, layout_);
  }
  if constexpr (std::is_same_v<T, float>) {
    compute_ = params_;
    if constexpr (!std::is_same_v<typename kernels::WeightCopyOf<B>::type, kernels::NoWeightCopy>) {
      weight_copy_ =
          std::make_unique<typename kernels::WeightCopyOf<B>::type>(flat_params(), layout_.size);
      allocated_ += weight_copy_->bytes();
    }
  } else {
    compute_flat_ = alloc({layout_.size}, B::kDType);
    compute_ = Weights::View(compute_flat_, layout_);
  }
  {
    const Weights init = Weights::Init(config_, t_, parallel::tp_rank(tp_), ep, ep_rank);
    std::vector<NamedTensor> src = init.named(), dst = params_.named();
    for (size_t i = 0; i < dst.size(); ++i) dst[i].tensor.copy_from(src[i].tensor);
  }
  sync_compute_weights();

  // Under CP and on device backends the attention probabilities are never kept (the CP and the
  // fused GPU kernels recompute them), so recompute=none stores what selective stores.
  const bool with_probs = kHost && cp_size_ == 1;
  stash_ = ActivationStash::Allocate(config_, MemoryLayout{b_, s_, t_, sp_, mode_}, with_probs,
                                     B::kDevice, B::kDType);
  allocated_ += int64_t(activation_report().total());  // the stash (no MoE layer yet)

  if (cp_size_ > 1) {
    zigzag_ = std::make_unique<par::Zigzag>(seq, cp_size_, cp_->rank());
    cp_attn_ = std::make_unique<par::ContextAttentionT<B>>(
        parallel.cp_attention, cp_, par::CpAttentionShape{seq, batch, heads_, kv_heads_, d_, true});
    allocated_ += cp_attn_->workspace_bytes();
  }
  if (t_ > 1) {
    embed_ = std::make_unique<par::VocabParallelEmbedding<B>>(config_.vocab_size, h_, tp_);
    ce_scratch_ = alloc({3 * N}, DType::kF32);
  }

  // MoE blocks: their router and experts are views of the flat buffers.
  moe_.resize(config_.n_layers);
  if (config_.moe.num_experts > 0) {
    GROVE_CHECK(t_ == 1 || sp_) << "MoE with tp=" << t_
                                << " needs sequence parallelism (experts see distinct tokens)";
    const MoeOptions& mc = config_.moe;
    const int fe = config_.expert_ffn();
    comm::Communicator* ep_group = group_or_null(grid, par::Group::kEp);
    comm::Communicator* stats = grid && grid->world().size() > 1 ? &grid->world() : dpcp_;
    if constexpr (!kHost)
      moe_scratch_ = std::make_unique<typename LocalMoe<B>::Scratch>(
          LocalMoe<B>::AllocateScratch(mc, h_, fe, static_cast<int>(rows_)));
    for (int l = 0; l < config_.n_layers; ++l) {
      if (!config_.is_moe_layer(l)) continue;
      const LayerWeights& w = compute_.layers[l];
      const LayerWeights g = training ? grads_.layers[l] : LayerWeights{};
      if constexpr (kHost) {
        moe_[l] =
            std::make_unique<par::MoeLayer>(mc, h_, fe, static_cast<int>(rows_), ep_group, stats);
        if (mc.lsh.enabled)
          moe_[l]->set_dispatcher(
              std::make_unique<par::LshDispatcher>(mc.num_experts, h_, ep_group, mc.lsh));
        std::vector<NamedTensor> gv;  // decoding: the layer keeps its own (unused) gradients
        if (training)
          gv = {{"router", g.router},
                {"experts.w_gate", g.e_gate},
                {"experts.w_up", g.e_up},
                {"experts.w_down", g.e_down}};
        moe_[l]->bind({{"router", params_.layers[l].router},
                       {"experts.w_gate", w.e_gate},
                       {"experts.w_up", w.e_up},
                       {"experts.w_down", w.e_down}},
                      gv);
      } else {
        // Under SP each TP rank routes its own sequence shard (rows_ tokens).
        moe_[l] = std::make_unique<LocalMoe<B>>(mc, h_, fe, static_cast<int>(rows_), stats,
                                                moe_scratch_.get(), ep_group);
        moe_[l]->bind(w.router, w.e_gate, w.e_up, w.e_down, g.router, g.e_gate, g.e_up, g.e_down);
        allocated_ += int64_t(moe_[l]->stash_bytes());
      }
    }
  }

  rope_cos_ = alloc({config_.max_seq_len, rope_d_ / 2}, DType::kF32);
  rope_sin_ = alloc({config_.max_seq_len, rope_d_ / 2}, DType::kF32);
  B::rope_table(f(rope_cos_), f(rope_sin_), config_.max_seq_len, rope_d_, config_.rope_theta);
  tokens_ = alloc({N}, DType::kI32);
  targets_ = alloc({N}, DType::kI32);
  host_tokens_.resize(N);
  host_targets_.resize(N);
  if (!kHost) host_losses_.resize(N);
  if (sp_ || t_ > 1) full_ = act({N, h});
  g_.dresid = act({R, h});
  g_.dfull = act({N, h});
  if (sp_) g_.dout = act({N, h});
  g_.dln = act({R, h});
  g_.datt = act({N, qd_});
  g_.dq = act({N, qd_});
  g_.dk = act({N, kvd_});
  g_.dv = act({N, kvd_});
  g_.dact = act({N, f_});
  g_.dgate = act({N, f_});
  g_.dup = act({N, f_});
  g_.dlosses = alloc({N}, DType::kF32);
  if (mla_) mla_allocate_scratch();
}

// ---- parameters --------------------------------------------------------------------------------

template <class B>
void TransformerT<B>::set_position(int pos0) {
  GROVE_CHECK(pos0 >= 0 && pos0 + s_ <= config_.max_seq_len)
      << "position " << pos0 << " + " << s_ << " rows exceeds model.max_seq_len "
      << config_.max_seq_len;
  pos0_ = pos0;
}

template <class B>
void TransformerT<B>::set_mla_attention(MlaAttendFn attend) {
  GROVE_CHECK(mla_ && !sp_) << "set_mla_attention: an MLA model without sequence parallelism";
  mla_attend_ = std::move(attend);
}

template <class B>
void TransformerT<B>::sync_compute_weights() {
  if constexpr (!std::is_same_v<T, float>)
    B::convert(p(compute_flat_), f(params_flat_), layout_.size);
  if (weight_copy_) weight_copy_->refresh();
}

template <class B>
Status TransformerT<B>::load_params(const Weights& w) {
  std::vector<NamedTensor> src = w.named(), dst = params_.named();
  if (src.size() != dst.size())
    return Status::Error("weights have " + std::to_string(src.size()) + " tensors, the model " +
                         std::to_string(dst.size()));
  for (size_t i = 0; i < dst.size(); ++i)
    if (src[i].name != dst[i].name || src[i].tensor.shape() != dst[i].tensor.shape())
      return Status::Error("weight '" + src[i].name + "' " + shape_str(src[i].tensor.shape()) +
                           " does not match the model's '" + dst[i].name + "' " +
                           shape_str(dst[i].tensor.shape()));
  for (size_t i = 0; i < dst.size(); ++i) dst[i].tensor.copy_from(src[i].tensor);
  sync_compute_weights();
  return Status::Ok();
}

template <class B>
void TransformerT<B>::store_params(Weights* w) const {
  std::vector<NamedTensor> src = params_.named(), dst = w->named();
  GROVE_CHECK(src.size() == dst.size()) << "store_params: weights of another model";
  for (size_t i = 0; i < dst.size(); ++i) dst[i].tensor.copy_from(src[i].tensor);
}

// ---- region helpers ----------------------------------------------------------------------------

template <class B>
void TransformerT<B>::rope(T* x, int heads, bool backward) {
  const float* c = f(rope_cos_);
  const float* sn = f(rope_sin_);
  if (zigzag_) {
    parallel::zigzag_rope<B>(x, c, sn, *zigzag_, b_, heads, rope_d_, backward);
    return;
  }
  if (backward)
    B::rope_backward(x, c, sn, s_, b_, heads, rope_d_, pos0_);
  else
    B::rope_forward(x, c, sn, s_, b_, heads, rope_d_, pos0_);
}

template <class B>
const typename B::T* TransformerT<B>::gather_rows(Tensor& shard) {
  if (sp_) {
    parallel::gather_from_sequence_region_forward<B>(tp_, p(shard), p(full_), N_, h_);
    return p(full_);
  }
  return p(shard);
}

template <class B>
void TransformerT<B>::reduce_input_grad() {
  const int64_t N = N_, h = h_;
  if (sp_) {
    parallel::gather_from_sequence_region_backward<B>(tp_, p(g_.dfull), p(g_.dln), N, h);
    return;
  }
  parallel::copy_to_tp_region_backward<B>(tp_, p(g_.dfull), N * h);
  std::swap(g_.dfull, g_.dln);  // R == N without SP: the gradient is already in place
}

template <class B>
void TransformerT<B>::reduce_output(T* out) {
  if (sp_)
    parallel::scatter_to_sequence_region_forward<B>(tp_, p(full_), out, N_, h_);
  else
    parallel::reduce_from_tp_region_forward<B>(tp_, out, int64_t(N_) * h_);
}

template <class B>
const typename B::T* TransformerT<B>::output_grad() {
  if (sp_) {  // ḡ backward: all-gather the residual gradient
    parallel::scatter_to_sequence_region_backward<B>(tp_, p(g_.dresid), p(g_.dout), N_, h_);
    return p(g_.dout);
  }
  return p(g_.dresid);  // f̄ backward: identity
}

// ---- one block ---------------------------------------------------------------------------------

template <class B>
void TransformerT<B>::block_forward(int l, BlockActivations& a) {
  const LayerWeights& m = params_.layers[l];   // fp32 masters: norm weights
  const LayerWeights& w = compute_.layers[l];  // compute copy: matrices
  const int N = N_, h = h_, R = static_cast<int>(rows_);
  const T* x = p(stash_.resid[l]);
  T* out = p(stash_.resid[l + 1]);
  // Row-parallel outputs go to scratch under SP (then reduce-scattered), in place otherwise.
  T* attn_out = sp_ ? p(full_) : p(a.resid2);
  T* mlp_out = sp_ ? p(full_) : out;
  const float eps = config_.norm_eps;

  // Attention: x2 = x + ḡ/f̄(Wo · attention(rope(Wq·g(rms1(x))), ...)).
  B::rmsnorm_forward(p(a.ln1), f(a.rstd1), x, f(m.attn_norm), R, h, eps);
  // MLA with a query latent reads ln1 only through its replicated down-projections (shard rows).
  const T* ln1 = mla_ && qr_ > 0 ? nullptr : gather_rows(a.ln1);
  if (mla_) {
    mla_qkv_forward(l, a, ln1);
  } else {
    B::linear_forward(p(a.q), ln1, p(w.wq), nullptr, N, h, qd_);
    B::linear_forward(p(a.k), ln1, p(w.wk), nullptr, N, h, kvd_);
    B::linear_forward(p(a.v), ln1, p(w.wv), nullptr, N, h, kvd_);
    rope(p(a.q), heads_, /*backward=*/false);
    rope(p(a.k), kv_heads_, /*backward=*/false);
  }
  // MLA latent decoding: mla_qkv_forward ran the attention into mla_s_.attc (no K/V).
  bool done = mla_ && mla_attend_;
  if (!done && attend_) {  // decoding: attention against the KV cache
    attend_(l, p(a.att), p(a.q), p(a.k), p(a.v));
    done = true;
  }
  if (!done && cp_attn_) {  // tree or ring attention over the CP group, global lse
    cp_attn_->forward(p(a.att), f(a.lse), p(a.q), p(a.k), p(a.v));
    done = true;
  }
  if (!done) {
    const kernels::AttentionShape shape{s_, s_, b_, heads_, kv_heads_, d_, /*causal=*/true};
    B::attention_forward(p(a.att), f(a.lse), a.probs.defined() ? p(a.probs) : nullptr, p(a.q),
                         p(a.k), p(a.v), shape);
  }
  const T* att_in = !mla_ ? p(a.att) : mla_attend_ ? p(mla_s_.attc) : mla_compact_att(a);
  B::linear_forward(attn_out, att_in, p(w.wo), nullptr, N, od_, h);
  reduce_output(p(a.resid2));
  B::add_inplace(p(a.resid2), x, int64_t(R) * h);

  // MLP: out = x2 + ḡ/f̄(Wdown · (silu(Wgate·g(rms2(x2))) * Wup·g(rms2(x2)))).
  B::rmsnorm_forward(p(a.ln2), f(a.rstd2), p(a.resid2), f(m.mlp_norm), R, h, eps);
  if (moe_[l]) {
    // MoE: the experts take this rank's own rows (the sequence shard under SP) directly; no
    // TP communication, the expert all-to-all happens inside the layer.
    moe_loss_ += moe_[l]->forward(out, p(a.ln2), R);
    B::add_inplace(out, p(a.resid2), int64_t(R) * h);
    return;
  }
  const T* ln2 = gather_rows(a.ln2);
  B::linear_forward(p(a.gate), ln2, p(w.w_gate), nullptr, N, h, f_);
  B::linear_forward(p(a.up), ln2, p(w.w_up), nullptr, N, h, f_);
  B::swiglu_forward(p(a.act), p(a.gate), p(a.up), int64_t(N) * f_);
  B::linear_forward(mlp_out, p(a.act), p(w.w_down), nullptr, N, f_, h);
  reduce_output(out);
  B::add_inplace(out, p(a.resid2), int64_t(R) * h);
}

// Dense MLP backward: g_.dln = d(loss)/d(ln2 shard) from g_.dresid = d(loss)/d(block output).
template <class B>
void TransformerT<B>::mlp_backward(int l, BlockActivations& a) {
  const LayerWeights& w = compute_.layers[l];
  LayerWeights& gw = grads_.layers[l];
  const int N = N_, h = h_;
  const size_t es = sizeof(T);
  const T* dmlp_out = output_grad();
  B::zero(g_.dact.raw(), es * N * f_);
  B::linear_backward(p(g_.dact), f(gw.w_down), nullptr, dmlp_out, p(a.act), p(w.w_down), N, f_, h);
  B::zero(g_.dgate.raw(), es * N * f_);
  B::zero(g_.dup.raw(), es * N * f_);
  B::swiglu_backward(p(g_.dgate), p(g_.dup), p(g_.dact), p(a.gate), p(a.up), int64_t(N) * f_);
  const T* ln2 = gather_rows(a.ln2);  // SP keeps only the shard: re-gather it
  B::zero(g_.dfull.raw(), es * N * h);
  B::linear_backward(p(g_.dfull), f(gw.w_gate), nullptr, p(g_.dgate), ln2, p(w.w_gate), N, h, f_);
  B::linear_backward(p(g_.dfull), f(gw.w_up), nullptr, p(g_.dup), ln2, p(w.w_up), N, h, f_);
  reduce_input_grad();
}

// Attention backward: g_.dresid = d(loss)/d(x2) on entry, d(loss)/d(block input) on exit.
template <class B>
void TransformerT<B>::attention_backward(int l, BlockActivations& a) {
  const LayerWeights& m = params_.layers[l];
  const LayerWeights& w = compute_.layers[l];
  LayerWeights& gw = grads_.layers[l];
  const int N = N_, h = h_, R = static_cast<int>(rows_);
  const size_t es = sizeof(T);
  const T* x = p(stash_.resid[l]);
  const T* dattn_out = output_grad();
  B::zero(g_.datt.raw(), es * N * qd_);
  if (mla_) {  // the output projection reads the attention output without the value padding
    const T* attc = mla_compact_att(a);
    B::zero(mla_s_.dattc.raw(), es * N * od_);
    B::linear_backward(p(mla_s_.dattc), f(gw.wo), nullptr, dattn_out, attc, p(w.wo), N, od_, h);
    B::copy_2d(g_.datt.raw(), es * d_, mla_s_.dattc.raw(), es * vd_, es * vd_, size_t(N) * heads_);
  } else {
    B::linear_backward(p(g_.datt), f(gw.wo), nullptr, dattn_out, p(a.att), p(w.wo), N, qd_, h);
  }
  B::zero(g_.dq.raw(), es * N * qd_);
  B::zero(g_.dk.raw(), es * N * kvd_);
  B::zero(g_.dv.raw(), es * N * kvd_);
  bool done = false;
  if (cp_attn_) {
    cp_attn_->backward(p(g_.dq), p(g_.dk), p(g_.dv), p(g_.datt), p(a.q), p(a.k), p(a.v), p(a.att),
                       f(a.lse));
    done = true;
  }
  if (!done) {
    const kernels::AttentionShape shape{s_, s_, b_, heads_, kv_heads_, d_, /*causal=*/true};
    B::attention_backward(p(g_.dq), p(g_.dk), p(g_.dv), p(g_.datt), p(a.q), p(a.k), p(a.v),
                          p(a.att), f(a.lse), a.probs.defined() ? p(a.probs) : nullptr, shape);
  }
  if (mla_) {
    mla_qkv_backward(l, a);
  } else {
    rope(p(g_.dq), heads_, /*backward=*/true);
    rope(p(g_.dk), kv_heads_, /*backward=*/true);
    const T* ln1 = gather_rows(a.ln1);
    B::zero(g_.dfull.raw(), es * N * h);
    B::linear_backward(p(g_.dfull), f(gw.wq), nullptr, p(g_.dq), ln1, p(w.wq), N, h, qd_);
    B::linear_backward(p(g_.dfull), f(gw.wk), nullptr, p(g_.dk), ln1, p(w.wk), N, h, kvd_);
    B::linear_backward(p(g_.dfull), f(gw.wv), nullptr, p(g_.dv), ln1, p(w.wv), N, h, kvd_);
    reduce_input_grad();
  }
  B::rmsnorm_backward(p(g_.dresid), f(gw.attn_norm), p(g_.dln), x, f(m.attn_norm), f(a.rstd1), R,
                      h);
}

// On entry g_.dresid holds d(loss)/d(block output) [R, h]; on exit d(loss)/d(block input).
template <class B>
void TransformerT<B>::block_backward(int l, BlockActivations& a) {
  const LayerWeights& m = params_.layers[l];
  LayerWeights& gw = grads_.layers[l];
  const int R = static_cast<int>(rows_);
  // MLP. The residual passes dresid straight through to x2.
  if (moe_[l]) {
    B::zero(g_.dln.raw(), sizeof(T) * size_t(R) * h_);
    moe_[l]->backward(p(g_.dln), p(g_.dresid), loss_scale_);
  } else {
    mlp_backward(l, a);
  }
  B::rmsnorm_backward(p(g_.dresid), f(gw.mlp_norm), p(g_.dln), p(a.resid2), f(m.mlp_norm),
                      f(a.rstd2), R, h_);
  attention_backward(l, a);
}

// ---- whole model -------------------------------------------------------------------------------

template <class B>
float TransformerT<B>::forward(const int32_t* tokens, const int32_t* targets) {
  const int N = N_, V = config_.vocab_size, R = static_cast<int>(rows_);
  int32_t* tok = host_tokens_.data();
  int32_t* tgt = host_targets_.data();
  if (zigzag_) {  // this CP rank's rows of the full [seq, b] batch
    parallel::zigzag_shard(tok, tokens, *zigzag_, b_);
    parallel::zigzag_shard(tgt, targets, *zigzag_, b_);
  } else {
    std::memcpy(tok, tokens, sizeof(int32_t) * N);
    std::memcpy(tgt, targets, sizeof(int32_t) * N);
  }
  int64_t valid = 0;
  for (int i = 0; i < N; ++i) {
    GROVE_CHECK(tok[i] >= 0 && tok[i] < V) << "token id " << tok[i] << " at row " << i
                                           << " is outside the vocabulary [0, " << V << ")";
    GROVE_CHECK(tgt[i] < V) << "target id " << tgt[i] << " outside the vocabulary";
    valid += tgt[i] >= 0;
  }
  B::upload(tokens_.raw(), tok, sizeof(int32_t) * N);
  B::upload(targets_.raw(), tgt, sizeof(int32_t) * N);

  moe_loss_ = 0;
  // Embedding: vocabulary-parallel partial rows, then f̄ (all-reduce) or ḡ (reduce-scatter).
  if (t_ > 1) {
    embed_->forward(sp_ ? p(full_) : p(stash_.resid[0]), tokens_.data<int32_t>(), p(compute_.wte),
                    N);
    reduce_output(p(stash_.resid[0]));
  } else {
    B::embedding_forward(p(stash_.resid[0]), tokens_.data<int32_t>(), p(compute_.wte), N, h_);
  }

  for (int l = 0; l < config_.n_layers; ++l)
    block_forward(l, mode_ == Recompute::kFull ? stash_.transient : stash_.blocks[l]);

  // Head: final norm, g, (vocabulary-parallel) LM head and cross-entropy.
  B::rmsnorm_forward(p(stash_.lnf), f(stash_.rstdf), p(stash_.resid[config_.n_layers]),
                     f(params_.final_norm), R, h_, config_.norm_eps);
  B::linear_forward(p(stash_.logits), gather_rows(stash_.lnf), p(compute_.lm_head), nullptr, N, h_,
                    Vl_);
  if (t_ > 1)
    parallel::vocab_parallel_cross_entropy_forward<B>(
        tp_, f(stash_.losses), f(stash_.ce_lse), p(stash_.logits), targets_.data<int32_t>(), N,
        embed_->local_vocab(), embed_->vocab_start(), f(ce_scratch_));
  else
    B::cross_entropy_forward(f(stash_.losses), f(stash_.ce_lse), p(stash_.logits),
                             targets_.data<int32_t>(), N, V);
  const float* losses = f(stash_.losses);
  if constexpr (!kHost) {
    B::download(host_losses_.data(), losses, sizeof(float) * N);
    losses = host_losses_.data();
  }
  double sums[2] = {0.0, static_cast<double>(valid)};  // loss sum, valid targets
  for (int i = 0; i < N; ++i) sums[0] += losses[i];    // fixed order: bit-reproducible
  comm::all_reduce_host_f64(dpcp_, sums, 2);
  global_valid_ = sums[1];
  return global_valid_ > 0 ? static_cast<float>(sums[0] / global_valid_) : 0.0f;
}

template <class B>
void TransformerT<B>::backward(float loss_scale, bool finalize) {
  GROVE_CHECK(grads_flat_.defined()) << "backward() of a model built for decoding (training=false)";
  const int N = N_, V = config_.vocab_size, R = static_cast<int>(rows_);
  const int L = config_.n_layers;
  // Dense gradients are summed over every rank holding distinct tokens of the same shard: the
  // data-parallel and context-parallel ranks together (dp_cp).
  const bool reduce_dp = finalize && dpcp_ != nullptr;
  loss_scale_ = loss_scale;
  host_dloss_.assign(N, global_valid_ > 0 ? loss_scale / float(global_valid_) : 0.0f);
  B::upload(g_.dlosses.raw(), host_dloss_.data(), sizeof(float) * N);

  // Head: dlogits overwrite the logits in place.
  T* dlogits = p(stash_.logits);
  if (t_ > 1)
    parallel::vocab_parallel_cross_entropy_backward<B>(
        dlogits, p(stash_.logits), f(stash_.ce_lse), targets_.data<int32_t>(), f(g_.dlosses), N,
        embed_->local_vocab(), embed_->vocab_start());
  else
    B::cross_entropy_backward(dlogits, p(stash_.logits), f(stash_.ce_lse), targets_.data<int32_t>(),
                              f(g_.dlosses), N, V);
  const T* lnf = gather_rows(stash_.lnf);
  B::zero(g_.dfull.raw(), sizeof(T) * size_t(N) * h_);
  B::linear_backward(p(g_.dfull), f(grads_.lm_head), nullptr, dlogits, lnf, p(compute_.lm_head), N,
                     h_, Vl_);
  reduce_input_grad();
  B::zero(g_.dresid.raw(), sizeof(T) * size_t(R) * h_);
  B::rmsnorm_backward(p(g_.dresid), f(grads_.final_norm), p(g_.dln), p(stash_.resid[L]),
                      f(params_.final_norm), f(stash_.rstdf), R, h_);
  if (finalize && sp_)  // replicated weight, different tokens per rank: SUM over TP
    parallel::all_reduce<B>(tp_, f(grads_.final_norm), h_, DType::kF32, comm::ReduceOp::kSum);
  // The flat gradient's ranges: [wte | layer 0 | ... | layer L-1 | final_norm, lm_head]; a MoE
  // layer's range is [dense weights and router | experts].
  auto layer_begin = [&](int l) {
    return l < L ? offset("layers." + std::to_string(l) + ".attn_norm") : offset("final_norm");
  };
  if (reduce_dp) reduce_range(dpcp_, layer_begin(L), layout_.size);

  for (int l = L - 1; l >= 0; --l) {
    if (mode_ == Recompute::kFull) {
      // Re-run the block from its saved input; the forward is deterministic (no dropout), so
      // the recomputed intermediates are bit-identical to the first pass. resid[l+1] is
      // rewritten with the values it already holds. The re-run must not count the block's MoE
      // aux + z loss a second time.
      const float moe_loss = moe_loss_;
      block_forward(l, stash_.transient);
      moe_loss_ = moe_loss;
      block_backward(l, stash_.transient);
    } else {
      block_backward(l, stash_.blocks[l]);
    }
    LayerWeights& gw = grads_.layers[l];
    if (finalize && sp_) {  // replicated weights that saw different tokens: SUM over TP
      for (Tensor* t : {&gw.attn_norm, &gw.mlp_norm, &gw.router, &gw.wq_a, &gw.q_norm, &gw.wkv_a,
                        &gw.wk_rope, &gw.kv_norm})
        if (t->defined())
          parallel::all_reduce<B>(tp_, f(*t), t->numel(), DType::kF32, comm::ReduceOp::kSum);
    }
    const int64_t begin = layer_begin(l), end = layer_begin(l + 1);
    const int64_t experts =
        moe_[l] ? offset("layers." + std::to_string(l) + ".experts.w_gate") : end;
    if (reduce_dp) reduce_range(dpcp_, begin, experts);
    // Experts: SUM over the ranks holding the same experts (edp), never over ep. Without a grid
    // (one device per data-parallel rank, every expert local) that is the data-parallel group.
    comm::Communicator* expert_group = par_.grid ? edp_ : dpcp_;
    if (finalize && expert_group && experts < end) reduce_range(expert_group, experts, end);
  }
  // Embedding: the residual gradient, gathered back to all N rows under SP (ḡ backward).
  const T* demb = output_grad();
  if (t_ > 1)
    embed_->backward(f(grads_.wte), demb, tokens_.data<int32_t>(), N);
  else
    B::embedding_backward(f(grads_.wte), demb, tokens_.data<int32_t>(), N, h_);
  if (reduce_dp) reduce_range(dpcp_, 0, layer_begin(0));
  if (finalize) finish_reductions();
}

// ---- data-parallel gradient reduction ---------------------------------------------------------

template <class B>
void TransformerT<B>::reduce_range(comm::Communicator* group, int64_t begin, int64_t end) {
  if (end <= begin) return;
  if (group->device() != B::kDevice) {
    staged_.push_back({group, begin, end});
    return;
  }
  pending_.push_back(group->all_reduce_async(f(grads_flat_) + begin, end - begin, DType::kF32,
                                             comm::ReduceOp::kSum));
  // MPI progresses non-blocking collectives only inside MPI calls: poke the earlier ranges.
  for (size_t i = 0; i + 1 < pending_.size(); ++i)
    if (!pending_[i].done()) pending_[i].test();
}

template <class B>
void TransformerT<B>::finish_reductions() {
  for (comm::Work& w : pending_) w.wait();
  pending_.clear();
  for (const Range& r : staged_) {  // a host-memory group for device gradients (MPI over GPUs)
    const int64_t n = r.end - r.begin;
    std::vector<float> host(n);
    B::download(host.data(), f(grads_flat_) + r.begin, sizeof(float) * n);
    r.group->all_reduce(host.data(), n, DType::kF32, comm::ReduceOp::kSum);
    B::upload(f(grads_flat_) + r.begin, host.data(), sizeof(float) * n);
  }
  staged_.clear();
}

// ---- reports -----------------------------------------------------------------------------------

template <class B>
ActivationReport TransformerT<B>::activation_report() const {
  ActivationReport r;
  for (int l = 0; l < config_.n_layers; ++l) {
    size_t bytes = stash_.resid[l].bytes();
    if (mode_ != Recompute::kFull) bytes += stash_.blocks[l].bytes();
    r.per_layer.push_back(bytes);
  }
  r.transient = mode_ == Recompute::kFull ? stash_.transient.bytes() : 0;
  r.head = stash_.resid[config_.n_layers].bytes() + stash_.rstdf.bytes() + stash_.lnf.bytes() +
           stash_.logits.bytes() + stash_.ce_lse.bytes() + stash_.losses.bytes();
  for (const auto& m : moe_)
    if (m) r.moe += m->stash_bytes();
  return r;
}

template <class B>
int64_t TransformerT<B>::device_bytes() const {
  return allocated_;
}

template <class B>
std::vector<parallel::MoeMetrics> TransformerT<B>::moe_metrics() const {
  std::vector<parallel::MoeMetrics> out;
  for (const auto& m : moe_)
    if (m) out.push_back(m->metrics());
  return out;
}

}  // namespace grove

#include "model/mla_impl.h"
