// Cross-polytope LSH and centroids; see lsh_compressor.h.
#include "parallel/lsh_compressor.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "parallel/lsh_rotations.h"

namespace grove::parallel {

LshCompressor::LshCompressor(const LshOptions& cfg, int h)
    : cfg_(cfg), h_(h), r_(cfg.rotation_dim), L_(cfg.num_hashes) {
  const Status st = cfg.Validate(h);
  GROVE_CHECK(st.ok()) << st.message();
  rot_ = lsh_rotations(cfg, h);
  const int LR = L_ * r_;
  rotT_.resize(size_t(h_) * LR);
  for (int l = 0; l < L_; ++l) {
    for (int i = 0; i < r_; ++i) {
      for (int c = 0; c < h_; ++c)
        rotT_[size_t(c) * LR + l * r_ + i] = rot_[(size_t(l) * r_ + i) * h_ + c];
    }
  }
}

void LshCompressor::project(float* v, const float* x) const {
  // v = Σ_c x[c] · rotT[c, :]: each output is summed over c = 0..h-1 in this order whatever the
  // batch, so the result (and the argmax) depends on x alone. The inner loop runs across
  // outputs and vectorises without reassociating any sum.
  const int LR = L_ * r_;
  std::memset(v, 0, sizeof(float) * LR);
  for (int c = 0; c < h_; ++c) {
    const float xc = x[c];
    const float* rt = rotT_.data() + size_t(c) * LR;
    for (int o = 0; o < LR; ++o) v[o] += xc * rt[o];
  }
}

uint64_t LshCompressor::hash(const float* x) const {
  float v[4096];
  std::vector<float> big;
  float* p = v;
  if (L_ * r_ > 4096) {
    big.resize(size_t(L_) * r_);
    p = big.data();
  }
  project(p, x);
  uint64_t id = 0, base = 1;
  for (int l = 0; l < L_; ++l) {
    const float* vl = p + l * r_;
    int best = 0;
    for (int i = 1; i < r_; ++i) {
      if (std::fabs(vl[i]) > std::fabs(vl[best])) best = i;
    }
    const uint64_t code = 2 * uint64_t(best) + (vl[best] < 0 ? 1 : 0);
    id += code * base;
    base *= 2 * uint64_t(r_);  // wraps only after the last factor, which Validate bounds
  }
  return id;
}

void LshCompressor::hash(uint64_t* ids, const float* x, int64_t T) const {
#pragma omp parallel for schedule(static) if (T >= 256)
  for (int64_t t = 0; t < T; ++t) ids[t] = hash(x + t * h_);
}

int64_t LshCompressor::bucketize(int64_t* bucket, const uint64_t* ids, int64_t n) {
  map_.clear();
  int64_t B = 0;
  for (int64_t a = 0; a < n; ++a) {
    auto [it, inserted] = map_.try_emplace(ids[a], B);
    if (inserted) ++B;
    bucket[a] = it->second;
  }
  return B;
}

// ---- centroids ----------------------------------------------------------------------------------
void centroid_forward(float* c, int64_t* count, double* acc, const float* x, const int64_t* row,
                      const int64_t* bucket, int64_t n, int64_t B, int h) {
  std::memset(count, 0, sizeof(int64_t) * B);
  std::memset(acc, 0, sizeof(double) * B * h);
  for (int64_t a = 0; a < n; ++a) {
    const float* xa = x + (row ? row[a] : a) * h;
    double* s = acc + bucket[a] * h;
    ++count[bucket[a]];
    for (int j = 0; j < h; ++j) s[j] += xa[j];
  }
  // A bucket of one row gets that row back bit for bit (x·1 in double, then to float).
#pragma omp parallel for schedule(static) if (B >= 256)
  for (int64_t b = 0; b < B; ++b) {
    const double inv = count[b] > 0 ? 1.0 / double(count[b]) : 0.0;
    for (int j = 0; j < h; ++j) c[b * h + j] = float(acc[b * h + j] * inv);
  }
}

void centroid_backward(float* dx, const float* dc, const int64_t* count, const int64_t* row,
                       const int64_t* bucket, int64_t n, int h) {
  for (int64_t a = 0; a < n; ++a) {
    float* d = dx + (row ? row[a] : a) * h;
    const int64_t b = bucket[a];
    const float* g = dc + b * h;
    const float inv = 1.0f / float(count[b]);  // exactly 1 for a bucket of one row
    for (int j = 0; j < h; ++j) d[j] += g[j] * inv;
  }
}

}  // namespace grove::parallel
