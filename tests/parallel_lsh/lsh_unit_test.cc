// Single-process checks of the LSH compression (parallel/lsh_*.h) with closed-form answers:
// config messages; the rotations are orthonormal and seeded; the hash is the cross-polytope code
// of the rotated vector, independent of the batch; centroids and their backward; identity
// experts give the input back; one token per bucket gives the plain dispatcher's result bit for
// bit; central finite differences of the compressed layer; zero tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/rng.h"
#include "parallel/lsh_compressor.h"
#include "parallel/lsh_dispatcher.h"
#include "parallel/moe_layer.h"
#include "tests/common/tensor_compare.h"
#include "tests/parallel_lsh/lsh_test_util.h"

namespace grove::parallel {
namespace {

using lsh_test::Clustered;
using lsh_test::Randn;
using lsh_test::UseLsh;

LshOptions Lsh(int L, int r, int min_tokens = 2, bool enabled = true) {
  LshOptions c;
  c.enabled = enabled;
  c.num_hashes = L;
  c.rotation_dim = r;
  c.min_tokens = min_tokens;
  // The raw method (every code, raw rows, from the first step); tests of centring, target
  // compression and warm-up set those fields themselves.
  c.center = false;
  c.target_compression = 0;
  c.warmup_steps = 0;
  c.compensate = true;
  return c;
}

TEST(LshOptions, ValidateNamesTheField) {
  LshOptions c;
  EXPECT_TRUE(c.Validate(16).ok());
  c.rotation_dim = 32;
  EXPECT_EQ(c.Validate(16).message(), "moe.lsh.rotation_dim=32 must be in [1, h=16]");
  c = LshOptions{};
  c.num_hashes = 0;
  EXPECT_EQ(c.Validate(16).message(), "moe.lsh.num_hashes=0 must be >= 1");
  c = LshOptions{};
  c.num_hashes = 17;
  c.rotation_dim = 8;  // 16 codes = 4 bits per hash: 17 hashes need 68 bits
  EXPECT_EQ(c.Validate(16).message(),
            "moe.lsh.num_hashes=17 with moe.lsh.rotation_dim=8 needs more than 64 bits of bucket "
            "id ((2r)^L > 2^64)");
  c.num_hashes = 16;
  EXPECT_TRUE(c.Validate(16).ok());
  c = LshOptions{};
  c.min_tokens = -1;
  EXPECT_EQ(c.Validate(16).message(), "moe.lsh.min_tokens=-1 must be >= 0");
  c = LshOptions{};
  c.target_compression = 0.5;
  EXPECT_EQ(c.Validate(16).message(),
            "moe.lsh.target_compression=0.5 must be 0 (bucket by all num_hashes codes) or >= 1");
  c.target_compression = std::nan("");
  EXPECT_FALSE(c.Validate(16).ok());
  c = LshOptions{};
  c.warmup_steps = -3;
  EXPECT_EQ(c.Validate(16).message(), "moe.lsh.warmup_steps=-3 must be >= 0");
}

// R_l R_l^T = I (rows orthonormal, to fp32 rounding), the same seed gives the same bits, another
// seed other rotations.
TEST(LshCompressor, RotationsAreOrthonormalAndSeeded) {
  const int h = 24, r = 12, L = 3;
  LshCompressor a(Lsh(L, r), h), b(Lsh(L, r), h);
  LshOptions other = Lsh(L, r);
  other.seed += 1;
  LshCompressor c(other, h);
  ASSERT_EQ(a.rotations().size(), size_t(L * r * h));
  EXPECT_EQ(std::memcmp(a.rotations().data(), b.rotations().data(), a.rotations().size() * 4), 0);
  EXPECT_NE(std::memcmp(a.rotations().data(), c.rotations().data(), a.rotations().size() * 4), 0);
  double worst = 0;
  for (int l = 0; l < L; ++l) {
    const float* R = a.rotations().data() + size_t(l) * r * h;
    for (int i = 0; i < r; ++i) {
      for (int j = 0; j < r; ++j) {
        double d = 0;
        for (int q = 0; q < h; ++q) d += double(R[i * h + q]) * R[j * h + q];
        worst = std::max(worst, std::fabs(d - (i == j ? 1.0 : 0.0)));
      }
    }
  }
  EXPECT_LT(worst, 1e-6);  // fp32 storage of a double-orthonormalised matrix: ≈ h·6e-8
}

// id = Σ_l (2·argmax|R_l x| + sign) (2r)^l, recomputed here in double; −x flips every sign bit;
// the id of a row does not depend on the batch it is hashed in.
TEST(LshCompressor, HashIsTheCrossPolytopeCodeOfTheRotatedVector) {
  const int h = 16, r = 6, L = 3, T = 300;
  LshCompressor lsh(Lsh(L, r), h);
  const std::vector<float> x = Randn(size_t(T) * h, 5);
  std::vector<uint64_t> ids(T);
  lsh.hash(ids.data(), x.data(), T);
  std::vector<int> codes_seen(2 * r, 0);
  for (int t = 0; t < T; ++t) {
    const float* xt = x.data() + size_t(t) * h;
    uint64_t want = 0, base = 1, neg = 0;
    for (int l = 0; l < L; ++l) {
      const float* R = lsh.rotations().data() + size_t(l) * r * h;
      int best = 0;
      double vbest = 0;
      for (int i = 0; i < r; ++i) {
        double v = 0;
        for (int q = 0; q < h; ++q) v += double(R[i * h + q]) * xt[q];
        if (std::fabs(v) > std::fabs(vbest)) {
          best = i;
          vbest = v;
        }
      }
      const uint64_t code = 2 * uint64_t(best) + (vbest < 0 ? 1 : 0);
      if (l == 0) ++codes_seen[code];
      want += code * base;
      neg += (code ^ 1) * base;
      base *= 2 * r;
    }
    EXPECT_EQ(ids[t], want) << "token " << t;
    EXPECT_EQ(lsh.hash(xt), want) << "token " << t << " hashed alone";
    std::vector<float> mx(xt, xt + h);
    for (float& v : mx) v = -v;
    EXPECT_EQ(lsh.hash(mx.data()), neg) << "token " << t << " negated";
  }
  for (int c = 0; c < 2 * r; ++c) EXPECT_GT(codes_seen[c], 0) << "code " << c << " never used";
  // The same rows in another batch (reversed, shifted by one row) keep their ids.
  std::vector<float> y(size_t(T + 1) * h, 0.5f);
  for (int t = 0; t < T; ++t)
    std::memcpy(y.data() + size_t(T - t) * h, x.data() + size_t(t) * h, sizeof(float) * h);
  std::vector<uint64_t> ids2(T + 1);
  lsh.hash(ids2.data(), y.data(), T + 1);
  for (int t = 0; t < T; ++t) EXPECT_EQ(ids2[T - t], ids[t]);
}

TEST(LshCompressor, BucketsInFirstAppearanceOrderAndCentroids) {
  LshCompressor lsh(Lsh(1, 2), 2);
  const uint64_t ids[] = {7, 3, 7, 9, 3, 7};
  int64_t bucket[6];
  EXPECT_EQ(lsh.bucketize(bucket, ids, 6), 3);
  const int64_t want[] = {0, 1, 0, 2, 1, 0};
  for (int a = 0; a < 6; ++a) EXPECT_EQ(bucket[a], want[a]) << a;
  // Rows gathered from a token array: row[a] is the token of member a.
  const float x[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};  // 7 tokens of h = 2
  const int64_t row[] = {0, 2, 3, 6, 5, 1};
  float c[6];
  int64_t count[3];
  double acc[6];
  centroid_forward(c, count, acc, x, row, bucket, 6, 3, 2);
  // bucket 0: tokens 0, 3, 1 → ((1+7+3)/3, (2+8+4)/3); bucket 1: tokens 2, 5; bucket 2: token 6.
  const float cw[] = {11.0f / 3, 14.0f / 3, 8, 9, 13, 14};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(c[i], cw[i]) << i;
  EXPECT_EQ(count[0], 3);
  EXPECT_EQ(count[1], 2);
  EXPECT_EQ(count[2], 1);
  std::vector<float> dx(14, 0.0f);
  const float dc[] = {3, 6, 2, 4, 1, 1};
  centroid_backward(dx.data(), dc, count, row, bucket, 6, 2);
  const float dxw[] = {1, 2, 1, 2, 1, 2, 1, 2, 0, 0, 1, 2, 1, 1};
  for (int i = 0; i < 14; ++i) EXPECT_FLOAT_EQ(dx[i], dxw[i]) << i;
}

// A hand-made routing (k = 2, weights summing to 1) of clustered tokens; experts = identity
// (the rows dispatch returns are combined as they are): out = Σ_j w_j (c + (x − c)) = x up to
// fp32 rounding of c + (x − c) (|c| ≈ 3·4, ulp ≈ 1e-6; tolerance 1e-6 of max|x|). Without the
// residual the error would be the residual itself, here ≈ 0.2 of max|x| (checked below).
TEST(LshDispatcher, IdentityExpertsGiveTheInput) {
  const int T = 96, h = 16, E = 4, k = 2;
  const std::vector<float> x = Clustered(T, h, 3, 21, 3.0f, 0.3f);
  Routing r;
  r.T = T;
  r.k = k;
  Rng rng(4);
  for (int t = 0; t < T; ++t) {
    const int e0 = int(rng.next_u64() % E), e1 = (e0 + 1 + int(rng.next_u64() % (E - 1))) % E;
    const float w0 = 0.2f + 0.6f * float(rng.uniform());
    r.expert.insert(r.expert.end(), {e0, e1});
    r.weight.insert(r.weight.end(), {w0, 1.0f - w0});
    r.kept.insert(r.kept.end(), {1, 1});
  }
  LshDispatcher d(E, h, nullptr, Lsh(1, 4));
  d.preprocess(r, x.data());
  const ExpertBatch b = d.dispatch(x.data());
  std::vector<float> out(x.size());
  d.combine(out.data(), b.x);
  EXPECT_TRUE(testing::compare("out", out, x, 1e-6));
  const LshMetrics& m = d.metrics();
  EXPECT_EQ(m.assignments, T * k);
  EXPECT_GT(m.compression_ratio(), 4.0) << m.centroids << " centroids";
  EXPECT_EQ(b.rows, m.centroids);
  EXPECT_EQ(m.groups, E);
  EXPECT_EQ(m.compressed_groups, E);
  EXPECT_GT(m.relative_residual(), 0.02);  // the residual is doing real work here
  EXPECT_EQ(m.bytes_sent, 0);              // no ep group
}

struct LayerRun {
  std::vector<float> out, din;
  float aux = 0, z = 0;
  std::vector<Tensor> grads;
  LshMetrics lsh;
};

// Two steps of the layer (the second is returned), plain dispatcher when lcfg is null.
LayerRun RunLayer(const MoeOptions& cfg, int h, int f, const std::vector<float>& x,
                  const std::vector<float>& dout, const LshOptions* lcfg) {
  const int T = int(x.size() / h);
  MoeLayer layer(cfg, h, f, T, nullptr, nullptr);
  layer.init(17, 0.3, 0.2);
  LshDispatcher* d = lcfg ? &UseLsh(layer, h, nullptr, *lcfg) : nullptr;
  LayerRun run;
  run.out.assign(x.size(), 0.0f);
  for (int step = 0; step < 2; ++step) {
    run.din.assign(x.size(), 0.0f);
    layer.zero_grads();
    layer.forward(run.out.data(), x.data(), T);
    layer.backward(run.din.data(), dout.data(), 1.5f);
  }
  run.aux = layer.aux_loss();
  run.z = layer.z_loss();
  for (const NamedTensor& g : layer.grads()) run.grads.push_back(g.tensor.clone());
  if (d) run.lsh = d->metrics();
  return run;
}

void ExpectBitEqual(const LayerRun& a, const LayerRun& b) {
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.din, b.din);
  EXPECT_EQ(a.aux, b.aux);
  EXPECT_EQ(a.z, b.z);
  for (size_t i = 0; i < a.grads.size(); ++i) {
    EXPECT_EQ(std::memcmp(a.grads[i].raw(), b.grads[i].raw(), a.grads[i].bytes()), 0)
        << "grad " << i;
  }
}

// One token per bucket: same rows in the same order through the same arithmetic (residual
// exactly 0, its gradient path skipped), so the results are bit-identical to the plain path —
// disabled, below min_tokens, and hashed into distinct buckets.
TEST(LshDispatcher, OneTokenPerBucketEqualsThePlainDispatcherExactly) {
  MoeOptions cfg;
  cfg.num_experts = 4;
  cfg.top_k = 2;
  const int T = 40, h = 16, f = 24;
  const std::vector<float> x = Randn(size_t(T) * h, 31), dout = Randn(x.size(), 32);
  const LayerRun plain = RunLayer(cfg, h, f, x, dout, nullptr);
  const LshOptions disabled = Lsh(1, 4, 2, false), few = Lsh(1, 4, T * 2 + 1), fine = Lsh(8, 16);
  for (const LshOptions* c : {&disabled, &few, &fine}) {
    SCOPED_TRACE(::testing::Message() << "enabled=" << c->enabled << " L=" << c->num_hashes
                                      << " min_tokens=" << c->min_tokens);
    const LayerRun lsh = RunLayer(cfg, h, f, x, dout, c);
    EXPECT_EQ(lsh.lsh.centroids, T * 2);
    EXPECT_EQ(lsh.lsh.compression_ratio(), 1.0);
    EXPECT_EQ(lsh.lsh.residual_norm_sum, 0.0);
    ExpectBitEqual(lsh, plain);
  }
}

// Central differences of L = Σ out·dout + s·(aux + z) of the COMPRESSED layer against its
// analytic gradient, on clustered tokens where buckets hold several tokens. As in the plain
// layer's test (moe_unit_test.cc): ε = 1e-2, tolerance 1e-3 of the largest sampled gradient
// (truncation ≈ 1e-5, fp32 rounding of L / 2ε ≈ 5e-5). Routing and buckets are checked to stay
// the same under every perturbation, so L is smooth there. Dropping the residual path from din,
// or the −c term of the residual from the centroid's gradient, gives errors of O(0.1..1).
void ExpectFiniteDifferences(const LshOptions& lcfg) {
  MoeOptions cfg;
  cfg.num_experts = 4;
  cfg.top_k = 2;
  cfg.aux_loss_coef = 0.5f;
  cfg.z_loss_coef = 0.2f;
  const int T = 24, h = 8, f = 8;
  const float scale = 2.0f;
  MoeLayer layer(cfg, h, f, T, nullptr, nullptr);
  layer.init(9, 0.4, 0.4);
  LshDispatcher& d = UseLsh(layer, h, nullptr, lcfg);
  const float eps = 1e-2f;
  // Tokens whose routing and buckets no ±ε step of any input changes (the premise of the
  // check; with the centred hash a step of one token also moves the group mean every other
  // token is hashed against): the first of a few seeds where that holds.
  std::vector<float> x;
  std::vector<float> probe_out(T * h);
  for (uint64_t seed = 8;; ++seed) {
    ASSERT_LT(seed, 40u) << "no seed keeps the buckets under the perturbations";
    x = Clustered(T, h, 3, seed, 2.0f, 0.05f);
    layer.forward(probe_out.data(), x.data(), T);
    const std::vector<int64_t> base = d.assignment_centroid();
    bool stable = true;
    for (int i = 0; i < T * h && stable; ++i) {
      for (float s : {eps, -eps}) {
        const float keep = x[i];
        x[i] = keep + s;
        layer.forward(probe_out.data(), x.data(), T);
        x[i] = keep;
        stable = stable && d.assignment_centroid() == base;
      }
    }
    if (stable) break;
  }
  std::vector<float> dout = Randn(size_t(T) * h, 3), out(T * h), din(T * h, 0.0f);
  auto loss = [&](std::vector<int64_t>* buckets) {
    const float aux_z = layer.forward(out.data(), x.data(), T);
    double l = double(scale) * aux_z;
    for (int i = 0; i < T * h; ++i) l += double(out[i]) * dout[i];
    if (buckets) *buckets = d.assignment_centroid();
    return l;
  };
  std::vector<int64_t> b0, b;
  loss(&b0);
  ASSERT_GT(d.metrics().compression_ratio(), 2.0);
  ASSERT_GT(d.metrics().relative_residual(), 1e-2);
  layer.zero_grads();
  layer.backward(din.data(), dout.data(), scale);
  struct Target {
    const char* name;
    float* p;
    const float* g;
    int64_t n;
  };
  std::vector<NamedTensor> params = layer.params(), grads = layer.grads();
  std::vector<Target> targets = {{"x", x.data(), din.data(), T * h}};
  for (int i = 0; i < 4; ++i) {
    targets.push_back({params[i].name.c_str(), params[i].tensor.data<float>(),
                       grads[i].tensor.data<float>(), params[i].tensor.numel()});
  }
  for (const Target& t : targets) {
    double worst = 0, max_g = 0;
    const int64_t stride = t.p == x.data() ? 1 : std::max<int64_t>(1, t.n / 16);
    for (int64_t i = 0; i < t.n; i += stride) {
      const float keep = t.p[i];
      t.p[i] = keep + eps;
      const double lp = loss(&b);
      EXPECT_EQ(b, b0) << t.name << "[" << i << "] changed the routing or the buckets";
      t.p[i] = keep - eps;
      const double lm = loss(&b);
      EXPECT_EQ(b, b0) << t.name << "[" << i << "] changed the routing or the buckets";
      t.p[i] = keep;
      const double fd = (lp - lm) / (2.0 * eps);
      worst = std::max(worst, std::fabs(fd - t.g[i]));
      max_g = std::max(max_g, std::fabs(double(t.g[i])));
    }
    EXPECT_GT(max_g, 0) << t.name;
    EXPECT_LE(worst / max_g, 1e-3)
        << t.name << ": max |fd - analytic| " << worst << ", max |analytic| " << max_g;
  }
}

TEST(LshDispatcher, CompressedGradientsMatchFiniteDifferences) {
  SCOPED_TRACE("raw hash, x - c compensation");
  ExpectFiniteDifferences(Lsh(1, 4));
}

// The same without the x − c compensation (out = Σ_j w·y_b; din through the mean only), with the
// centred hash and a target compression choosing the codes.
TEST(LshDispatcher, UncompensatedCentredGradientsMatchFiniteDifferences) {
  LshOptions o = Lsh(3, 4);
  o.center = true;
  o.target_compression = 2;
  o.compensate = false;
  ExpectFiniteDifferences(o);
}

// Routing of T tokens, k = 1, all to expert 0 with weight 1 (one group of n = T rows).
Routing OneGroup(int T) {
  Routing r;
  r.T = T;
  r.k = 1;
  r.expert.assign(T, 0);
  r.weight.assign(T, 1.0f);
  r.kept.assign(T, 1);
  return r;
}

// Centred hashing: shifting every row of a group by the same vector v changes nothing (the hash
// sees x − μ); the raw hash puts the shifted group into one bucket once |v| dominates.
TEST(LshDispatcher, CentredHashIgnoresWhatTheGroupShares) {
  const int T = 200, h = 16;
  const std::vector<float> x = Randn(size_t(T) * h, 12);
  std::vector<float> shifted = x;
  const std::vector<float> v = Randn(h, 13, 100.0f);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < h; ++j) shifted[size_t(t) * h + j] += v[j];
  const Routing r = OneGroup(T);
  auto buckets = [&](const LshOptions& o, const std::vector<float>& in) {
    LshDispatcher d(4, h, nullptr, o);
    d.preprocess(r, in.data());
    d.dispatch(in.data());
    return std::make_pair(d.assignment_centroid(), d.metrics().centroids);
  };
  LshOptions c = Lsh(2, 4);
  c.center = true;
  const auto [b0, n0] = buckets(c, x);
  const auto [b1, n1] = buckets(c, shifted);
  EXPECT_GT(n0, 20);  // 64 possible ids, 200 i.i.d. rows
  EXPECT_EQ(b0, b1);
  const auto [raw, n_raw] = buckets(Lsh(2, 4), shifted);
  EXPECT_LE(n_raw, 2);  // one bucket, or two where v sits near a boundary of the hash
}

