// The definitions of the sharded KV cache and decode attention on a kernel backend
// (parallel/kv_cache.h) and of the decoding tree combine (parallel/tree_attention.h), included by
// the translation units that instantiate a backend: parallel/kv_cache.cc (CpuBackend) and
// model/cuda/cuda_generate.cc (CudaBackend<float>). Every buffer is in B's memory; the host only
// loops over ranks.
#pragma once

#include <algorithm>
#include <climits>
#include <limits>

#include "core/status.h"
#include "parallel/backend_collectives.h"
#include "parallel/kv_cache.h"
#include "parallel/tree_attention.h"

namespace grove::parallel {

// The decoding combine (the training algorithms: parallel/cp_attention_impl.h) is the kernels'
// merge in its collective form: attention_merge_scale (num = o·e^{lse − M}, den = e^{lse − M}; 0
// for an empty partial) before the SUM, attention_merge_finish (out = num / den,
// lse = M + log den) after it.
template <class Backend>
void tree_combine(comm::Communicator& cp, float* o, float* lse, int64_t rows, int HD,
                  float* scratch, CommStats* stats) {
  const int p = cp.size();
  float* m = scratch;            // [rows]
  float* num = scratch + rows;   // [rows, HD]
  float* den = num + rows * HD;  // [rows]
  Backend::copy(m, lse, sizeof(float) * rows);
  all_reduce<Backend>(&cp, m, rows, DType::kF32, comm::ReduceOp::kMax);
  // rows of HD values: the kernels' layout with SQ = rows, B = NH = 1.
  GROVE_CHECK(rows <= INT_MAX) << "tree_combine: rows=" << rows << " exceeds int";
  Backend::attention_merge_scale(num, den, o, lse, m, int(rows), 1, 1, HD);
  all_reduce<Backend>(&cp, num, rows * (HD + 1), DType::kF32, comm::ReduceOp::kSum);
  if (stats) {
    stats->all_reduce(p, rows);
    stats->all_reduce(p, rows * (HD + 1));
  }
  Backend::attention_merge_finish(o, lse, num, den, m, int(rows), 1, 1, HD);
}

template <class Backend>
ShardedKvCacheT<Backend>::ShardedKvCacheT(int cp_size, int cp_rank, int layers, int batch, int NKV,
                                          int HD, int capacity, bool values_are_keys)
    : p_(cp_size),
      rank_(cp_rank),
      B_(batch),
      NKV_(NKV),
      HD_(HD),
      capacity_(capacity),
      shared_(values_are_keys) {
  GROVE_CHECK(p_ >= 1 && rank_ >= 0 && rank_ < p_)
      << "kv cache: cp rank " << rank_ << " out of range for cp=" << p_;
  GROVE_CHECK(capacity >= 0) << "kv cache: negative capacity " << capacity;
  local_cap_ = (capacity + p_ - 1) / p_;
  for (int l = 0; l < layers; ++l) {
    k_.push_back(Tensor::zeros({local_cap_, batch, NKV, HD}, DType::kF32, Backend::kDevice));
    if (!shared_)
      v_.push_back(Tensor::zeros({local_cap_, batch, NKV, HD}, DType::kF32, Backend::kDevice));
  }
}

template <class Backend>
int ShardedKvCacheT<Backend>::begin_token() {
  GROVE_CHECK(len_ < capacity_) << "kv cache: the context is full (" << capacity_
                                << " tokens); raise the capacity";
  return len_++;
}

template <class Backend>
void ShardedKvCacheT<Backend>::store(int layer, int pos, const float* k, const float* v) {
  GROVE_CHECK(pos >= 0 && pos < len_) << "kv cache: position " << pos << " was not opened";
  if (owner(pos) != rank_) return;
  const int64_t row = int64_t(B_) * NKV_ * HD_, i = pos / p_;
  Backend::copy(this->k(layer) + i * row, k, sizeof(float) * row);
  if (!shared_) Backend::copy(this->v(layer) + i * row, v, sizeof(float) * row);
}

template <class Backend>
void ShardedKvCacheT<Backend>::resize(int n) {
  GROVE_CHECK(n >= 0 && n <= capacity_)
      << "kv cache: length " << n << " exceeds the capacity " << capacity_;
  len_ = n;
}

template <class Backend>
int64_t ShardedKvCacheT<Backend>::bytes() const {
  int64_t b = 0;
  for (const Tensor& t : k_) b += t.bytes();
  for (const Tensor& t : v_) b += t.bytes();
  return b;
}

template <class Backend>
DecodeAttentionT<Backend>::DecodeAttentionT(CpAttention algo, comm::Communicator* cp,
                                            const ShardedKvCacheT<Backend>& cache, int NH)
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
  ws_ = Tensor::empty({bhd + parts * (bhd + bh) + bh + scratch + blocks}, DType::kF32,
                      Backend::kDevice);
  float* w = ws_.data<float>();
  q_ = w;
  o_ = q_ + bhd;
  lp_ = o_ + parts * bhd;
  lse_ = lp_ + parts * bh;
  scratch_ = lse_ + bh;
  blocks_ = algo == CpAttention::kRing ? scratch_ + scratch : nullptr;
}

