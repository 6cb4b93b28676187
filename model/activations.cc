#include "model/activations.h"

#include <sstream>

namespace grove {

BlockActivations BlockActivations::Allocate(const ModelConfig& c, const MemoryLayout& m,
                                            bool with_probs, bool moe, Device device, DType act) {
  const int b = m.batch, s = m.seq, t = m.tp, heads = c.n_heads / t;
  const int64_t N = int64_t(s) * b, R = m.sp ? N / t : N, h = c.d_model,
                qd = int64_t(heads) * c.attn_qk_dim(),
                kvd = int64_t(c.kv_heads() / t) * c.attn_qk_dim(), f = c.ffn() / t;
  BlockActivations a;
  a.rstd1 = Tensor::empty({R}, DType::kF32, device);
  a.ln1 = Tensor::empty({R, h}, act, device);
  if (c.is_mla()) {
    if (const int64_t qr = c.mla.q_lora_rank; qr > 0) {
      a.cq = Tensor::empty({R, qr}, act, device);
      a.rstdq = Tensor::empty({R}, DType::kF32, device);
      a.cqn = Tensor::empty({R, qr}, act, device);
    }
    const int64_t kvr = c.mla_kv_rank();
    a.ckv = Tensor::empty({R, kvr}, act, device);
    a.rstdkv = Tensor::empty({R}, DType::kF32, device);
    a.ckvn = Tensor::empty({R, kvr}, act, device);
  }
  a.q = Tensor::empty({N, qd}, act, device);
  a.k = Tensor::empty({N, kvd}, act, device);
  a.v = Tensor::empty({N, kvd}, act, device);
  if (with_probs) a.probs = Tensor::empty({b, heads, s, s}, act, device);
  a.lse = Tensor::empty({b, heads, s}, DType::kF32, device);
  a.att = Tensor::empty({N, qd}, act, device);
  a.resid2 = Tensor::empty({R, h}, act, device);
  a.rstd2 = Tensor::empty({R}, DType::kF32, device);
  a.ln2 = Tensor::empty({R, h}, act, device);
  if (!moe) {
    a.gate = Tensor::empty({N, f}, act, device);
    a.up = Tensor::empty({N, f}, act, device);
    a.act = Tensor::empty({N, f}, act, device);
  }
  return a;
}

size_t BlockActivations::bytes() const {
  size_t n = 0;
  for (const Tensor* t : {&rstd1, &ln1,   &cq,  &rstdq, &cqn,    &ckv,   &rstdkv, &ckvn, &q,  &k,
                          &v,     &probs, &lse, &att,   &resid2, &rstd2, &ln2,    &gate, &up, &act})
    n += t->bytes();
  return n;
}

ActivationStash ActivationStash::Allocate(const ModelConfig& c, const MemoryLayout& m,
                                          bool with_probs, Device device, DType act) {
  const int64_t N = int64_t(m.seq) * m.batch, R = m.sp ? N / m.tp : N, h = c.d_model;
  ActivationStash st;
  const DType f32 = DType::kF32;
  for (int l = 0; l <= c.n_layers; ++l) st.resid.push_back(Tensor::empty({R, h}, act, device));
  if (m.recompute == Recompute::kFull) {
    st.transient = BlockActivations::Allocate(c, m, /*with_probs=*/false, false, device, act);
  } else {
    for (int l = 0; l < c.n_layers; ++l)
      st.blocks.push_back(BlockActivations::Allocate(
          c, m, with_probs && m.recompute == Recompute::kNone, false, device, act));
  }
  st.rstdf = Tensor::empty({R}, f32, device);
  st.lnf = Tensor::empty({R, h}, act, device);
  st.logits = Tensor::empty({N, c.vocab_size / m.tp}, act, device);
  st.ce_lse = Tensor::empty({N}, f32, device);
  st.losses = Tensor::empty({N}, f32, device);
  return st;
}

size_t ActivationReport::total() const {
  size_t n = transient + head + moe;
  for (size_t b : per_layer) n += b;
  return n;
}

std::string ActivationReport::to_string() const {
  std::ostringstream os;
  os << "activations: " << total() / (1024.0 * 1024.0) << " MiB (per layer "
     << (per_layer.empty() ? 0.0 : per_layer[0] / (1024.0 * 1024.0)) << " MiB x "
     << per_layer.size() << ", transient " << transient / (1024.0 * 1024.0) << " MiB, head "
     << head / (1024.0 * 1024.0) << " MiB)";
  return os.str();
}

}  // namespace grove
