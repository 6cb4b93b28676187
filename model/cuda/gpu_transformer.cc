#include "model/cuda/gpu_transformer.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"

namespace grove {

namespace k = cuda;
using cuda::bf16;

const char* gpu_precision_name(GpuPrecision p) {
  return p == GpuPrecision::kFp32 ? "fp32" : "bf16";
}

StatusOr<GpuPrecision> parse_gpu_precision(const std::string& s) {
  if (s == "fp32") return GpuPrecision::kFp32;
  if (s == "bf16") return GpuPrecision::kBf16;
  return Status::Error("precision '" + s + "' is not one of fp32, bf16");
}

std::string current_device_name() {
  int dev = 0;
  GROVE_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  GROVE_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return prop.name;
}

double dense_peak_tflops(const std::string& name, GpuPrecision p) {
  // NVIDIA data sheets, SXM parts, dense (no 2:4 sparsity); fp32 without TF32.
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has("H100") || has("H200") || has("GH200")) return p == GpuPrecision::kBf16 ? 989.4 : 66.9;
  if (has("A100")) return p == GpuPrecision::kBf16 ? 312.0 : 19.5;
  return 0;
}

std::vector<FlatEntry> FlatLayout(const ModelConfig& c) {
  const int64_t h = c.d_model, V = c.vocab_size, f = c.ffn(), fe = c.expert_ffn();
  const int64_t qd = int64_t(c.n_heads) * c.head_dim(), kvd = int64_t(c.kv_heads()) * c.head_dim();
  const int64_t E = c.moe.num_experts;
  std::vector<FlatEntry> out;
  int64_t offset = 0;
  auto add = [&](std::string name, Shape shape) {
    FlatEntry e{std::move(name), std::move(shape), offset, 0, false};
    e.numel = shape_numel(e.shape);
    e.decay = e.shape.size() >= 2;  // as worker/optimizer.cc: matrices only
    // Keep every tensor 16-byte aligned in both the fp32 and the bf16 flat buffers (vector loads).
    offset += (e.numel + 7) / 8 * 8;
    out.push_back(std::move(e));
  };
  add("wte", {V, h});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    add(p + "attn_norm", {h});
    add(p + "wq", {qd, h});
    add(p + "wk", {kvd, h});
    add(p + "wv", {kvd, h});
    add(p + "wo", {h, qd});
    add(p + "mlp_norm", {h});
    if (c.is_moe_layer(l)) {
      add(p + "router", {E, h});
      add(p + "experts.w_gate", {E, fe, h});
      add(p + "experts.w_up", {E, fe, h});
      add(p + "experts.w_down", {E, h, fe});
    } else {
      add(p + "w_gate", {f, h});
      add(p + "w_up", {f, h});
      add(p + "w_down", {h, f});
    }
  }
  add("final_norm", {h});
  add("lm_head", {V, h});
  return out;
}

// ---- base ---------------------------------------------------------------------------------------

GpuTransformer::GpuTransformer(const ModelConfig& c, int b, int s, Recompute mode, GpuPrecision p,
                               comm::Communicator* dp)
    : config_(c), b_(b), s_(s), mode_(mode), precision_(p), dp_(dp), layout_(FlatLayout(c)) {
  const FlatEntry& last = layout_.back();
  num_params_ = last.offset + (last.numel + 7) / 8 * 8;
  for (const FlatEntry& e : layout_) offsets_[e.name] = e.offset;
  params_ = Tensor::zeros({num_params_}, DType::kF32, Device::kCUDA);
  grads_ = Tensor::zeros({num_params_}, DType::kF32, Device::kCUDA);
}

int64_t GpuTransformer::offset_of(const std::string& name) const {
  auto it = offsets_.find(name);
  GROVE_CHECK(it != offsets_.end()) << "no parameter named '" << name << "'";
  return it->second;
}
float* GpuTransformer::param(const std::string& name) {
  return params() + offset_of(name);
}
float* GpuTransformer::grad(const std::string& name) {
  return grads() + offset_of(name);
}

void GpuTransformer::zero_grads() {
  grads_.zero();
}

Status GpuTransformer::load_params(const Weights& w) {
  std::vector<NamedTensor> named = w.named();
  if (named.size() != layout_.size())
    return Status::Error("weights have " + std::to_string(named.size()) +
                         " tensors, the GPU model expects " + std::to_string(layout_.size()));
  for (size_t i = 0; i < named.size(); ++i) {
    const FlatEntry& e = layout_[i];
    if (named[i].name != e.name || named[i].tensor.shape() != e.shape)
      return Status::Error("weight '" + named[i].name + "' " + shape_str(named[i].tensor.shape()) +
                           " does not match '" + e.name + "' " + shape_str(e.shape) +
                           " of the GPU model");
    GROVE_CUDA_CHECK(cudaMemcpy(params() + e.offset, named[i].tensor.data<float>(),
                                sizeof(float) * e.numel, cudaMemcpyHostToDevice));
  }
  sync_compute_weights();
  return Status::Ok();
}

namespace {
void copy_out(const std::vector<FlatEntry>& layout, const float* flat, Weights* w) {
  std::vector<NamedTensor> named = w->named();
  GROVE_CHECK(named.size() == layout.size()) << "weights do not match the GPU model's layout";
  for (size_t i = 0; i < named.size(); ++i) {
    GROVE_CHECK(named[i].tensor.shape() == layout[i].shape) << "shape of " << named[i].name;
    GROVE_CUDA_CHECK(cudaMemcpy(named[i].tensor.data<float>(), flat + layout[i].offset,
                                sizeof(float) * layout[i].numel, cudaMemcpyDeviceToHost));
  }
}
}  // namespace

