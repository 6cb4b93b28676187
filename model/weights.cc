#include "model/weights.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>

#include "core/rng.h"

namespace grove {

ShardDim shard_dim(const std::string& name) {
  auto ends = [&](const char* s) { return name.ends_with(s); };
  if (ends("norm") || ends(".router") || ends(".wq_a") || ends(".wkv_a") || ends(".wk_rope"))
    return ShardDim::kReplicated;
  if (name.find(".experts.") != std::string::npos) return ShardDim::kExperts;
  if (ends(".wo") || ends(".w_down")) return ShardDim::kCols;
  return ShardDim::kRows;  // wte, lm_head, wq, wk, wv, wq_b, wk_b, wv_b, w_gate, w_up
}

ParamLayout ParamLayout::Of(const ModelConfig& c, int tp, int ep) {
  GROVE_CHECK(tp >= 1 && c.n_heads % tp == 0 && c.kv_heads() % tp == 0 && c.ffn() % tp == 0 &&
              c.vocab_size % tp == 0)
      << "tp=" << tp << " must divide n_heads, kv heads, ffn and vocab_size";
  const int64_t h = c.d_model, qd = int64_t(c.n_heads) * c.attn_qk_dim() / tp,
                kvd = int64_t(c.kv_heads()) * c.head_dim() / tp, f = c.ffn() / tp,
                vd = int64_t(c.n_heads) * c.attn_v_dim() / tp, V = c.vocab_size / tp;
  const int64_t qr = c.mla.q_lora_rank, kvr = c.mla_kv_rank(), a = c.n_heads / tp;
  ParamLayout out;
  auto add = [&](std::string name, Shape shape) {
    ParamEntry e{std::move(name), std::move(shape), out.size, 0, false};
    e.numel = shape_numel(e.shape);
    e.decay = e.shape.size() >= 2;
    out.size += (e.numel + 7) / 8 * 8;
    out.entries.push_back(std::move(e));
  };
  add("wte", {V, h});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    add(p + "attn_norm", {h});
    if (!c.is_mla()) {
      add(p + "wq", {qd, h});
      add(p + "wk", {kvd, h});
      add(p + "wv", {kvd, h});
    } else {
      if (qr == 0) {
        add(p + "wq", {qd, h});
      } else {
        add(p + "wq_a", {qr, h});
        add(p + "q_norm", {qr});
        add(p + "wq_b", {qd, qr});
      }
      add(p + "wkv_a", {kvr, h});
      add(p + "wk_rope", {c.mla_rope_dim(), h});
      add(p + "kv_norm", {kvr});
      add(p + "wk_b", {a * c.mla_nope_dim(), kvr});
      add(p + "wv_b", {vd, kvr});
    }
    add(p + "wo", {h, vd});
    add(p + "mlp_norm", {h});
    if (c.is_moe_layer(l)) {
      GROVE_CHECK(ep >= 1 && c.moe.num_experts % ep == 0)
          << "ep=" << ep << " must divide model.moe.num_experts=" << c.moe.num_experts;
      const int64_t E = c.moe.num_experts, El = E / ep, fe = c.expert_ffn();
      add(p + "router", {E, h});
      add(p + "experts.w_gate", {El, fe, h});
      add(p + "experts.w_up", {El, fe, h});
      add(p + "experts.w_down", {El, h, fe});
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

const ParamEntry& ParamLayout::at(const std::string& name) const {
  for (const ParamEntry& e : entries)
    if (e.name == name) return e;
  GROVE_CHECK(false) << "no parameter named '" << name << "'";
  return entries.front();
}

Weights Weights::View(const Tensor& flat, const ParamLayout& layout) {
  GROVE_CHECK(flat.numel() >= layout.size)
      << "flat buffer of " << flat.numel() << " elements for a layout of " << layout.size;
  Weights w;
  size_t i = 0;
  auto next = [&](const std::string& suffix) {
    GROVE_CHECK(i < layout.entries.size() && layout.entries[i].name.ends_with(suffix))
        << "parameter layout out of order at '" << suffix << "'";
    const ParamEntry& e = layout.entries[i++];
    return flat.view(e.offset, e.shape);
  };
  w.wte = next("wte");
  while (i < layout.entries.size() && layout.entries[i].name.starts_with("layers.")) {
    LayerWeights lw;
    lw.attn_norm = next("attn_norm");
    auto at = [&](const char* suffix) { return layout.entries[i].name.ends_with(suffix); };
    if (at(".wq_a")) {
      lw.wq_a = next("wq_a");
      lw.q_norm = next("q_norm");
      lw.wq_b = next("wq_b");
    } else {
      lw.wq = next("wq");
    }
    if (at(".wkv_a")) {
      lw.wkv_a = next("wkv_a");
      lw.wk_rope = next("wk_rope");
      lw.kv_norm = next("kv_norm");
      lw.wk_b = next("wk_b");
      lw.wv_b = next("wv_b");
    } else {
      lw.wk = next("wk");
      lw.wv = next("wv");
    }
    lw.wo = next("wo");
    lw.mlp_norm = next("mlp_norm");
    if (layout.entries[i].name.ends_with("router")) {
      lw.router = next("router");
      lw.e_gate = next("experts.w_gate");
      lw.e_up = next("experts.w_up");
      lw.e_down = next("experts.w_down");
    } else {
      lw.w_gate = next("w_gate");
      lw.w_up = next("w_up");
      lw.w_down = next("w_down");
    }
    w.layers.push_back(std::move(lw));
  }
  w.final_norm = next("final_norm");
  w.lm_head = next("lm_head");
  return w;
}

Weights Weights::Zeros(const ModelConfig& c, int tp, int ep) {
  const ParamLayout layout = ParamLayout::Of(c, tp, ep);
  return View(Tensor::zeros({layout.size}), layout);
}

Weights Weights::Init(const ModelConfig& c, int tp, int tp_rank, int ep, int ep_rank) {
  if (tp > 1 || ep > 1) return Shard(Init(c), c, tp, tp_rank, ep, ep_rank);
  Weights w = Zeros(c);
  const double out_std = c.init_std / std::sqrt(2.0 * c.n_layers);
  // Each tensor draws from its own stream (derive_seed(seed, index)), so tensors can be filled
  // on several threads with results identical to a sequential fill (a ~1B model: seconds, not
  // tens of seconds).
  std::vector<NamedTensor> named = w.named();
  auto fill = [&](size_t index) {
    NamedTensor& nt = named[index];
    float* p = nt.tensor.data<float>();
    const int64_t n = nt.tensor.numel();
    Rng rng(derive_seed(c.seed, index));
    if (nt.tensor.ndim() == 1) {  // RMSNorm weights
      for (int64_t i = 0; i < n; ++i) p[i] = 1.0f;
      return;
    }
    const bool residual_out = nt.name.ends_with(".wo") || nt.name.ends_with("w_down");
    const double std = residual_out ? out_std : c.init_std;
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(std * rng.normal());
  };
  const unsigned threads = std::clamp(std::thread::hardware_concurrency(), 1u, 16u);
  if (threads == 1 || w.numel() < (int64_t{1} << 22)) {
    for (size_t i = 0; i < named.size(); ++i) fill(i);
    return w;
  }
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (size_t i = next++; i < named.size(); i = next++) fill(i);
    });
  for (std::thread& t : pool) t.join();
  return w;
}

Weights Weights::Shard(const Weights& full, const ModelConfig& c, int tp, int tp_rank, int ep,
                       int ep_rank) {
  Weights w = Zeros(c, tp, ep);
  std::vector<NamedTensor> src = full.named(), dst = w.named();
  for (size_t i = 0; i < dst.size(); ++i) {
    const Tensor& a = src[i].tensor;
    Tensor& b = dst[i].tensor;
    const float* in = a.data<float>();
    float* out = b.data<float>();
    switch (shard_dim(dst[i].name)) {
      case ShardDim::kReplicated:
        std::memcpy(out, in, b.bytes());
        break;
      case ShardDim::kRows:  // contiguous block of rows
        std::memcpy(out, in + tp_rank * b.numel(), b.bytes());
        break;
      case ShardDim::kExperts:  // contiguous block of experts
        std::memcpy(out, in + ep_rank * b.numel(), b.bytes());
        break;
      case ShardDim::kCols: {  // a column block of every row
        const int64_t rows = b.dim(0), cols = b.dim(1), full_cols = a.dim(1);
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(out + r * cols, in + r * full_cols + tp_rank * cols, sizeof(float) * cols);
        break;
      }
    }
  }
  return w;
}

std::vector<NamedTensor> Weights::named() const {
  std::vector<NamedTensor> out;
  out.push_back({"wte", wte});
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerWeights& lw = layers[l];
    const std::string p = "layers." + std::to_string(l) + ".";
    out.push_back({p + "attn_norm", lw.attn_norm});
    // The attention tensors a block has (MHA or MLA), in ParamLayout's order.
    const std::pair<const char*, const Tensor*> attn[] = {
        {"wq", &lw.wq},       {"wk", &lw.wk},           {"wv", &lw.wv},
        {"wq_a", &lw.wq_a},   {"q_norm", &lw.q_norm},   {"wq_b", &lw.wq_b},
        {"wkv_a", &lw.wkv_a}, {"wk_rope", &lw.wk_rope}, {"kv_norm", &lw.kv_norm},
        {"wk_b", &lw.wk_b},   {"wv_b", &lw.wv_b}};
    for (const auto& [name, t] : attn)
      if (t->defined()) out.push_back({p + name, *t});
    out.push_back({p + "wo", lw.wo});
    out.push_back({p + "mlp_norm", lw.mlp_norm});
    if (lw.router.defined()) {
      out.push_back({p + "router", lw.router});
      out.push_back({p + "experts.w_gate", lw.e_gate});
      out.push_back({p + "experts.w_up", lw.e_up});
      out.push_back({p + "experts.w_down", lw.e_down});
    } else {
      out.push_back({p + "w_gate", lw.w_gate});
      out.push_back({p + "w_up", lw.w_up});
      out.push_back({p + "w_down", lw.w_down});
    }
  }
  out.push_back({"final_norm", final_norm});
  out.push_back({"lm_head", lm_head});
  return out;
}