// target_compression keeps, per group, the longest prefix code_1..code_l with n / B_l ≥ target
// (l = 1 if none), checked against the bucket counts of every prefix recomputed from hash().
TEST(LshDispatcher, TargetCompressionKeepsTheLongestPrefixThatReachesIt) {
  const int T = 300, h = 16, L = 4, r = 3;
  const std::vector<float> x = Clustered(T, h, 6, 5, 1.0f, 0.6f);
  LshCompressor full(Lsh(L, r), h);
  std::vector<uint64_t> ids(T);
  full.hash(ids.data(), x.data(), T);
  std::vector<int64_t> B(L + 1, 0);
  uint64_t mod = 1;
  for (int l = 1; l <= L; ++l) {
    mod *= 2 * r;
    std::vector<uint64_t> p(ids);
    for (uint64_t& id : p) id %= mod;
    std::sort(p.begin(), p.end());
    B[l] = std::unique(p.begin(), p.end()) - p.begin();
  }
  ASSERT_LT(B[1], B[L]);  // the codes do refine this data
  const Routing rt = OneGroup(T);
  int distinct_choices = 0, last = 0;
  for (double target : {1.0, 2.0, 3.0, 5.0, 8.0, 15.0, 40.0, 1000.0}) {
    int want = 1;
    for (int l = 1; l <= L; ++l)
      if (double(T) >= target * double(B[l])) want = l;
    LshOptions o = Lsh(L, r);
    o.target_compression = target;
    LshDispatcher d(4, h, nullptr, o);
    d.preprocess(rt, x.data());
    EXPECT_EQ(d.metrics().centroids, B[want]) << "target " << target;
    EXPECT_EQ(d.metrics().mean_hash_codes(), want) << "target " << target;
    distinct_choices += want != last;
    last = want;
  }
  EXPECT_GE(distinct_choices, 3);  // the targets do exercise several prefixes
}