void GpuTransformer::store_params(Weights* w) const {
  copy_out(layout_, params_.data<float>(), w);
}
void GpuTransformer::store_grads(Weights* g) const {
  copy_out(layout_, grads_.data<float>(), g);
}

int64_t GpuTransformer::device_bytes() const {
  return int64_t(params_.bytes() + grads_.bytes()) + other_bytes_;
}

double GpuTransformer::flops_per_step() const {
  return config_.training_flops(b_, s_);
}

// ---- the model, for one compute type ------------------------------------------------------------

namespace {

template <typename T>
class GpuModel final : public GpuTransformer {
 public:
  GpuModel(const ModelConfig& c, int b, int s, Recompute mode, GpuPrecision p,
           comm::Communicator* dp);

  void sync_compute_weights() override;
  float forward(const int32_t* tokens, const int32_t* targets) override;
  void backward(float loss_scale, bool finalize) override;
  int64_t activation_bytes() const override { return activation_bytes_; }

 private:
  // One block's named activations (what the backward reads).
  struct Block {
    Tensor ln1, rstd1, q, k, v, att, lse, resid2, ln2, rstd2, gate, up, act;
    // Mixture of experts (A = N·k assignment rows, dropless): router outputs, the permuted
    // layout and the experts' activations.
    Tensor logits, probs, lse_r, expert, weight, counts, prob_sum, lse_sq, offsets, row_of;
    Tensor xp, egate, eup, eact, yp;
    std::vector<int32_t> offsets_host;  // [E+1], for the per-expert GEMMs
  };
  void moe_forward(int l, Block& a, T* out);
  void moe_backward(int l, Block& a);
  // Router statistics of this rank's tokens -> those of the data-parallel batch (host copies in
  // moe_counts_, the device copy in counts_global_), returning aux + z of layer l.
  float reduce_router_stats(int l, Block& a);
  Tensor dev(Shape shape, DType dtype, bool activation);
  Tensor act(int64_t rows, int64_t cols) { return dev({rows, cols}, dtype_of_t(), true); }
  static DType dtype_of_t() { return std::is_same_v<T, float> ? DType::kF32 : DType::kBF16; }
  static T* p(Tensor& t) { return static_cast<T*>(t.raw()); }
  static float* f(Tensor& t) { return t.data<float>(); }
  static int32_t* i32(Tensor& t) { return t.data<int32_t>(); }
  static double* f64(Tensor& t) { return t.data<double>(); }
  // The compute copy of a matrix: the fp32 master (T = float) or its bf16 copy.
  const T* w(const std::string& name) {
    if constexpr (std::is_same_v<T, float>) {
      return param(name);
    } else {
      return static_cast<const bf16*>(wc_.raw()) + offset_of(name);
    }
  }
  void block_forward(int l, Block& a);
  void block_backward(int l, Block& a);
  void mlp_backward(int l, Block& a);
  void attention_backward(int l, Block& a);
  void all_reduce_dp(void* buf, int64_t count, DType dtype);

 public:
  float moe_loss() const override { return moe_loss_; }
  std::vector<std::vector<int64_t>> expert_load() const override {
    std::vector<std::vector<int64_t>> out;
    for (int l = 0; l < config_.n_layers; ++l)
      if (config_.is_moe_layer(l)) out.push_back(moe_counts_[l]);
    return out;
  }

