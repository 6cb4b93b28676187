// MoeLayer: the stages wired together, forward and backward side by side; see moe_layer.h.
#include "parallel/moe_layer.h"

#include <chrono>
#include <cstring>
#include <sstream>

#include "core/rng.h"

namespace grove::parallel {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

template <typename V>
void grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

int group_size(const comm::Communicator* c) {
  return c != nullptr ? c->size() : 1;
}

}  // namespace

MoeLayer::MoeLayer(const MoeOptions& cfg, int h, int f, int max_tokens, comm::Communicator* ep_group,
                   comm::Communicator* stats_group)
    : cfg_(cfg),
      h_(h),
      f_(f),
      max_tokens_(max_tokens),
      ep_size_(group_size(ep_group)),
      ep_rank_(ep_group != nullptr ? ep_group->rank() : 0),
      E_l_(cfg.num_experts / ep_size_),
      stats_(stats_group),
      router_(cfg, h, max_tokens),
      dispatcher_(std::make_unique<AllToAllDispatcher>(cfg.num_experts, h, ep_group)),
      x_(size_t(max_tokens) * h),
      dweight_(size_t(max_tokens) * cfg.top_k) {
  const Status st = cfg.Validate(ep_size_);
  GROVE_CHECK(st.ok()) << st.message();
  GROVE_CHECK(h > 0 && f > 0 && max_tokens >= 0)
      << "h=" << h << " f=" << f << " max_tokens=" << max_tokens;
  const int64_t E = cfg.num_experts;
  router_w_ = Tensor::zeros({E, h});
  w_gate_ = Tensor::zeros({E_l_, f, h});
  w_up_ = Tensor::zeros({E_l_, f, h});
  w_down_ = Tensor::zeros({E_l_, h, f});
  d_router_w_ = Tensor::zeros({E, h});
  dw_gate_ = Tensor::zeros({E_l_, f, h});
  dw_up_ = Tensor::zeros({E_l_, f, h});
  dw_down_ = Tensor::zeros({E_l_, h, f});
}

// ---- forward -----------------------------------------------------------------------------------
float MoeLayer::forward(float* out, const float* in, int T) {
  GROVE_CHECK(T >= 0 && T <= max_tokens_) << "MoeLayer: T=" << T << " > max_tokens=" << max_tokens_;
  const auto t0 = Clock::now();
  const DispatchStats before = dispatcher_->stats();
  T_ = T;
  if (T > 0) std::memcpy(x_.data(), in, sizeof(float) * T * h_);

  // route
  router_.forward(&routing_, x_.data(), router_w_.data<float>(), T, stats_);
  timing_.router_ms = ms_since(t0);
  // preprocess, dispatch
  dispatcher_->preprocess(routing_, x_.data());
  batch_ = dispatcher_->dispatch(x_.data());
  // experts
  const auto t1 = Clock::now();
  const size_t R = size_t(batch_.rows);
  grow(gate_, R * f_);
  grow(up_, R * f_);
  grow(act_, R * f_);
  grow(y_, R * h_);
  const ExpertWeights w{w_gate_.data<float>(), w_up_.data<float>(), w_down_.data<float>()};
  swiglu_experts_forward(y_.data(), gate_.data(), up_.data(), act_.data(), batch_.x,
                         batch_.offset.data(), E_l_, h_, f_, w);
  timing_.experts_ms = ms_since(t1);
  // combine
  dispatcher_->combine(out, y_.data());

  const DispatchStats& after = dispatcher_->stats();
  timing_.dispatch_a2a_ms = after.dispatch_a2a_ms - before.dispatch_a2a_ms;
  timing_.combine_a2a_ms = after.combine_a2a_ms - before.combine_a2a_ms;
  timing_.a2a_bytes_sent = after.bytes_sent - before.bytes_sent;
  timing_.forward_ms = ms_since(t0);
  return aux_loss() + z_loss();
}

// ---- backward ----------------------------------------------------------------------------------
void MoeLayer::backward(float* din, const float* dout, float loss_scale) {
  GROVE_CHECK(T_ >= 0) << "MoeLayer::backward before forward";
  const auto t0 = Clock::now();
  const DispatchStats before = dispatcher_->stats();
  const size_t R = size_t(batch_.rows);
  grow(dx_, R * h_);
  grow(dact_, R * f_);
  grow(dgate_, R * f_);
  grow(dup_, R * f_);
  // combine backward: dy (into y_, free after combine) and dL/dw_{t,j}
  dispatcher_->combine_backward(y_.data(), dweight_.data(), dout);
  // experts backward
  const ExpertWeights w{w_gate_.data<float>(), w_up_.data<float>(), w_down_.data<float>()};
  const ExpertGrads g{dw_gate_.data<float>(), dw_up_.data<float>(), dw_down_.data<float>()};
  swiglu_experts_backward(dx_.data(), g, act_.data(), dact_.data(), dgate_.data(), dup_.data(),
                          y_.data(), batch_.x, gate_.data(), up_.data(), batch_.offset.data(), E_l_,
                          h_, f_, w);
  // dispatch backward (din +=), then the router (din +=, through w_{t,j}, aux and z)
  dispatcher_->dispatch_backward(din, dx_.data());
  router_.backward(din, d_router_w_.data<float>(), dweight_.data(), routing_, x_.data(),
                   router_w_.data<float>(), loss_scale);

  const DispatchStats& after = dispatcher_->stats();
  timing_.backward_a2a_ms = after.backward_a2a_ms - before.backward_a2a_ms;
  timing_.a2a_bytes_sent += after.bytes_sent - before.bytes_sent;
  timing_.backward_ms = ms_since(t0);
}

