// LshCompressor: cross-polytope locality-sensitive hashing of token rows, and the centroid
// compression built on it (docs/lsh.md; LSH-MoE, NeurIPS'24). The LshDispatcher
// (lsh_dispatcher.h) uses it per destination expert.
//
// Legend: h model dim, r rotation dim (r ≤ h), L hash functions, n rows of one group (the tokens
// one rank routes to one expert), B buckets of that group (B ≤ n).
//
// Hash. Each hash function l owns a random rotation R_l [r, h]: a Gaussian matrix whose rows are
// made orthonormal by modified Gram-Schmidt in double (a random rotation of R^h followed by
// keeping r coordinates; for r = h a full Haar-distributed rotation, up to row signs). It is
// drawn from Rng(derive_seed(seed, l)), so every rank builds bit-identical rotations from the
// config alone. Chosen over the fast sign-diagonal × Hadamard product because it needs no
// power-of-two padding of h, is exactly a rotation for every r, and hashing costs L·r·h per
// token, small next to the experts' 3·h·f per (token, slot).
//   code_l(x) = 2·i + (v_i < 0),  v = R_l·x,  i = argmax_i |v_i| (ties: the lowest i)
//   id(x)     = Σ_l code_l(x) · (2r)^l            (one bucket id from the L codes)
// v is computed row by row in a fixed summation order (never a GEMM whose blocking depends on
// the batch), so the same vector has the same id on every rank and at every batch position.
//
// Compression of one group (rows x_a, a = 0..n-1, e.g. the tokens routed to one expert):
//   bucket b(a)  rows with the same id, numbered in order of their first row (a bucket of one
//                row keeps that row's position, so with n buckets the order is the input order)
//   count[b]     = |{a : b(a) = b}|
//   c[b]         = (1/count[b]) · Σ_{a: b(a)=b} x_a          (centroid; summed in double)
//   residual_a   = x_a − c[b(a)]                            (kept on the sending rank)
// Backward of the centroid (the mean): dx_a += dc[b(a)] / count[b(a)].
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "spec/moe_options.h"

namespace grove::parallel {

class LshCompressor {
 public:
  // cfg must be valid for h (Validate).
  LshCompressor(const LshOptions& cfg, int h);

  const LshOptions& config() const { return cfg_; }
  int h() const { return h_; }

  // The bucket id of one row x[h].
  uint64_t hash(const float* x) const;
  // ids[T] for rows x[T, h].
  void hash(uint64_t* ids, const float* x, int64_t T) const;
  // The L·r projections R·x of one row (v[l·r + i] = (R_l x)_i), as hash() computes them.
  void project(float* v, const float* x) const;

  // Buckets of one group from the ids of its n rows: bucket[a] (written) in first-appearance
  // order; returns B. Not thread-safe (reuses a map).
  int64_t bucketize(int64_t* bucket, const uint64_t* ids, int64_t n);

  // The rotations, [L, r, h] row-major (tests, and to check that ranks agree).
  const std::vector<float>& rotations() const { return rot_; }

 private:
  LshOptions cfg_;
  int h_, r_, L_;
  std::vector<float> rot_;   // [L, r, h]
  std::vector<float> rotT_;  // [h, L·r]: the same, laid out for the row-by-row projection
  std::unordered_map<uint64_t, int64_t> map_;
};

// ---- centroids: forward and backward --------------------------------------------------------
// c[B, h] (written) and count[B] (written) for rows x[n, h] with buckets bucket[n] in [0, B).
// Rows are read as x + row[a]·h when row is not null (gather from a token array), else x + a·h.
// acc[B, h]: caller's scratch (the sums, in double, in row order a = 0..n-1).
void centroid_forward(float* c, int64_t* count, double* acc, const float* x, const int64_t* row,
                      const int64_t* bucket, int64_t n, int64_t B, int h);
// dx rows += dc[bucket[a]] / count[bucket[a]] (same addressing as the forward).
void centroid_backward(float* dx, const float* dc, const int64_t* count, const int64_t* row,
                       const int64_t* bucket, int64_t n, int h);

}  // namespace grove::parallel