 private:
  int N_, h_, qd_, kvd_, f_, V_, heads_, kv_heads_, d_;
  int64_t activation_bytes_ = 0;
  Tensor wc_;  // bf16 compute copy of the flat parameters (T = bf16 only)
  std::vector<Tensor> resid_;
  std::vector<Block> blocks_;  // L blocks, or one transient block under full recompute
  Tensor lnf_, rstdf_, logits_, ce_lse_, losses_;
  Tensor tokens_, targets_;
  Tensor rope_cos_, rope_sin_;
  struct {
    Tensor dresid, dln, datt, dq, dk, dv, dact, dgate, dup, dlosses;
  } g_;
  std::vector<float> host_losses_, host_dlosses_;
  double global_valid_ = 0;
  // Mixture of experts.
  int E_ = 0, topk_ = 0, fe_ = 0;
  int64_t A_ = 0;  // assignment rows per MoE layer: N·k
  float moe_loss_ = 0, loss_scale_ = 1;
  std::vector<std::vector<int64_t>> moe_counts_;  // [layer][E] routed assignments, global
  Tensor counts_global_, moe_stats_;              // [E] int32; [2E+2] f64 for the DP reduction
  int64_t tokens_all_ = 0;                        // tokens of the data-parallel batch
  struct {
    Tensor dyp, deact, degate, deup, dxp, dweight, dlogits, dlogits_t;
  } gm_;
};

template <typename T>
Tensor GpuModel<T>::dev(Shape shape, DType dtype, bool activation) {
  Tensor t = Tensor::zeros(std::move(shape), dtype, Device::kCUDA);
  other_bytes_ += t.bytes();
  if (activation) activation_bytes_ += t.bytes();
  return t;
}

template <typename T>
GpuModel<T>::GpuModel(const ModelConfig& c, int b, int s, Recompute mode, GpuPrecision p,
                      comm::Communicator* dp)
    : GpuTransformer(c, b, s, mode, p, dp) {
  N_ = b * s;
  h_ = c.d_model;
  d_ = c.head_dim();
  heads_ = c.n_heads;
  kv_heads_ = c.kv_heads();
  qd_ = heads_ * d_;
  kvd_ = kv_heads_ * d_;
  f_ = c.ffn();
  V_ = c.vocab_size;
  const int L = c.n_layers;
  if constexpr (!std::is_same_v<T, float>) wc_ = dev({num_params_}, DType::kBF16, false);
  for (int l = 0; l <= L; ++l) resid_.push_back(act(N_, h_));
  blocks_.resize(mode == Recompute::kFull ? 1 : L);
  E_ = c.moe.num_experts;
  topk_ = c.moe.top_k;
  fe_ = c.expert_ffn();
  A_ = E_ > 0 ? int64_t(N_) * topk_ : 0;
  moe_counts_.assign(L, std::vector<int64_t>(E_, 0));
  for (size_t i = 0; i < blocks_.size(); ++i) {
    // Under full recompute the one transient block serves every layer, MoE or not.
    const bool moe = E_ > 0 && (mode == Recompute::kFull || c.is_moe_layer(int(i)));
    if (!moe) continue;
    Block& a = blocks_[i];
    a.logits = dev({N_, E_}, DType::kF32, true);
    a.probs = dev({N_, E_}, DType::kF32, true);
    a.lse_r = dev({N_}, DType::kF32, true);
    a.expert = dev({N_, topk_}, DType::kI32, true);
    a.weight = dev({N_, topk_}, DType::kF32, true);
    a.counts = dev({E_}, DType::kI32, true);
    a.prob_sum = dev({E_}, DType::kF64, true);
    a.lse_sq = dev({1}, DType::kF64, true);
    a.offsets = dev({E_ + 1}, DType::kI32, true);
    a.row_of = dev({A_}, DType::kI32, true);
    a.xp = act(A_, h_);
    a.egate = act(A_, fe_);
    a.eup = act(A_, fe_);
    a.eact = act(A_, fe_);
    a.yp = act(A_, h_);
    a.offsets_host.assign(E_ + 1, 0);
  }
  if (E_ > 0) {
    const DType dt = dtype_of_t();
    counts_global_ = dev({E_}, DType::kI32, false);
    moe_stats_ = dev({2 * E_ + 2}, DType::kF64, false);
    gm_.dyp = dev({A_, h_}, dt, false);
    gm_.deact = dev({A_, fe_}, dt, false);
    gm_.degate = dev({A_, fe_}, dt, false);
    gm_.deup = dev({A_, fe_}, dt, false);
    gm_.dxp = dev({A_, h_}, dt, false);
    gm_.dweight = dev({N_, topk_}, DType::kF32, false);
    gm_.dlogits = dev({N_, E_}, DType::kF32, false);
    if constexpr (!std::is_same_v<T, float>) gm_.dlogits_t = dev({N_, E_}, dt, false);
  }
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Block& a = blocks_[i];
    const bool dense = E_ == 0 || mode == Recompute::kFull || !c.is_moe_layer(int(i));
    a.ln1 = act(N_, h_);
    a.rstd1 = dev({N_}, DType::kF32, true);
    a.q = act(N_, qd_);
    a.k = act(N_, kvd_);
    a.v = act(N_, kvd_);
    a.att = act(N_, qd_);
    a.lse = dev({int64_t(b) * heads_ * s}, DType::kF32, true);
    a.resid2 = act(N_, h_);
    a.ln2 = act(N_, h_);
    a.rstd2 = dev({N_}, DType::kF32, true);
    if (!dense) continue;  // an MoE block keeps its experts' activations instead
    a.gate = act(N_, f_);
    a.up = act(N_, f_);
    a.act = act(N_, f_);
  }
  lnf_ = act(N_, h_);
  rstdf_ = dev({N_}, DType::kF32, true);
  logits_ = act(N_, V_);
  ce_lse_ = dev({N_}, DType::kF32, true);
  losses_ = dev({N_}, DType::kF32, true);
  tokens_ = dev({N_}, DType::kI32, false);
  targets_ = dev({N_}, DType::kI32, false);
  rope_cos_ = dev({c.max_seq_len, d_ / 2}, DType::kF32, false);
  rope_sin_ = dev({c.max_seq_len, d_ / 2}, DType::kF32, false);
  k::rope_table(f(rope_cos_), f(rope_sin_), c.max_seq_len, d_, c.rope_theta);
  const DType dt = dtype_of_t();
  g_.dresid = dev({N_, h_}, dt, false);
  g_.dln = dev({N_, h_}, dt, false);
  g_.datt = dev({N_, qd_}, dt, false);
  g_.dq = dev({N_, qd_}, dt, false);
  g_.dk = dev({N_, kvd_}, dt, false);
  g_.dv = dev({N_, kvd_}, dt, false);
  g_.dact = dev({N_, f_}, dt, false);
  g_.dgate = dev({N_, f_}, dt, false);
  g_.dup = dev({N_, f_}, dt, false);
  g_.dlosses = dev({N_}, DType::kF32, false);
  host_losses_.resize(N_);
  host_dlosses_.resize(N_);
}

