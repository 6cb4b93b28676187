#include "parallel/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/status.h"
#include "kernels/cpu/ops.h"
#include "parallel/tree_attention.h"

namespace grove::parallel {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kTagK = 0, kTagV = 1;
}  // namespace

ShardedKvCache::ShardedKvCache(int cp_size, int cp_rank, int layers, int B, int NKV, int HD,
                               int capacity)
    : p_(cp_size), rank_(cp_rank), B_(B), NKV_(NKV), HD_(HD), capacity_(capacity) {
  GROVE_CHECK(p_ >= 1 && rank_ >= 0 && rank_ < p_)
      << "kv cache: cp rank " << rank_ << " out of range for cp=" << p_;
  GROVE_CHECK(capacity >= 0) << "kv cache: negative capacity " << capacity;
  local_cap_ = (capacity + p_ - 1) / p_;
  for (int l = 0; l < layers; ++l) {
    k_.push_back(Tensor::zeros({local_cap_, B, NKV, HD}));
    v_.push_back(Tensor::zeros({local_cap_, B, NKV, HD}));
  }
}

int ShardedKvCache::begin_token() {
  GROVE_CHECK(len_ < capacity_) << "kv cache: the context is full (" << capacity_
                                << " tokens); raise the capacity";
  return len_++;
}

void ShardedKvCache::store(int layer, int pos, const float* k, const float* v) {
  GROVE_CHECK(pos >= 0 && pos < len_) << "kv cache: position " << pos << " was not opened";
  if (owner(pos) != rank_) return;
  const int64_t row = int64_t(B_) * NKV_ * HD_, i = pos / p_;
  std::memcpy(k_[layer].data<float>() + i * row, k, sizeof(float) * row);
  std::memcpy(v_[layer].data<float>() + i * row, v, sizeof(float) * row);
}

void ShardedKvCache::resize(int n) {
  GROVE_CHECK(n >= 0 && n <= capacity_)
      << "kv cache: length " << n << " exceeds the capacity " << capacity_;
  len_ = n;
}

int64_t ShardedKvCache::bytes() const {
  int64_t b = 0;
  for (size_t l = 0; l < k_.size(); ++l) b += k_[l].bytes() + v_[l].bytes();
  return b;
}

DecodeAttention::DecodeAttention(CpAttention algo, comm::Communicator* cp,
                                 const ShardedKvCache& cache, int NH)
    : algo_(algo),
      cp_(cp),
      p_(cp ? cp->size() : 1),
      rank_(cp ? cp->rank() : 0),
      B_(cache.B()),
      NH_(NH),
      NKV_(cache.NKV()),
      HD_(cache.HD()) {
  const int p = p_;
  GROVE_CHECK(cache.cp_size() == p && cache.cp_rank() == rank_)
      << "decode attention: the cache is laid out for cp rank " << cache.cp_rank() << " of "
      << cache.cp_size() << ", the group is rank " << rank_ << " of " << p;
  GROVE_CHECK(NKV_ > 0 && NH % NKV_ == 0)
      << "decode attention: " << NKV_ << " kv heads do not divide " << NH << " heads";
  const int64_t bh = int64_t(B_) * NH_, bhd = bh * HD_;
  const int64_t kv_block = int64_t(cache.local_capacity()) * B_ * NKV_ * HD_;
  const int64_t scratch = std::max(tree_combine_scratch_elems(bh, HD_), bhd + bh);
  const int64_t blocks = algo == CpAttention::kRing ? 4 * kv_block : 0;
  // Tree keeps one partial; ring keeps one per source rank (merged in rank order).
  const int parts = algo == CpAttention::kRing ? p : 1;
  ws_ = Tensor::empty({bhd + parts * (bhd + bh) + bh + scratch + blocks});
  float* w = ws_.data<float>();
  q_ = w;
  o_ = q_ + bhd;
  lp_ = o_ + parts * bhd;
  lse_ = lp_ + parts * bh;
  scratch_ = lse_ + bh;
  blocks_ = algo == CpAttention::kRing ? scratch_ + scratch : nullptr;
}