// warmup_steps = 2: the first two training passes are the plain path bit for bit; the third is
// compressed. Evaluation forwards (no backward) do not advance the clock.
TEST(LshDispatcher, WarmupRunsThePlainPathFirst) {
  MoeOptions cfg;
  cfg.num_experts = 4;
  cfg.top_k = 2;
  const int T = 64, h = 16, f = 24;
  const std::vector<float> x = Clustered(T, h, 3, 2), dout = Randn(x.size(), 3);
  MoeLayer plain(cfg, h, f, T, nullptr, nullptr), lsh(cfg, h, f, T, nullptr, nullptr);
  plain.init(17, 0.3, 0.2);
  lsh.init(17, 0.3, 0.2);
  LshOptions o = Lsh(1, 4);
  o.warmup_steps = 2;
  LshDispatcher& d = UseLsh(lsh, h, nullptr, o);
  std::vector<float> a(x.size()), b(x.size()), da(x.size()), db(x.size());
  for (int step = 0; step < 3; ++step) {
    plain.forward(a.data(), x.data(), T);
    lsh.forward(b.data(), x.data(), T);  // an extra forward, as an evaluation would run
    lsh.forward(b.data(), x.data(), T);
    std::fill(da.begin(), da.end(), 0.0f);
    std::fill(db.begin(), db.end(), 0.0f);
    plain.backward(da.data(), dout.data(), 1.0f);
    lsh.backward(db.data(), dout.data(), 1.0f);
    if (step < 2) {
      EXPECT_TRUE(d.metrics().warmup) << step;
      EXPECT_EQ(d.metrics().compression_ratio(), 1.0) << step;
      EXPECT_EQ(a, b) << step;
      EXPECT_EQ(da, db) << step;
    } else {
      EXPECT_FALSE(d.metrics().warmup);
      EXPECT_GT(d.metrics().compression_ratio(), 4.0);
      EXPECT_NE(a, b);
    }
  }
}