template <typename T>
void GpuModel<T>::sync_compute_weights() {
  if constexpr (!std::is_same_v<T, float>) {
    k::convert(static_cast<bf16*>(wc_.raw()), params(), num_params_);
  }
}

template <typename T>
void GpuModel<T>::all_reduce_dp(void* buf, int64_t count, DType dtype) {
  if (dp_ == nullptr || dp_->size() == 1) return;
  if (dp_->device() == Device::kCUDA) {
    // NCCL orders itself after the work queued on the default stream and synchronises.
    dp_->all_reduce(buf, count, dtype, comm::ReduceOp::kSum);
    return;
  }
  // A host-memory backend (MPI): stage through the host.
  Tensor host = Tensor::empty({count}, dtype);
  GROVE_CUDA_CHECK(cudaMemcpy(host.raw(), buf, host.bytes(), cudaMemcpyDeviceToHost));
  dp_->all_reduce(host.raw(), count, dtype, comm::ReduceOp::kSum);
  GROVE_CUDA_CHECK(cudaMemcpy(buf, host.raw(), host.bytes(), cudaMemcpyHostToDevice));
}

// ---- one block ---------------------------------------------------------------------------------

template <typename T>
void GpuModel<T>::block_forward(int l, Block& a) {
  const std::string pre = "layers." + std::to_string(l) + ".";
  const T* x = p(resid_[l]);
  T* out = p(resid_[l + 1]);
  const float eps = config_.norm_eps;
  // Attention: x2 = x + Wo · attention(rope(Wq·rms1(x)), rope(Wk·rms1(x)), Wv·rms1(x)).
  k::rmsnorm_forward<T>(p(a.ln1), f(a.rstd1), x, param(pre + "attn_norm"), N_, h_, eps);
  k::linear_forward<T>(p(a.q), p(a.ln1), w(pre + "wq"), nullptr, N_, h_, qd_);
  k::linear_forward<T>(p(a.k), p(a.ln1), w(pre + "wk"), nullptr, N_, h_, kvd_);
  k::linear_forward<T>(p(a.v), p(a.ln1), w(pre + "wv"), nullptr, N_, h_, kvd_);
  k::rope_forward<T>(p(a.q), f(rope_cos_), f(rope_sin_), s_, b_, heads_, d_, 0);
  k::rope_forward<T>(p(a.k), f(rope_cos_), f(rope_sin_), s_, b_, kv_heads_, d_, 0);
  const k::AttentionShape shape{s_, s_, b_, heads_, kv_heads_, d_, /*causal=*/true};
  k::attention_forward<T>(p(a.att), f(a.lse), nullptr, p(a.q), p(a.k), p(a.v), shape);
  k::linear_forward<T>(p(a.resid2), p(a.att), w(pre + "wo"), nullptr, N_, qd_, h_);
  k::add_inplace<T>(p(a.resid2), x, int64_t(N_) * h_);
  // MLP: out = x2 + Wdown · (silu(Wgate·rms2(x2)) * Wup·rms2(x2)).
  k::rmsnorm_forward<T>(p(a.ln2), f(a.rstd2), p(a.resid2), param(pre + "mlp_norm"), N_, h_, eps);
  if (config_.is_moe_layer(l)) {
    moe_forward(l, a, out);
    k::add_inplace<T>(out, p(a.resid2), int64_t(N_) * h_);
    return;
  }
  k::linear_forward<T>(p(a.gate), p(a.ln2), w(pre + "w_gate"), nullptr, N_, h_, f_);
  k::linear_forward<T>(p(a.up), p(a.ln2), w(pre + "w_up"), nullptr, N_, h_, f_);
  k::swiglu_forward<T>(p(a.act), p(a.gate), p(a.up), int64_t(N_) * f_);
  k::linear_forward<T>(out, p(a.act), w(pre + "w_down"), nullptr, N_, f_, h_);
  k::add_inplace<T>(out, p(a.resid2), int64_t(N_) * h_);
}

// On entry g_.dresid holds d(loss)/d(block output); on exit d(loss)/d(block input).
template <typename T>
void GpuModel<T>::block_backward(int l, Block& a) {
  const std::string pre = "layers." + std::to_string(l) + ".";
  T* dresid = p(g_.dresid);
  // MLP; the residual passes dresid straight through to x2.
  if (config_.is_moe_layer(l)) {
    moe_backward(l, a);  // d(loss)/d(ln2) into g_.dln
  } else {
    mlp_backward(l, a);
  }
  k::rmsnorm_backward<T>(dresid, grad(pre + "mlp_norm"), p(g_.dln), p(a.resid2),
                         param(pre + "mlp_norm"), f(a.rstd2), N_, h_);
  attention_backward(l, a);
}

// Dense MLP backward: g_.dln = d(loss)/d(ln2) from dresid = d(loss)/d(block output).
template <typename T>
void GpuModel<T>::mlp_backward(int l, Block& a) {
  const std::string pre = "layers." + std::to_string(l) + ".";
  T* dresid = p(g_.dresid);
  const size_t es = sizeof(T);
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dact.raw(), 0, es * N_ * f_));
  k::linear_backward<T>(p(g_.dact), grad(pre + "w_down"), nullptr, dresid, p(a.act),
                        w(pre + "w_down"), N_, f_, h_);
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dgate.raw(), 0, es * N_ * f_));
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dup.raw(), 0, es * N_ * f_));
  k::swiglu_backward<T>(p(g_.dgate), p(g_.dup), p(g_.dact), p(a.gate), p(a.up), int64_t(N_) * f_);
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dln.raw(), 0, es * N_ * h_));
  k::linear_backward<T>(p(g_.dln), grad(pre + "w_gate"), nullptr, p(g_.dgate), p(a.ln2),
                        w(pre + "w_gate"), N_, h_, f_);
  k::linear_backward<T>(p(g_.dln), grad(pre + "w_up"), nullptr, p(g_.dup), p(a.ln2),
                        w(pre + "w_up"), N_, h_, f_);
}