// ---- metrics, stash, parameters
// -------------------------------------------------------------------
MoeMetrics MoeLayer::metrics() const {
  MoeMetrics m = timing_;
  const RouterStats& s = router_.stats();
  m.tokens = s.tokens;
  m.tokens_per_expert = s.tokens_per_expert;
  m.dropped_per_expert = s.dropped_per_expert;
  m.dropped = 0;
  for (int64_t d : s.dropped_per_expert) m.dropped += d;
  m.aux_loss = s.aux_loss;
  m.z_loss = s.z_loss;
  return m;
}

size_t MoeLayer::stash_bytes() const {
  if (T_ < 0) return 0;
  const size_t A = size_t(T_) * cfg_.top_k;
  return sizeof(float) * size_t(T_) * h_                            // input
         + router_.stash_bytes()                                    // probs, lse
         + A * (sizeof(int32_t) + sizeof(float) + sizeof(uint8_t))  // routing
         + dispatcher_->stash_bytes()                               // layout, rows, outputs
         + sizeof(float) * 2 * size_t(batch_.rows) * f_;            // gate, up
}

std::vector<NamedTensor> MoeLayer::params() const {
  return {{"router", router_w_},
          {"experts.w_gate", w_gate_},
          {"experts.w_up", w_up_},
          {"experts.w_down", w_down_}};
}

std::vector<NamedTensor> MoeLayer::grads() const {
  return {{"router", d_router_w_},
          {"experts.w_gate", dw_gate_},
          {"experts.w_up", dw_up_},
          {"experts.w_down", dw_down_}};
}

void MoeLayer::bind(const std::vector<NamedTensor>& params,
                    const std::vector<NamedTensor>& grads) {
  Tensor* mine[] = {&router_w_, &w_gate_, &w_up_, &w_down_};
  Tensor* mine_g[] = {&d_router_w_, &dw_gate_, &dw_up_, &dw_down_};
  const std::vector<NamedTensor> names = this->params();
  GROVE_CHECK(params.size() == 4 && (grads.size() == 4 || grads.empty()))
      << "MoeLayer::bind: 4 parameters and 4 or no gradients";
  for (int i = 0; i < 4; ++i) {
    GROVE_CHECK(params[i].name == names[i].name && params[i].tensor.shape() == mine[i]->shape() &&
                (grads.empty() || (grads[i].name == names[i].name &&
                                   grads[i].tensor.shape() == mine[i]->shape())))
        << "MoeLayer::bind: '" << params[i].name << "' " << shape_str(params[i].tensor.shape())
        << ", want '" << names[i].name << "' " << shape_str(mine[i]->shape());
    *mine[i] = params[i].tensor;
    if (!grads.empty()) *mine_g[i] = grads[i].tensor;
  }
}

void MoeLayer::zero_grads() {
  for (NamedTensor& g : grads()) g.tensor.zero();
}

std::vector<NamedTensor> MoeLayer::init_full(const MoeOptions& cfg, int h, int f, uint64_t seed,
                                             double std, double out_std) {
  const int64_t E = cfg.num_experts;
  std::vector<NamedTensor> full = {{"router", Tensor::empty({E, h})},
                                   {"experts.w_gate", Tensor::empty({E, f, h})},
                                   {"experts.w_up", Tensor::empty({E, f, h})},
                                   {"experts.w_down", Tensor::empty({E, h, f})}};
  uint64_t stream = 0;
  for (NamedTensor& nt : full) {
    Rng rng(derive_seed(seed, stream++));
    const double s = nt.name == "experts.w_down" ? out_std : std;
    float* p = nt.tensor.data<float>();
    for (int64_t i = 0; i < nt.tensor.numel(); ++i) p[i] = static_cast<float>(s * rng.normal());
  }
  return full;
}

void MoeLayer::init(uint64_t seed, double std, double out_std) {
  load_full(init_full(cfg_, h_, f_, seed, std, out_std));
}

Tensor MoeLayer::slice_experts(const Tensor& full, int ep, int ep_rank) {
  GROVE_CHECK(full.ndim() >= 1 && full.dim(0) % ep == 0 && ep_rank >= 0 && ep_rank < ep)
      << "slice_experts: " << shape_str(full.shape()) << " over ep=" << ep;
  Shape shape = full.shape();
  shape[0] /= ep;
  Tensor out = Tensor::empty(shape, full.dtype());
  std::memcpy(out.raw(), static_cast<const char*>(full.raw()) + ep_rank * out.bytes(), out.bytes());
  return out;
}

void MoeLayer::load_full(const std::vector<NamedTensor>& full) {
  for (NamedTensor& dst : params()) {
    const NamedTensor* src = nullptr;
    for (const NamedTensor& f : full) {
      if (f.name == dst.name) src = &f;
    }
    GROVE_CHECK(src != nullptr) << "MoeLayer::load_full: no tensor '" << dst.name << "'";
    const Tensor part =
        dst.name == "router" ? src->tensor : slice_experts(src->tensor, ep_size_, ep_rank_);
    GROVE_CHECK(part.shape() == dst.tensor.shape())
        << "MoeLayer::load_full: '" << dst.name << "' is " << shape_str(src->tensor.shape())
        << ", want " << shape_str(dst.tensor.shape()) << " for ep=" << ep_size_;
    std::memcpy(dst.tensor.raw(), part.raw(), part.bytes());
  }
}

}  // namespace grove::parallel