// Without compensation, identity experts give each token the weighted mean of its buckets'
// centroids, Σ_j w_j c_b(j), not the token.
TEST(LshDispatcher, UncompensatedIdentityExpertsGiveTheCentroids) {
  const int T = 60, h = 8;
  const std::vector<float> x = Clustered(T, h, 3, 21, 3.0f, 0.3f);
  const Routing r = OneGroup(T);
  LshOptions o = Lsh(1, 4);
  o.compensate = false;
  LshDispatcher d(4, h, nullptr, o);
  d.preprocess(r, x.data());
  const ExpertBatch b = d.dispatch(x.data());
  std::vector<float> out(x.size());
  d.combine(out.data(), b.x);
  ASSERT_GT(d.metrics().compression_ratio(), 4.0);
  const std::vector<int64_t>& pos = d.assignment_centroid();
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < h; ++j) {
      double c = 0;
      int n = 0;
      for (int u = 0; u < T; ++u) {
        if (pos[u] != pos[t]) continue;
        c += x[size_t(u) * h + j];
        ++n;
      }
      EXPECT_NEAR(out[size_t(t) * h + j], c / n, 1e-5) << t;
    }
  }
}

// T = 0, and experts that receive nothing (zero router: every token to experts 0 and 1).
TEST(LshDispatcher, ZeroTokensAndEmptyExperts) {
  MoeOptions cfg;
  cfg.num_experts = 4;
  cfg.top_k = 2;
  const int h = 8, f = 8;
  {
    MoeLayer layer(cfg, h, f, 4, nullptr, nullptr);
    layer.init(1, 0.3, 0.3);
    LshDispatcher& d = UseLsh(layer, h, nullptr, Lsh(2, 4));
    layer.forward(nullptr, nullptr, 0);
    layer.backward(nullptr, nullptr, 1.0f);
    EXPECT_EQ(d.metrics().centroids, 0);
    EXPECT_EQ(d.metrics().compression_ratio(), 1.0);
  }
  const int T = 30;
  MoeLayer layer(cfg, h, f, T, nullptr, nullptr);
  layer.init(1, 0.3, 0.3);
  layer.params()[0].tensor.zero();
  LshDispatcher& d = UseLsh(layer, h, nullptr, Lsh(1, 2));
  const std::vector<float> x = Clustered(T, h, 2, 3), dout = Randn(x.size(), 4);
  std::vector<float> out(x.size()), din(x.size(), 0.0f);
  layer.forward(out.data(), x.data(), T);
  layer.backward(din.data(), dout.data(), 1.0f);
  EXPECT_EQ(d.metrics().groups, 2);
  EXPECT_EQ(d.metrics().compressed_groups, 2);
  EXPECT_LE(d.metrics().centroids, 2 * 4);  // ≤ 2r buckets per expert
  for (float v : din) ASSERT_TRUE(std::isfinite(v));
  // Experts 2 and 3 saw no row: their weight gradients stay exactly 0.
  const Tensor g = layer.grads()[1].tensor;  // w_gate [E, f, h] (shares the storage)
  for (int64_t i = 2 * f * h; i < g.numel(); ++i) ASSERT_EQ(g.data<float>()[i], 0.0f);
}

// The stash is what the backward keeps: tokens, weights, centroids, their results, the experts'
// input rows and the index arrays.
TEST(LshDispatcher, StashBytesCountCentroidsNotTokens) {
  MoeOptions cfg;
  cfg.num_experts = 4;
  cfg.top_k = 2;
  const int T = 64, h = 16, f = 8;
  const std::vector<float> x = Clustered(T, h, 2, 3), dout = Randn(x.size(), 4);
  MoeLayer layer(cfg, h, f, T, nullptr, nullptr);
  layer.init(1, 0.3, 0.3);
  LshDispatcher& d = UseLsh(layer, h, nullptr, Lsh(1, 2));
  std::vector<float> out(x.size());
  layer.forward(out.data(), x.data(), T);
  const int64_t C = d.metrics().centroids, M = d.metrics().assignments, A = T * 2;
  EXPECT_EQ(M, A);
  EXPECT_EQ(d.stash_bytes(), 4 * size_t(A + T * h + 3 * C * h) + 8 * size_t(A + 2 * M + C) +
                                 4 * size_t(M) + size_t(T));
}

}  // namespace
}  // namespace grove::parallel
