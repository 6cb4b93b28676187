#include "spec/memory.h"

#include <sstream>

namespace grove {

namespace {

// Rows of the tensors in the "replicated" region (residual stream, norms): split over the TP
// group with sequence parallelism, replicated without it.
int64_t replicated_rows(const MemoryLayout& m) {
  const int64_t N = int64_t(m.seq) * m.batch;
  return m.sp ? N / m.tp : N;
}

// Elements of one block's intermediates, excluding its input (the residual stream row block).
// An MoE block's stash allocates the same buffers (gate, up, act included: model/activations.cc);
// its experts' own stash is MoeExpectedStashBytes.
int64_t block_intermediate_elems(const ModelConfig& c, const MemoryLayout& m, bool probs) {
  // d: the q/k head width the attention kernels see (MLA: qk_nope + qk_rope, with v and the
  // attention output zero-padded to it; MLA's k = a).
  const int64_t N = int64_t(m.seq) * m.batch, h = c.d_model, d = c.attn_qk_dim(), t = m.tp;
  const int64_t qd = int64_t(c.n_heads) * d / t, kvd = int64_t(c.kv_heads()) * d / t,
                f = c.ffn() / t, a = c.n_heads / t;
  const int64_t R = replicated_rows(m);
  int64_t e = R * (1 + h + h + 1 + h)          // rstd1, ln1, resid2, rstd2, ln2
              + N * (qd + 2 * kvd + qd)        // q, k, v, att
              + N * 3 * f                      // gate, up, act
              + int64_t(m.batch) * a * m.seq;  // lse
  if (c.is_mla()) {  // the latents' shards: cq, rstdq, cqn (with q_lora_rank), ckv, rstdkv, ckvn
    const int64_t qr = c.mla.q_lora_rank, kvr = c.mla_kv_rank();
    e += R * ((qr > 0 ? 2 * qr + 1 : 0) + 2 * kvr + 1);
  }
  if (probs) e += int64_t(m.batch) * a * m.seq * m.seq;
  return e;
}

}  // namespace

int64_t ActivationBytesPerLayer(const ModelConfig& c, const MemoryLayout& m, bool /*moe*/) {
  const int64_t input = replicated_rows(m) * c.d_model;
  if (m.recompute == Recompute::kFull) return 4 * input;
  return 4 * (input + block_intermediate_elems(c, m, m.recompute == Recompute::kNone));
}

int64_t MoeExpectedStashBytes(const ModelConfig& c, const MemoryLayout& m) {
  // The layer keeps its input [T, h] and, per received (token, slot) row, the dispatched row
  // [h] and the expert's gate and up [fe] each; balanced routing receives T·k rows per rank.
  const int64_t T = replicated_rows(m), k = c.moe.top_k, h = c.d_model, fe = c.expert_ffn();
  return 4 * (T * h + T * k * (h + 2 * fe));
}

MemoryEstimate EstimateMemory(const ModelConfig& c, const MemoryLayout& m) {
  MemoryEstimate e;
  const int64_t N = int64_t(m.seq) * m.batch, h = c.d_model, t = m.tp;
  e.activations_per_layer = ActivationBytesPerLayer(c, m);  // a block, its experts' stash aside
  // Every block's stash plus, per MoE block, its experts' expected stash (balanced routing).
  int64_t layers = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    const bool moe = c.is_moe_layer(l);
    layers += ActivationBytesPerLayer(c, m, moe) + (moe ? MoeExpectedStashBytes(c, m) : 0);
  }
  e.activations_transient =
      m.recompute == Recompute::kFull ? 4 * block_intermediate_elems(c, m, false) : 0;
  const int64_t R = replicated_rows(m);
  // Final residual, rstd, normalised state, vocab-parallel logits, CE lse and losses.
  e.activations_head = 4 * (R * h + R + R * h + N * (c.vocab_size / t) + N + N);
  e.activations = layers + e.activations_transient + e.activations_head;
  // Dense matrices are split over TP; norm weights and routers are replicated; experts are
  // split over EP (m.ep).
  const int64_t norms = int64_t(2 * c.n_layers + 1) * h;
  int64_t routers = 0, experts = 0;
  for (int l = 0; l < c.n_layers; ++l)
    if (c.is_moe_layer(l)) {
      routers += int64_t(c.moe.num_experts) * h;
      experts += int64_t(c.moe.num_experts) * 3 * h * c.expert_ffn();
    }
  // MLA's down-projections and latent norms are replicated too.
  const int64_t mla = int64_t(c.n_layers) * c.mla_replicated_parameters();
  const int64_t params = (c.num_parameters() - norms - routers - experts - mla) / t + norms +
                         routers + mla + experts / m.ep;
  e.parameters = 4 * params;
  e.gradients = 4 * params;
  e.optimizer = 8 * params;
  e.total = e.activations + e.parameters + e.gradients + e.optimizer;
  return e;
}

std::string MemoryEstimate::to_string() const {
  auto mib = [](int64_t b) { return double(b) / (1024.0 * 1024.0); };
  std::ostringstream os;
  os.precision(4);
  os << "memory per rank: " << mib(total) << " MiB (activations " << mib(activations)
     << ", parameters " << mib(parameters) << ", gradients " << mib(gradients) << ", AdamW "
     << mib(optimizer) << ")";
  return os.str();
}

}  // namespace grove