// Attention backward: dresid = d(loss)/d(x2) on entry, d(loss)/d(block input) on exit.
template <typename T>
void GpuModel<T>::attention_backward(int l, Block& a) {
  const std::string pre = "layers." + std::to_string(l) + ".";
  const T* x = p(resid_[l]);
  T* dresid = p(g_.dresid);
  const size_t es = sizeof(T);
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.datt.raw(), 0, es * N_ * qd_));
  k::linear_backward<T>(p(g_.datt), grad(pre + "wo"), nullptr, dresid, p(a.att), w(pre + "wo"), N_,
                        qd_, h_);
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dq.raw(), 0, es * N_ * qd_));
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dk.raw(), 0, es * N_ * kvd_));
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dv.raw(), 0, es * N_ * kvd_));
  const k::AttentionShape shape{s_, s_, b_, heads_, kv_heads_, d_, /*causal=*/true};
  k::attention_backward<T>(p(g_.dq), p(g_.dk), p(g_.dv), p(g_.datt), p(a.q), p(a.k), p(a.v),
                           p(a.att), f(a.lse), nullptr, shape);
  k::rope_backward<T>(p(g_.dq), f(rope_cos_), f(rope_sin_), s_, b_, heads_, d_, 0);
  k::rope_backward<T>(p(g_.dk), f(rope_cos_), f(rope_sin_), s_, b_, kv_heads_, d_, 0);
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dln.raw(), 0, es * N_ * h_));
  k::linear_backward<T>(p(g_.dln), grad(pre + "wq"), nullptr, p(g_.dq), p(a.ln1), w(pre + "wq"), N_,
                        h_, qd_);
  k::linear_backward<T>(p(g_.dln), grad(pre + "wk"), nullptr, p(g_.dk), p(a.ln1), w(pre + "wk"), N_,
                        h_, kvd_);
  k::linear_backward<T>(p(g_.dln), grad(pre + "wv"), nullptr, p(g_.dv), p(a.ln1), w(pre + "wv"), N_,
                        h_, kvd_);
  k::rmsnorm_backward<T>(dresid, grad(pre + "attn_norm"), p(g_.dln), x, param(pre + "attn_norm"),
                         f(a.rstd1), N_, h_);
}

// ---- mixture of experts (dropless, experts local: expert parallelism runs on the CPU path) ----

template <typename T>
float GpuModel<T>::reduce_router_stats(int l, Block& a) {
  std::vector<int32_t> counts(E_);
  std::vector<double> stats(2 * E_ + 2);  // prob_sum[E], counts[E], lse², tokens
  GROVE_CUDA_CHECK(
      cudaMemcpy(counts.data(), a.counts.raw(), sizeof(int32_t) * E_, cudaMemcpyDeviceToHost));
  GROVE_CUDA_CHECK(
      cudaMemcpy(stats.data(), a.prob_sum.raw(), sizeof(double) * E_, cudaMemcpyDeviceToHost));
  GROVE_CUDA_CHECK(
      cudaMemcpy(&stats[2 * E_], a.lse_sq.raw(), sizeof(double), cudaMemcpyDeviceToHost));
  for (int e = 0; e < E_; ++e) stats[E_ + e] = counts[e];
  stats[2 * E_ + 1] = N_;
  if (dp_ != nullptr && dp_->size() > 1) {  // the stats group is the data-parallel batch
    GROVE_CUDA_CHECK(cudaMemcpy(moe_stats_.raw(), stats.data(), sizeof(double) * stats.size(),
                                cudaMemcpyHostToDevice));
    all_reduce_dp(moe_stats_.raw(), int64_t(stats.size()), DType::kF64);
    GROVE_CUDA_CHECK(cudaMemcpy(stats.data(), moe_stats_.raw(), sizeof(double) * stats.size(),
                                cudaMemcpyDeviceToHost));
  }
  for (int e = 0; e < E_; ++e) {
    counts[e] = static_cast<int32_t>(stats[E_ + e]);
    moe_counts_[l][e] = counts[e];
  }
  tokens_all_ = static_cast<int64_t>(stats[2 * E_ + 1]);
  GROVE_CUDA_CHECK(cudaMemcpy(counts_global_.raw(), counts.data(), sizeof(int32_t) * E_,
                              cudaMemcpyHostToDevice));
  const k::MoeRouterLosses losses =
      k::moe_router_losses(counts.data(), stats.data(), stats[2 * E_], tokens_all_, E_, topk_,
                           config_.moe.aux_loss_coef, config_.moe.z_loss_coef);
  return losses.aux + losses.z;
}

