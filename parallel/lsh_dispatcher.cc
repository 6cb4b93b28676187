// The LSH-compressed all-to-all dispatcher; see lsh_dispatcher.h for the stages and the legend.
#include "parallel/lsh_dispatcher.h"

#include <cmath>
#include <cstring>

namespace grove::parallel {
namespace {

template <typename V>
void grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

LshDispatcher::LshDispatcher(int num_experts, int h, comm::Communicator* ep_group,
                             const LshOptions& cfg)
    : xch_(num_experts, h, ep_group),
      ep_size_(xch_.ep_size()),
      ep_rank_(xch_.ep_rank()),
      E_(num_experts),
      E_l_(xch_.local_experts()),
      h_(h),
      lsh_(cfg, h),
      send_count_(num_experts),
      token_count_(num_experts),
      counts_out_(2 * size_t(num_experts)),
      counts_in_(2 * size_t(num_experts)),
      recv_count_(num_experts) {}

// ---- preprocess: hash, bucket per expert, exchange the counts ---------------------------------
void LshDispatcher::preprocess(const Routing& r, const float* x) {
  const LshOptions& cfg = lsh_.config();
  T_ = r.T;
  k_ = r.k;
  const int64_t A = int64_t(T_) * k_;
  metrics_ = LshMetrics{};
  weight_.assign(r.weight.begin(), r.weight.begin() + A);
  grow(x_, size_t(T_) * h_);
  if (T_ > 0) std::memcpy(x_.data(), x, sizeof(float) * size_t(T_) * h_);
  grow(ids_, size_t(T_));
  const bool compress = cfg.enabled && step_ >= cfg.warmup_steps;
  metrics_.warmup = cfg.enabled && !compress;
  // Raw rows are hashed once per token; centred rows once per (token, expert) below.
  if (compress && !cfg.center) lsh_.hash(ids_.data(), x_.data(), T_);

  // The kept assignments of each expert, in token order (a counting sort on the expert id).
  std::fill(token_count_.begin(), token_count_.end(), 0);
  for (int64_t a = 0; a < A; ++a) {
    if (r.kept[a]) ++token_count_[r.expert[a]];
  }
  std::vector<int64_t> start(E_ + 1, 0), by_expert(A);
  for (int e = 0; e < E_; ++e) start[e + 1] = start[e] + token_count_[e];
  {
    std::vector<int64_t> cursor(start.begin(), start.end() - 1);
    for (int64_t a = 0; a < A; ++a) {
      if (r.kept[a]) by_expert[cursor[r.expert[a]]++] = a;
    }
  }
  // Buckets per expert; centroid rows in expert order, hence in destination-rank order.
  pos_.assign(A, -1);
  grow(scratch_ids_, size_t(T_));
  grow(scratch_bucket_, size_t(T_));
  C_ = 0;
  for (int e = 0; e < E_; ++e) {
    const int64_t n = token_count_[e];
    const int64_t* members = by_expert.data() + start[e];
    int64_t B = n;
    if (n > 0) ++metrics_.groups;
    if (compress && n > 0 && n >= cfg.min_tokens) {
      if (cfg.center) {
        hash_centered(scratch_ids_.data(), members, n);
      } else {
        for (int64_t m = 0; m < n; ++m) scratch_ids_[m] = ids_[members[m] / k_];
      }
      const int codes = choose_codes(scratch_ids_.data(), n);
      B = lsh_.bucketize(scratch_bucket_.data(), scratch_ids_.data(), n);
      for (int64_t m = 0; m < n; ++m) pos_[members[m]] = C_ + scratch_bucket_[m];
      ++metrics_.compressed_groups;
      metrics_.hash_codes_sum += codes;
    } else {
      for (int64_t m = 0; m < n; ++m) pos_[members[m]] = C_ + m;
    }
    send_count_[e] = B;
    C_ += B;
  }
  // Kept assignments in (t, j) order, bucket sizes, tokens with a non-zero residual.
  M_ = 0;
  kept_tok_.resize(A);
  kept_cen_.resize(A);
  kept_w_.resize(A);
  count_.assign(C_, 0);
  for (int64_t a = 0; a < A; ++a) {
    if (pos_[a] < 0) continue;
    kept_tok_[M_] = a / k_;
    kept_cen_[M_] = pos_[a];
    kept_w_[M_] = weight_[a];
    ++count_[pos_[a]];
    ++M_;
  }
  has_residual_.assign(T_, 0);
  for (int64_t m = 0; m < M_; ++m) {
    if (cfg.compensate && count_[kept_cen_[m]] > 1) has_residual_[kept_tok_[m]] = 1;
  }
  metrics_.assignments = M_;
  metrics_.centroids = C_;

  // Counts: (centroids, tokens) per expert; block s holds rank s's experts.
  for (int e = 0; e < E_; ++e) {
    counts_out_[2 * e] = send_count_[e];
    counts_out_[2 * e + 1] = token_count_[e];
  }
  const int64_t count_bytes =
      xch_.exchange_counts(counts_out_.data(), counts_in_.data(), 2, &stats_.dispatch_a2a_ms);
  stats_.bytes_sent += count_bytes;
  metrics_.bytes_sent += count_bytes;
  // Layouts (as the plain dispatcher, over centroid rows); the plain path's bytes for comparison.
  int64_t tokens_other = 0;  // token rows the plain path would exchange with other ranks
  for (int b = 0; b < ep_size_ * E_l_; ++b) {
    recv_count_[b] = counts_in_[2 * b];
    if (b / E_l_ != ep_rank_) tokens_other += token_count_[b] + counts_in_[2 * b + 1];
  }
  xch_.set_layout(send_count_.data(), recv_count_.data());
  R_ = xch_.received_rows();
  if (xch_.group()) {
    // Plain: counts once, then each token row crosses twice forward and twice backward.
    metrics_.bytes_uncompressed = int64_t(sizeof(int64_t)) * E_l_ * (ep_size_ - 1) +
                                  int64_t(sizeof(float)) * h_ * 2 * tokens_other;
  }
}

void LshDispatcher::hash_centered(uint64_t* ids, const int64_t* members, int64_t n) {
  // μ = mean of the group's rows, summed in member order in double; then id(x_t − μ).
  grow(mu_acc_, size_t(h_));
  grow(centred_, size_t(h_));
  std::fill(mu_acc_.begin(), mu_acc_.begin() + h_, 0.0);
  for (int64_t m = 0; m < n; ++m) {
    const float* xt = x_.data() + (members[m] / k_) * h_;
    for (int j = 0; j < h_; ++j) mu_acc_[j] += xt[j];
  }
  const double inv = 1.0 / double(n);
  std::vector<float> mu(h_);
  for (int j = 0; j < h_; ++j) mu[j] = float(mu_acc_[j] * inv);
  for (int64_t m = 0; m < n; ++m) {
    const float* xt = x_.data() + (members[m] / k_) * h_;
    for (int j = 0; j < h_; ++j) centred_[j] = xt[j] - mu[j];
    ids[m] = lsh_.hash(centred_.data());
  }
}

int LshDispatcher::choose_codes(uint64_t* ids, int64_t n) {
  const LshOptions& cfg = lsh_.config();
  const int L = cfg.num_hashes;
  if (cfg.target_compression <= 0.0 || L == 1) return L;
  // The bucketing by code_1..code_l refines the one by code_1..code_{l-1}: B_l grows with l.
  // Keep the longest prefix whose compression n / B_l still reaches the target.
  grow(prefix_ids_, size_t(n));
  const uint64_t base = 2 * uint64_t(cfg.rotation_dim);
  int chosen = 1;
  uint64_t modulus = base;
  for (int l = 1; l <= L; ++l) {
    for (int64_t m = 0; m < n; ++m) prefix_ids_[m] = l == L ? ids[m] : ids[m] % modulus;
    const int64_t B = lsh_.bucketize(scratch_bucket_.data(), prefix_ids_.data(), n);
    if (double(n) < cfg.target_compression * double(B)) break;
    chosen = l;
    if (l < L) modulus *= base;  // (2r)^l; the full id needs no modulus
  }
  if (chosen < L) {
    uint64_t mod = 1;
    for (int l = 0; l < chosen; ++l) mod *= base;
    for (int64_t m = 0; m < n; ++m) ids[m] %= mod;
  }
  return chosen;
}

int64_t LshDispatcher::count_bytes(int64_t bytes) {
  stats_.bytes_sent += bytes;
  metrics_.bytes_sent += bytes;
  return bytes;
}

// ---- dispatch (forward) / dispatch_backward
// ------------------------------------------------------
ExpertBatch LshDispatcher::dispatch(const float* /*x: the copy taken in preprocess*/) {
  grow(centroid_, size_t(C_) * h_);
  grow(acc_, size_t(C_) * h_);
  grow(recv_, size_t(R_) * h_);
  grow(expert_in_, size_t(R_) * h_);
  centroid_forward(centroid_.data(), count_.data(), acc_.data(), x_.data(), kept_tok_.data(),
                   kept_cen_.data(), M_, C_, h_);
  // The residuals x_t − c_b stay here; their size is a per-step metric.
  double res = 0, tok = 0;
#pragma omp parallel for schedule(static) reduction(+ : res, tok) if (M_ >= 256)
  for (int64_t m = 0; m < M_; ++m) {
    const float* xt = x_.data() + kept_tok_[m] * h_;
    const float* c = centroid_.data() + kept_cen_[m] * h_;
    double r2 = 0, x2 = 0;
    for (int j = 0; j < h_; ++j) {
      const double d = double(xt[j]) - c[j];
      r2 += d * d;
      x2 += double(xt[j]) * xt[j];
    }
    res += std::sqrt(r2);
    tok += std::sqrt(x2);
  }
  metrics_.residual_norm_sum = res;
  metrics_.token_norm_sum = tok;
  count_bytes(xch_.send(centroid_.data(), recv_.data(), &stats_.dispatch_a2a_ms));
  xch_.to_expert_layout(expert_in_.data(), recv_.data());
  return ExpertBatch{expert_in_.data(), R_, xch_.expert_offsets()};
}

void LshDispatcher::dispatch_backward(float* din, const float* dx) {
  const bool compensate = lsh_.config().compensate;
  ++step_;
  grow(recv_, size_t(R_) * h_);
  grow(back_, size_t(C_) * h_);
  xch_.from_expert_layout(recv_.data(), dx);
  count_bytes(xch_.send_back(recv_.data(), back_.data(), &stats_.backward_a2a_ms));
  // Gradient reaching c_b: dc_b from the experts minus dy_b through the residual's −c_b. For a
  // bucket of one the residual path is identically zero, so it is left out (exact plain path).
#pragma omp parallel for schedule(static) if (C_ >= 256)
  for (int64_t i = 0; i < C_; ++i) {
    if (count_[i] == 1 || !compensate) continue;
    float* g = back_.data() + i * h_;
    const float* s = dsum_.data() + i * h_;
    for (int j = 0; j < h_; ++j) g[j] -= s[j];
  }
  // Through the mean, in (t, j) order (as the plain path sums a token's slots), then the
  // residual's +x_t path.
  centroid_backward(din, back_.data(), count_.data(), kept_tok_.data(), kept_cen_.data(), M_, h_);
#pragma omp parallel for schedule(static) if (T_ >= 256)
  for (int t = 0; t < T_; ++t) {
    if (!has_residual_[t]) continue;
    float* d = din + int64_t(t) * h_;
    const float* g = rgrad_.data() + int64_t(t) * h_;
    for (int j = 0; j < h_; ++j) d[j] += g[j];
  }
}

// ---- combine (forward) / combine_backward -------------------------------------------------------
void LshDispatcher::combine(float* out, const float* y) {
  grow(recv_, size_t(R_) * h_);
  grow(returned_, size_t(C_) * h_);
  xch_.from_expert_layout(recv_.data(), y);
  count_bytes(xch_.send_back(recv_.data(), returned_.data(), &stats_.combine_a2a_ms));
  // out_t = Σ_j w_a · (y_b + (x_t − c_b)), slots summed in slot order (without compensation:
  // Σ_j w_a · y_b).
  const bool compensate = lsh_.config().compensate;
#pragma omp parallel for schedule(static) if (T_ >= 256)
  for (int t = 0; t < T_; ++t) {
    float* o = out + int64_t(t) * h_;
    const float* xt = x_.data() + int64_t(t) * h_;
    std::memset(o, 0, sizeof(float) * h_);
    for (int j = 0; j < k_; ++j) {
      const int64_t a = int64_t(t) * k_ + j, i = pos_[a];
      if (i < 0) continue;
      const float w = weight_[a];
      const float* yr = returned_.data() + i * h_;
      const float* c = centroid_.data() + i * h_;
      if (compensate) {
        for (int q = 0; q < h_; ++q) o[q] += w * (yr[q] + (xt[q] - c[q]));
      } else {
        for (int q = 0; q < h_; ++q) o[q] += w * yr[q];
      }
    }
  }
}

void LshDispatcher::combine_backward(float* dy, float* dweight, const float* dout) {
  grow(recv_, size_t(R_) * h_);
  grow(dsum_, size_t(C_) * h_);
  grow(rgrad_, size_t(T_) * h_);
  // dweight_a = dout_t · (y_b + x_t − c_b); the residual path's w_a·dout_t per token. Without
  // compensation: dweight_a = dout_t · y_b and no residual path.
  const bool compensate = lsh_.config().compensate;
#pragma omp parallel for schedule(static) if (T_ >= 256)
  for (int t = 0; t < T_; ++t) {
    const float* g = dout + int64_t(t) * h_;
    const float* xt = x_.data() + int64_t(t) * h_;
    float* rg = rgrad_.data() + int64_t(t) * h_;
    if (has_residual_[t]) std::memset(rg, 0, sizeof(float) * h_);
    for (int j = 0; j < k_; ++j) {
      const int64_t a = int64_t(t) * k_ + j, i = pos_[a];
      if (i < 0) {
        dweight[a] = 0;
        continue;
      }
      const float* yr = returned_.data() + i * h_;
      const float* c = centroid_.data() + i * h_;
      const float w = weight_[a];
      double dot = 0;
      if (compensate) {
        for (int q = 0; q < h_; ++q) dot += double(g[q]) * (yr[q] + (xt[q] - c[q]));
      } else {
        for (int q = 0; q < h_; ++q) dot += double(g[q]) * yr[q];
      }
      dweight[a] = float(dot);
      if (compensate && count_[i] > 1) {
        for (int q = 0; q < h_; ++q) rg[q] += w * g[q];
      }
    }
  }
  // dy_b = Σ_{a ∈ b} w_a·dout_t, summed in (t, j) order (a bucket of one: exactly w·dout).
  if (C_ > 0) std::memset(dsum_.data(), 0, sizeof(float) * size_t(C_) * h_);
  for (int64_t m = 0; m < M_; ++m) {
    const int64_t t = kept_tok_[m], i = kept_cen_[m];
    const float w = kept_w_[m];
    const float* g = dout + t * h_;
    float* s = dsum_.data() + i * h_;
    for (int q = 0; q < h_; ++q) s[q] += w * g[q];
  }
  count_bytes(xch_.send(dsum_.data(), recv_.data(), &stats_.backward_a2a_ms));
  xch_.to_expert_layout(dy, recv_.data());
}

size_t LshDispatcher::stash_bytes() const {
  const int64_t A = int64_t(T_) * k_;
  return sizeof(float) * (size_t(A) + size_t(T_) * h_ + size_t(2 * C_ + R_) * h_) +
         sizeof(int64_t) * size_t(A + 2 * M_ + C_) + sizeof(float) * size_t(M_) + size_t(T_);
}

}  // namespace grove::parallel
