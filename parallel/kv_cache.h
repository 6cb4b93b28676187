// Decoding over the context-parallel (CP) group: a KV cache sharded along the sequence and the
// attention of each new token against it, with the tree combine or the ring baseline.
//
// Legend: B sequences decoded together, NH query heads, NKV key/value heads, HD head dim, L the
// number of cached tokens (the context), p CP size.
//
// ShardedKvCache: token at global position t lives on CP rank t % p, local row t / p
// (round-robin, so shards stay balanced as the context grows; rank r holds ceil((L - r) / p)
// rows, possibly none). Per layer each rank stores K and V [capacity / p (rounded up), B, NKV, HD].
// K is stored after RoPE (at the token's absolute position), so attention needs no positions:
// a decode query sees every cached token.
//
// DecodeAttention::forward: q [B, NH, HD] of the new token, broadcast from CP rank 0 so every rank
// uses the same bits; out [B, NH, HD] is the attention over all L cached tokens, identical on
// every rank.
//   tree: local partial (o, lse) → MAX all-reduce (B·NH floats) → one SUM all-reduce of the packed
//         [o·w | w] (B·NH·(HD+1) floats): payload O(B·NH·HD), independent of L.
//   ring: the K/V shards travel the ring (p-1 hops of O(L/p · B · NKV · HD)); every rank merges
//         the partials in source-rank order (so all ranks agree bit for bit).
// An empty shard (L < p, or an uneven split) contributes lse = -inf: no NaN.
//
// Backends: both classes are templates over the kernel backend (kernels/backend.h) with fp32
// activations (Backend::T = float): every buffer (the cache, the query, the partials, the ring's
// blocks) lives in the backend's memory, the local partial is Backend::decode_attention (the CUDA
// kernel kernels/cuda/decode_attention.cu on CudaBackend<float>, cpu::attention_forward on
// CpuBackend), and the combine and the ring hops go through the group on those buffers
// (parallel/backend_collectives.h: direct when the group works on the backend's memory, NCCL or the
// thread transport for device buffers, else staged through the host). Definitions in
// parallel/kv_cache_impl.h, instantiated for CpuBackend in parallel/kv_cache.cc and for
// CudaBackend<float> in model/cuda/cuda_generate.cc. ShardedKvCache / DecodeAttention are the
// host instances.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"
#include "kernels/cpu/backend.h"
#include "parallel/cp_attention.h"

namespace grove::parallel {

template <class Backend>
class ShardedKvCacheT {
 public:
  static_assert(std::is_same_v<typename Backend::T, float>, "the KV cache and decoding are fp32");
  // values_are_keys: one buffer per layer serves as K and V (v(l) == k(l), store() keeps k only):
  // MLA's latent cache, whose rows [c | k_R] are the keys and whose first r_kv columns are the
  // values (model/generate.h); the attention's output columns past r_kv are then ignored.
  ShardedKvCacheT(int cp_size, int cp_rank, int layers, int batch, int NKV, int HD, int capacity,
                  bool values_are_keys = false);

  int length() const { return len_; }  // L: tokens cached (globally)
  int capacity() const { return capacity_; }
  int cp_size() const { return p_; }
  int cp_rank() const { return rank_; }
  int B() const { return B_; }
  int NKV() const { return NKV_; }
  int HD() const { return HD_; }
  int owner(int pos) const { return pos % p_; }
  int local_length() const { return local_length_of(rank_); }
  int local_length_of(int r) const { return len_ > r ? (len_ - r + p_ - 1) / p_ : 0; }
  int local_capacity() const { return local_cap_; }
  bool values_are_keys() const { return shared_; }

  // Opens the next position (L grows by one) and returns it; every layer then stores its K/V
  // there before its attention runs. Throws when the capacity is exhausted.
  int begin_token();
  // Keeps k, v [B, NKV, HD] (the backend's memory) of the token at `pos` for `layer` when this rank
  // owns pos.
  void store(int layer, int pos, const float* k, const float* v);
  // Declares L = n tokens whose K/V the caller wrote into k(l)/v(l) directly (benchmarks).
  void resize(int n);
  void clear() { len_ = 0; }

  // [local_capacity, B, NKV, HD] in the backend's memory.
  float* k(int layer) { return k_[layer].template data<float>(); }
  float* v(int layer) { return shared_ ? k(layer) : v_[layer].template data<float>(); }
  const float* k(int layer) const { return k_[layer].template data<float>(); }
  const float* v(int layer) const { return shared_ ? k(layer) : v_[layer].template data<float>(); }
  int64_t bytes() const;

 private:
  int p_, rank_, B_, NKV_, HD_, capacity_, local_cap_;
  bool shared_ = false;
  int len_ = 0;
  std::vector<Tensor> k_, v_;
};

template <class Backend>
class DecodeAttentionT {
 public:
  // cp: the context-parallel group; nullptr means a single process (the cache's cp_size is 1).
  DecodeAttentionT(CpAttention algo, comm::Communicator* cp, const ShardedKvCacheT<Backend>& cache,
                   int NH);
  CpAttention algo() const { return algo_; }
  // out [B, NH, HD] = attention of q [B, NH, HD] (rank 0's is used) over the cache of `layer`;
  // out and q in the backend's memory.
  void forward(float* out, const float* q, const ShardedKvCacheT<Backend>& cache, int layer);
  // The lse [B, NH] of the last forward in the backend's memory (natural log; -inf when the cache
  // is empty).
  const float* lse() const { return lse_; }
  int64_t workspace_bytes() const { return static_cast<int64_t>(ws_.bytes()); }
  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  void forward_tree(float* out, const ShardedKvCacheT<Backend>& cache, int layer);
  void forward_ring(float* out, const ShardedKvCacheT<Backend>& cache, int layer);

  CpAttention algo_;
  comm::Communicator* cp_;  // null: one process
  int p_, rank_;
  int B_, NH_, NKV_, HD_;
  Tensor ws_;
  float* q_ = nullptr;    // [B, NH, HD] broadcast query
  float* o_ = nullptr;    // [p][B, NH, HD] partial per source rank (tree uses block 0)
  float* lp_ = nullptr;   // [p][B, NH]     their lse
  float* lse_ = nullptr;  // [B, NH]        combined lse
  float* scratch_ = nullptr;
  float* blocks_ = nullptr;  // ring: two [local_capacity, B, NKV, HD] K/V pairs (K only when
                             // the cache's values are its keys)
  CommStats stats_;
};

using ShardedKvCache = ShardedKvCacheT<CpuBackend>;
using DecodeAttention = DecodeAttentionT<CpuBackend>;
extern template class ShardedKvCacheT<CpuBackend>;
extern template class DecodeAttentionT<CpuBackend>;

}  // namespace grove::parallel