// out[N,h] = Σ_j w_j · expert_{e_j}(ln2), experts SwiGLU; route -> permute -> grouped GEMMs ->
// unpermute, as parallel/moe_layer.cc on one rank.
template <typename T>
void GpuModel<T>::moe_forward(int l, Block& a, T* out) {
  const std::string pre = "layers." + std::to_string(l) + ".";
  const T* x = p(a.ln2);
  // Router logits in fp32 (the CPU router's precision), from bf16 or fp32 inputs.
  if constexpr (std::is_same_v<T, float>) {
    k::linear_forward<float>(f(a.logits), x, w(pre + "router"), nullptr, N_, h_, E_);
  } else {
    k::gemm(false, true, N_, E_, h_, 1.0f, x, h_, w(pre + "router"), h_, 0.0f, f(a.logits), E_);
  }
  k::moe_router_forward(f(a.probs), f(a.lse_r), i32(a.expert), f(a.weight), i32(a.counts),
                        f64(a.prob_sum), f64(a.lse_sq), f(a.logits), N_, E_, topk_);
  moe_loss_ += reduce_router_stats(l, a);
  k::moe_permute<T>(p(a.xp), i32(a.offsets), i32(a.row_of), x, i32(a.expert), i32(a.counts), N_,
                    topk_, E_, h_);
  GROVE_CUDA_CHECK(cudaMemcpy(a.offsets_host.data(), a.offsets.raw(), sizeof(int32_t) * (E_ + 1),
                              cudaMemcpyDeviceToHost));
  const int32_t* off = a.offsets_host.data();
  k::grouped_linear_forward<T>(p(a.egate), p(a.xp), w(pre + "experts.w_gate"), off, E_, h_, fe_);
  k::grouped_linear_forward<T>(p(a.eup), p(a.xp), w(pre + "experts.w_up"), off, E_, h_, fe_);
  k::swiglu_forward<T>(p(a.eact), p(a.egate), p(a.eup), A_ * fe_);
  k::grouped_linear_forward<T>(p(a.yp), p(a.eact), w(pre + "experts.w_down"), off, E_, fe_, h_);
  k::moe_unpermute<T>(out, p(a.yp), f(a.weight), i32(a.row_of), N_, topk_, h_);
}

// g_.dln = d(loss)/d(ln2) from dresid = d(loss)/d(MoE output), plus the aux + z gradient
// (times loss_scale_) through the router.
template <typename T>
void GpuModel<T>::moe_backward(int l, Block& a) {
  const std::string pre = "layers." + std::to_string(l) + ".";
  const size_t es = sizeof(T);
  const int32_t* off = a.offsets_host.data();
  const int32_t* row_of = i32(a.row_of);
  k::moe_unpermute_backward<T>(p(gm_.dyp), f(gm_.dweight), p(g_.dresid), p(a.yp), f(a.weight),
                               row_of, N_, topk_, h_);
  GROVE_CUDA_CHECK(cudaMemsetAsync(gm_.deact.raw(), 0, es * A_ * fe_));
  k::grouped_linear_backward<T>(p(gm_.deact), grad(pre + "experts.w_down"), p(gm_.dyp), p(a.eact),
                                w(pre + "experts.w_down"), off, E_, fe_, h_);
  GROVE_CUDA_CHECK(cudaMemsetAsync(gm_.degate.raw(), 0, es * A_ * fe_));
  GROVE_CUDA_CHECK(cudaMemsetAsync(gm_.deup.raw(), 0, es * A_ * fe_));
  k::swiglu_backward<T>(p(gm_.degate), p(gm_.deup), p(gm_.deact), p(a.egate), p(a.eup), A_ * fe_);
  GROVE_CUDA_CHECK(cudaMemsetAsync(gm_.dxp.raw(), 0, es * A_ * h_));
  k::grouped_linear_backward<T>(p(gm_.dxp), grad(pre + "experts.w_gate"), p(gm_.degate), p(a.xp),
                                w(pre + "experts.w_gate"), off, E_, h_, fe_);
  k::grouped_linear_backward<T>(p(gm_.dxp), grad(pre + "experts.w_up"), p(gm_.deup), p(a.xp),
                                w(pre + "experts.w_up"), off, E_, h_, fe_);
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dln.raw(), 0, es * N_ * h_));
  k::moe_permute_backward<T>(p(g_.dln), p(gm_.dxp), row_of, N_, topk_, h_);
  k::moe_router_backward(f(gm_.dlogits), f(gm_.dweight), f(a.probs), f(a.lse_r), i32(a.expert),
                         f(a.weight), i32(counts_global_), tokens_all_, config_.moe.aux_loss_coef,
                         config_.moe.z_loss_coef, loss_scale_, N_, E_, topk_);
  if constexpr (std::is_same_v<T, float>) {
    k::linear_backward<float>(p(g_.dln), grad(pre + "router"), nullptr, f(gm_.dlogits), p(a.ln2),
                              w(pre + "router"), N_, h_, E_);
  } else {
    // The router's GEMMs take bf16 operands; dW_r still accumulates in fp32.
    k::convert(p(gm_.dlogits_t), f(gm_.dlogits), int64_t(N_) * E_);
    k::linear_backward<T>(p(g_.dln), grad(pre + "router"), nullptr, p(gm_.dlogits_t), p(a.ln2),
                          w(pre + "router"), N_, h_, E_);
  }
}

// ---- whole model -------------------------------------------------------------------------------