void DecodeAttention::local_partial(float* o, float* lse, const float* q, const float* k,
                                    const float* v, int rows) {
  const int64_t bh = int64_t(B_) * NH_;
  if (rows == 0) {  // empty shard: the neutral partial
    std::fill(o, o + bh * HD_, 0.0f);
    std::fill(lse, lse + bh, kNegInf);
    return;
  }
  // q [1, B, NH, HD] against rows cached tokens, no mask; lse [B, NH, 1].
  cpu::AttentionShape shape{1, rows, B_, NH_, NKV_, HD_, /*causal=*/false};
  cpu::attention_forward<float>(o, lse, nullptr, q, k, v, shape);
}

void DecodeAttention::forward(float* out, const float* q, const ShardedKvCache& cache, int layer) {
  const int64_t bhd = int64_t(B_) * NH_ * HD_;
  std::memcpy(q_, q, sizeof(float) * bhd);
  if (p_ > 1) {
    cp_->broadcast(q_, bhd, DType::kF32, 0);
    stats_.broadcast(p_, bhd);
  }
  if (algo_ == CpAttention::kTree)
    forward_tree(out, cache, layer);
  else
    forward_ring(out, cache, layer);
}

void DecodeAttention::forward_tree(float* out, const ShardedKvCache& cache, int layer) {
  const int64_t bh = int64_t(B_) * NH_;
  local_partial(o_, lp_, q_, cache.k(layer), cache.v(layer), cache.local_length());
  if (p_ > 1) tree_combine(*cp_, o_, lp_, bh, HD_, scratch_, &stats_);
  std::memcpy(out, o_, sizeof(float) * bh * HD_);
  std::memcpy(lse_, lp_, sizeof(float) * bh);
}

void DecodeAttention::forward_ring(float* out, const ShardedKvCache& cache, int layer) {
  const int p = p_, r = rank_;
  const int64_t bh = int64_t(B_) * NH_, bhd = bh * HD_;
  const int64_t row = int64_t(B_) * NKV_ * HD_, block = cache.local_capacity() * row;
  float* kb[2] = {blocks_, blocks_ + 2 * block};
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  const float* ck = cache.k(layer);
  const float* cv = cache.v(layer);
  for (int t = 0; t < p; ++t) {
    const int src = (r - t + p) % p, rows = cache.local_length_of(src);
    comm::Work sk, sv, rk, rv;
    if (t < p - 1) {  // pass the block in hand on, receive the next while computing
      const int in_rows = cache.local_length_of((src + p - 1) % p);
      float* nk = kb[(t + 1) % 2];
      sk = cp_->send_async(ck, rows * row, DType::kF32, next, kTagK);
      sv = cp_->send_async(cv, rows * row, DType::kF32, next, kTagV);
      rk = cp_->recv_async(nk, in_rows * row, DType::kF32, prev, kTagK);
      rv = cp_->recv_async(nk + block, in_rows * row, DType::kF32, prev, kTagV);
      stats_.send(2 * rows * row);
    }
    local_partial(o_ + src * bhd, lp_ + src * bh, q_, ck, cv, rows);
    sk.wait();
    sv.wait();
    rk.wait();
    rv.wait();
    ck = kb[(t + 1) % 2];
    cv = ck + block;
  }
  // Merge in source-rank order: the same arithmetic on every rank.
  std::fill(out, out + bhd, 0.0f);
  std::fill(lse_, lse_ + bh, kNegInf);
  // One query row: out [1, B, NH, HD], lse [B, NH, 1].
  for (int src = 0; src < p; ++src)
    cpu::attention_merge<float>(out, lse_, o_ + src * bhd, lp_ + src * bh, 1, B_, NH_, HD_, 0, 1);
}

}  // namespace grove::parallel
