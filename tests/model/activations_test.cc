// The activation stash: bytes per recompute mode follow from the buffers each mode keeps, and
// full recompute reproduces the selective-mode gradients bit for bit (the recomputed forward is
// the same deterministic computation).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "spec/memory.h"
#include "model/transformer.h"

namespace grove {
namespace {

ModelConfig SmallConfig() {
  ModelConfig c;
  c.vocab_size = 61;
  c.d_model = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.max_seq_len = 16;
  return c;
}

// Bytes one block keeps in the none/selective modes, written out from the buffer legend in
// model/activations.h (fp32, N = s*b):
//   resid, ln1, resid2, ln2: 4 x [N, h];  q, att: 2 x [N, a*d];  k, v: 2 x [N, k*d];
//   gate, up, act: 3 x [N, f];  rstd1, rstd2: 2 x [N];  lse: [b, a, s];  probs: [b, a, s, s].
size_t expected_block_bytes(const ModelConfig& c, int b, int s, bool probs) {
  const size_t N = size_t(b) * s, h = c.d_model, qd = size_t(c.n_heads) * c.head_dim(),
               kvd = size_t(c.kv_heads()) * c.head_dim(), f = c.ffn(), a = c.n_heads;
  size_t floats = 4 * N * h + 2 * N * qd + 2 * N * kvd + 3 * N * f + 2 * N + b * a * s;
  if (probs) floats += size_t(b) * a * s * s;
  return 4 * floats;
}

TEST(ActivationStash, BytesPerMode) {
  const ModelConfig c = SmallConfig();
  const int b = 3, s = 12;
  Transformer none(c, b, s, Recompute::kNone), sel(c, b, s, Recompute::kSelective),
      full(c, b, s, Recompute::kFull);
  for (int l = 0; l < c.n_layers; ++l) {
    EXPECT_EQ(none.activation_report().per_layer[l], expected_block_bytes(c, b, s, true));
    EXPECT_EQ(sel.activation_report().per_layer[l], expected_block_bytes(c, b, s, false));
    EXPECT_EQ(full.activation_report().per_layer[l], 4u * b * s * c.d_model);  // input only
  }
  EXPECT_EQ(full.activation_report().transient,
            expected_block_bytes(c, b, s, false) - 4u * b * s * c.d_model);
  // The memory formula (docs/memory.md) equals what the stash allocates, for every mode.
  for (Transformer* t : {&none, &sel, &full}) {
    MemoryLayout m{b, s, 1, false, t->recompute()};
    const MemoryEstimate e = EstimateMemory(c, m);
    const ActivationReport r = t->activation_report();
    EXPECT_EQ(size_t(e.activations_per_layer), r.per_layer[0]) << recompute_name(t->recompute());
    EXPECT_EQ(size_t(e.activations_transient), r.transient) << recompute_name(t->recompute());
    EXPECT_EQ(size_t(e.activations_head), r.head) << recompute_name(t->recompute());
    EXPECT_EQ(size_t(e.activations), r.total()) << recompute_name(t->recompute());
  }
  EXPECT_LT(full.activation_report().total(), sel.activation_report().total());
  EXPECT_LT(sel.activation_report().total(), none.activation_report().total());
}

TEST(ActivationStash, FullRecomputeGivesIdenticalGradients) {
  const ModelConfig c = SmallConfig();
  const int b = 2, s = 16;
  std::vector<int32_t> tokens(b * s), targets(b * s);
  for (int i = 0; i < b * s; ++i) {
    tokens[i] = (i * 7 + 3) % c.vocab_size;
    targets[i] = (i * 11 + 5) % c.vocab_size;
  }
  Transformer sel(c, b, s, Recompute::kSelective), full(c, b, s, Recompute::kFull);
  const float l1 = sel.forward(tokens.data(), targets.data());
  const float l2 = full.forward(tokens.data(), targets.data());
  EXPECT_EQ(l1, l2);
  sel.zero_grads();
  full.zero_grads();
  sel.backward();
  full.backward();
  auto gs = sel.grads().named(), gf = full.grads().named();
  for (size_t i = 0; i < gs.size(); ++i)
    EXPECT_EQ(0, std::memcmp(gs[i].tensor.raw(), gf[i].tensor.raw(), gs[i].tensor.bytes()))
        << gs[i].name << " differs between selective and full recompute";
}

}  // namespace
}  // namespace grove