template <typename T>
float GpuModel<T>::forward(const int32_t* tokens, const int32_t* targets) {
  int64_t valid = 0;
  for (int i = 0; i < N_; ++i) {
    GROVE_CHECK(tokens[i] >= 0 && tokens[i] < V_) << "token id " << tokens[i] << " at row " << i
                                                  << " is outside the vocabulary [0, " << V_ << ")";
    GROVE_CHECK(targets[i] < V_) << "target id " << targets[i] << " outside the vocabulary";
    valid += targets[i] >= 0;
  }
  GROVE_CUDA_CHECK(cudaMemcpy(tokens_.raw(), tokens, sizeof(int32_t) * N_, cudaMemcpyHostToDevice));
  GROVE_CUDA_CHECK(
      cudaMemcpy(targets_.raw(), targets, sizeof(int32_t) * N_, cudaMemcpyHostToDevice));
  moe_loss_ = 0;
  k::embedding_forward<T>(p(resid_[0]), i32(tokens_), w("wte"), N_, h_);
  for (int l = 0; l < config_.n_layers; ++l)
    block_forward(l, mode_ == Recompute::kFull ? blocks_[0] : blocks_[l]);
  const int L = config_.n_layers;
  k::rmsnorm_forward<T>(p(lnf_), f(rstdf_), p(resid_[L]), param("final_norm"), N_, h_,
                        config_.norm_eps);
  k::linear_forward<T>(p(logits_), p(lnf_), w("lm_head"), nullptr, N_, h_, V_);
  k::cross_entropy_forward<T>(f(losses_), f(ce_lse_), p(logits_), i32(targets_), N_, V_);
  GROVE_CUDA_CHECK(
      cudaMemcpy(host_losses_.data(), losses_.raw(), sizeof(float) * N_, cudaMemcpyDeviceToHost));
  double sums[2] = {0.0, static_cast<double>(valid)};       // loss sum, valid targets
  for (int i = 0; i < N_; ++i) sums[0] += host_losses_[i];  // fixed order: reproducible
  if (dp_ != nullptr && dp_->size() > 1) {
    Tensor d = Tensor::empty({2}, DType::kF64, dp_->device());
    if (dp_->device() == Device::kCUDA) {
      GROVE_CUDA_CHECK(cudaMemcpy(d.raw(), sums, sizeof(sums), cudaMemcpyHostToDevice));
      dp_->all_reduce(d.raw(), 2, DType::kF64, comm::ReduceOp::kSum);
      GROVE_CUDA_CHECK(cudaMemcpy(sums, d.raw(), sizeof(sums), cudaMemcpyDeviceToHost));
    } else {
      dp_->all_reduce(sums, 2, DType::kF64, comm::ReduceOp::kSum);
    }
  }
  global_valid_ = sums[1];
  return global_valid_ > 0 ? static_cast<float>(sums[0] / global_valid_) : 0.0f;
}

template <typename T>
void GpuModel<T>::backward(float loss_scale, bool finalize) {
  const int L = config_.n_layers;
  loss_scale_ = loss_scale;
  const float per_token = global_valid_ > 0 ? loss_scale / float(global_valid_) : 0.0f;
  for (int i = 0; i < N_; ++i) host_dlosses_[i] = per_token;
  GROVE_CUDA_CHECK(cudaMemcpy(g_.dlosses.raw(), host_dlosses_.data(), sizeof(float) * N_,
                              cudaMemcpyHostToDevice));
  // Head: dlogits overwrite the logits in place.
  T* dlogits = p(logits_);
  k::cross_entropy_backward<T>(dlogits, p(logits_), f(ce_lse_), i32(targets_), f(g_.dlosses), N_,
                               V_);
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dln.raw(), 0, sizeof(T) * N_ * h_));
  k::linear_backward<T>(p(g_.dln), grad("lm_head"), nullptr, dlogits, p(lnf_), w("lm_head"), N_, h_,
                        V_);
  GROVE_CUDA_CHECK(cudaMemsetAsync(g_.dresid.raw(), 0, sizeof(T) * N_ * h_));
  k::rmsnorm_backward<T>(p(g_.dresid), grad("final_norm"), p(g_.dln), p(resid_[L]),
                         param("final_norm"), f(rstdf_), N_, h_);
  // Data parallelism over NCCL: each finished part of the flat gradient (the head, each block,
  // then the embedding: contiguous ranges in layout order) starts its all-reduce on the
  // communicator's stream while the backward goes on with the blocks below it.
  const bool overlap =
      finalize && dp_ != nullptr && dp_->size() > 1 && dp_->device() == Device::kCUDA;
  std::vector<comm::Work> pending;
  auto reduce_range = [&](int64_t begin, int64_t end) {
    if (overlap && end > begin)
      pending.push_back(
          dp_->all_reduce_async(grads() + begin, end - begin, DType::kF32, comm::ReduceOp::kSum));
  };
  auto block_begin = [&](int l) {
    return l < L ? offset_of("layers." + std::to_string(l) + ".attn_norm")
                 : offset_of("final_norm");
  };
  reduce_range(block_begin(L), num_params_);
  for (int l = L - 1; l >= 0; --l) {
    if (mode_ == Recompute::kFull) {
      // Re-run the block from its saved input (deterministic forward: resid[l+1] is rewritten
      // with the values it already holds; its MoE aux + z loss is not counted again).
      const float moe_loss = moe_loss_;
      block_forward(l, blocks_[0]);
      moe_loss_ = moe_loss;
      block_backward(l, blocks_[0]);
    } else {
      block_backward(l, blocks_[l]);
    }
    reduce_range(block_begin(l), block_begin(l + 1));
  }
  k::embedding_backward<T>(grad("wte"), p(g_.dresid), i32(tokens_), N_, h_);
  reduce_range(0, block_begin(0));
  if (overlap) {
    for (comm::Work& w : pending) w.wait();
  } else if (finalize) {
    all_reduce_dp(grads(), num_params_, DType::kF32);  // one rank, or host staging (MPI)
  }
}

}  // namespace