int64_t Weights::numel() const {
  int64_t n = 0;
  for (const NamedTensor& nt : named()) n += nt.tensor.numel();
  return n;
}

Weights Weights::clone() const {
  Weights w = *this;  // shares storage ...
  w.wte = wte.clone();
  w.final_norm = final_norm.clone();
  w.lm_head = lm_head.clone();
  for (LayerWeights& lw : w.layers)
    for (Tensor* t :
         {&lw.attn_norm, &lw.wq,      &lw.wk,      &lw.wv,     &lw.wq_a,   &lw.q_norm, &lw.wq_b,
          &lw.wkv_a,     &lw.wk_rope, &lw.kv_norm, &lw.wk_b,   &lw.wv_b,   &lw.wo,     &lw.mlp_norm,
          &lw.w_gate,    &lw.w_up,    &lw.w_down,  &lw.router, &lw.e_gate, &lw.e_up,   &lw.e_down})
      if (t->defined()) *t = t->clone();  // ... then every tensor gets its own copy
  return w;
}

void Weights::zero() {
  for (NamedTensor& nt : named()) nt.tensor.zero();
}

Status Weights::CopyFrom(const std::map<std::string, Tensor>& src, const std::string& origin,
                         const std::string& prefix) {
  // Validate everything first so that nothing is copied half-way.
  std::vector<NamedTensor> dst = named();
  for (const NamedTensor& nt : dst) {
    auto it = src.find(prefix + nt.name);
    if (it == src.end())
      return Status::Error(origin + ": missing tensor '" + prefix + nt.name + "'");
    if (it->second.shape() != nt.tensor.shape() || it->second.dtype() != nt.tensor.dtype())
      return Status::Error(origin + ": tensor '" + prefix + nt.name + "' has shape " +
                           shape_str(it->second.shape()) + " " + dtype_name(it->second.dtype()) +
                           ", the model expects " + shape_str(nt.tensor.shape()) + " " +
                           dtype_name(nt.tensor.dtype()) + " (does the model config match?)");
  }
  for (NamedTensor& nt : dst) nt.tensor.copy_from(src.at(prefix + nt.name));
  return Status::Ok();
}

}  // namespace grove