template <class Backend>
void DecodeAttentionT<Backend>::forward(float* out, const float* q,
                                        const ShardedKvCacheT<Backend>& cache, int layer) {
  const int64_t bhd = int64_t(B_) * NH_ * HD_;
  Backend::copy(q_, q, sizeof(float) * bhd);
  if (p_ > 1) {
    broadcast<Backend>(cp_, q_, bhd, DType::kF32, 0);
    stats_.broadcast(p_, bhd);
  }
  if (algo_ == CpAttention::kTree)
    forward_tree(out, cache, layer);
  else
    forward_ring(out, cache, layer);
}

template <class Backend>
void DecodeAttentionT<Backend>::forward_tree(float* out, const ShardedKvCacheT<Backend>& cache,
                                             int layer) {
  const int64_t bh = int64_t(B_) * NH_;
  Backend::decode_attention(o_, lp_, q_, cache.k(layer), cache.v(layer), cache.local_length(), B_,
                            NH_, NKV_, HD_);
  if (p_ > 1) tree_combine<Backend>(*cp_, o_, lp_, bh, HD_, scratch_, &stats_);
  Backend::copy(out, o_, sizeof(float) * bh * HD_);
  Backend::copy(lse_, lp_, sizeof(float) * bh);
}

template <class Backend>
void DecodeAttentionT<Backend>::forward_ring(float* out, const ShardedKvCacheT<Backend>& cache,
                                             int layer) {
  const int p = p_, r = rank_;
  const int64_t bh = int64_t(B_) * NH_, bhd = bh * HD_;
  const int64_t row = int64_t(B_) * NKV_ * HD_, block = cache.local_capacity() * row;
  float* kb[2] = {blocks_, blocks_ + 2 * block};
  const float* ck = cache.k(layer);
  const float* cv = cache.v(layer);
  const bool shared = cache.values_are_keys();  // one block per hop: the values are the keys
  for (int t = 0; t < p; ++t) {
    const int src = (r - t + p) % p, rows = cache.local_length_of(src);
    comm::Work hk, hv;
    if (t < p - 1) {  // pass the block in hand on, receive the next while computing
      const int in_rows = cache.local_length_of((src + p - 1) % p);
      float* nk = kb[(t + 1) % 2];
      hk = ring_exchange_async<Backend>(cp_, ck, rows * row, nk, in_rows * row, DType::kF32);
      if (!shared) {
        hv = ring_exchange_async<Backend>(cp_, cv, rows * row, nk + block, in_rows * row,
                                          DType::kF32);
      }
      stats_.send((shared ? 1 : 2) * rows * row);
    }
    Backend::decode_attention(o_ + src * bhd, lp_ + src * bh, q_, ck, cv, rows, B_, NH_, NKV_, HD_);
    hk.wait();
    hv.wait();
    ck = kb[(t + 1) % 2];
    cv = shared ? ck : ck + block;
  }
  // Merge in source-rank order from the neutral partial (no rows: o = 0, lse = -inf), the same
  // arithmetic on every rank. One query row: out [1, B, NH, HD], lse [B, NH, 1].
  Backend::decode_attention(out, lse_, q_, nullptr, nullptr, 0, B_, NH_, NKV_, HD_);
  for (int src = 0; src < p; ++src)
    Backend::attention_merge(out, lse_, o_ + src * bhd, lp_ + src * bh, 1, B_, NH_, HD_, 0, 1);
}

}  // namespace grove::parallel