StatusOr<std::unique_ptr<GpuTransformer>> GpuTransformer::Create(const ModelConfig& config,
                                                                 int batch, int seq, Recompute mode,
                                                                 GpuPrecision precision,
                                                                 comm::Communicator* dp) {
  if (Status st = config.Validate(); !st.ok()) return st;
  if (config.moe.num_experts > 0 && config.moe.capacity_factor > 0)
    return Status::Error("model.moe.capacity_factor=" + std::to_string(config.moe.capacity_factor) +
                         ": the GPU experts are dropless; set model.moe.capacity_factor=0 or "
                         "train.device=cpu");
  if (config.moe.num_experts > 0 && config.moe.lsh.enabled)
    return Status::Error(
        "model.moe.lsh.enabled: the LSH-compressed all-to-all runs on the CPU path only so far; "
        "set model.moe.lsh.enabled=false or train.device=cpu");
  if (config.moe.num_experts > 0 && config.moe.top_k > cuda::kMoeMaxTopK)
    return Status::Error("model.moe.top_k=" + std::to_string(config.moe.top_k) +
                         " exceeds the GPU router's limit of " + std::to_string(cuda::kMoeMaxTopK));
  if (config.head_dim() > 256 || config.head_dim() % 2 != 0)
    return Status::Error(
        "the GPU attention kernel needs an even head dim <= 256; "
        "model.d_model / model.n_heads = " +
        std::to_string(config.head_dim()));
  if (batch <= 0) return Status::Error("batch must be positive");
  if (seq <= 0 || seq > config.max_seq_len)
    return Status::Error("seq " + std::to_string(seq) + " must lie in [1, " +
                         "model.max_seq_len=" + std::to_string(config.max_seq_len) + "]");
  if (!cuda_device_available())
    return Status::Error(
        "no CUDA device is available to this process (train.device=cuda); check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES, or set train.device=cpu");
  std::unique_ptr<GpuTransformer> m;
  if (precision == GpuPrecision::kFp32)
    m = std::make_unique<GpuModel<float>>(config, batch, seq, mode, precision, dp);
  else
    m = std::make_unique<GpuModel<bf16>>(config, batch, seq, mode, precision, dp);
  if (Status st = m->load_params(Weights::Init(config)); !st.ok()) return st;
  return m;
}

// ---- AdamW
// ---------------------------------------------------------------------------------------

GpuAdamW::GpuAdamW(const std::vector<FlatEntry>& layout) : layout_(layout) {
  const FlatEntry& last = layout_.back();
  n_ = last.offset + (last.numel + 7) / 8 * 8;
  m_ = Tensor::zeros({n_}, DType::kF32, Device::kCUDA);
  v_ = Tensor::zeros({n_}, DType::kF32, Device::kCUDA);
}

double GpuAdamW::grad_norm(const float* grads, int64_t n) {
  return std::sqrt(k::sum_squares<float>(grads, n));
}

void GpuAdamW::step(float* params, float* grads, float grad_scale, float lr, float beta1,
                    float beta2, float eps, float weight_decay) {
  ++step_;
  if (grad_scale != 1.0f) k::scale_inplace<float>(grads, grad_scale, n_);
  // One launch per run of entries with the same decay (norm weights break the runs).
  size_t i = 0;
  while (i < layout_.size()) {
    size_t j = i;
    while (j + 1 < layout_.size() && layout_[j + 1].decay == layout_[i].decay) ++j;
    const int64_t begin = layout_[i].offset;
    const int64_t end = layout_[j].offset + layout_[j].numel;
    k::adamw_update(params + begin, grads + begin, m_.data<float>() + begin,
                    v_.data<float>() + begin, end - begin, lr, beta1, beta2, eps,
                    layout_[i].decay ? weight_decay : 0.0f, step_);
    i = j + 1;
  }
}

void GpuAdamW::store(Weights* m, Weights* v) const {
  copy_out(layout_, m_.data<float>(), m);
  copy_out(layout_, v_.data<float>(), v);
}

Status GpuAdamW::load(const Weights& m, const Weights& v) {
  for (const auto& [src, dst] : {std::pair{&m, &m_}, std::pair{&v, &v_}}) {
    std::vector<NamedTensor> named = src->named();
    if (named.size() != layout_.size())
      return Status::Error("optimizer state does not match the GPU model's layout");
    for (size_t i = 0; i < named.size(); ++i) {
      if (named[i].tensor.shape() != layout_[i].shape)
        return Status::Error("optimizer state '" + named[i].name + "' has shape " +
                             shape_str(named[i].tensor.shape()) + ", expected " +
                             shape_str(layout_[i].shape));
      GROVE_CUDA_CHECK(cudaMemcpy(dst->data<float>() + layout_[i].offset,
                                  named[i].tensor.data<float>(), sizeof(float) * layout_[i].numel,
                                  cudaMemcpyHostToDevice));
    }
  }
  return Status::Ok();
}

}  // namespace grove
