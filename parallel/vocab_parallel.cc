#include "parallel/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/status.h"
#include "parallel/tensor_parallel.h"

namespace grove::parallel {

VocabParallelEmbedding::VocabParallelEmbedding(int vocab, int dim, const comm::Communicator* tp)
    : dim_(dim) {
  const int t = tp_size(tp);
  GROVE_CHECK(vocab % t == 0) << "vocab-parallel embedding: tp=" << t
                              << " does not divide the vocabulary of " << vocab;
  local_ = vocab / t;
  start_ = tp_rank(tp) * local_;
}

void VocabParallelEmbedding::forward(float* partial, const int32_t* tokens, const float* table,
                                     int N) const {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* out = partial + int64_t(n) * dim_;
    const int id = tokens[n] - start_;
    if (id >= 0 && id < local_)
      std::memcpy(out, table + int64_t(id) * dim_, sizeof(float) * dim_);
    else
      std::memset(out, 0, sizeof(float) * dim_);
  }
}

void VocabParallelEmbedding::backward(float* dtable, const float* dout, const int32_t* tokens,
                                      int N) const {
  // Sequential over tokens: a token id can repeat, and a fixed order keeps the sum reproducible.
  for (int n = 0; n < N; ++n) {
    const int id = tokens[n] - start_;
    if (id < 0 || id >= local_) continue;
    float* row = dtable + int64_t(id) * dim_;
    const float* g = dout + int64_t(n) * dim_;
    for (int c = 0; c < dim_; ++c) row[c] += g[c];
  }
}

void vocab_parallel_cross_entropy_forward(comm::Communicator* tp, float* losses, float* lse,
                                          const float* logits, const int32_t* targets, int N,
                                          int local_vocab, int vocab_start, float* scratch) {
  float* row_max = scratch;     // [N]
  float* packed = scratch + N;  // [2N]: exp-sum | target logit
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = logits + int64_t(n) * local_vocab;
    float m = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < local_vocab; ++j) m = std::max(m, x[j]);
    row_max[n] = m;
  }
  if (tp && tp->size() > 1) tp->all_reduce(row_max, N, DType::kF32, comm::ReduceOp::kMax);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = logits + int64_t(n) * local_vocab;
    const float m = row_max[n];
    float sum = 0.0f;
    for (int j = 0; j < local_vocab; ++j) sum += std::exp(x[j] - m);
    packed[n] = sum;
    const int id = targets[n] - vocab_start;
    packed[N + n] = (targets[n] >= 0 && id >= 0 && id < local_vocab) ? x[id] : 0.0f;
  }
  if (tp && tp->size() > 1) tp->all_reduce(packed, 2 * N, DType::kF32, comm::ReduceOp::kSum);
  for (int n = 0; n < N; ++n) {
    lse[n] = row_max[n] + std::log(packed[n]);
    losses[n] = targets[n] >= 0 ? lse[n] - packed[N + n] : 0.0f;
  }
}

void vocab_parallel_cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                                           const int32_t* targets, const float* dloss, int N,
                                           int local_vocab, int vocab_start) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = logits + int64_t(n) * local_vocab;
    float* d = dlogits + int64_t(n) * local_vocab;
    const float scale = targets[n] >= 0 ? dloss[n] : 0.0f;
    const float l = lse[n];
    for (int j = 0; j < local_vocab; ++j) d[j] = std::exp(x[j] - l) * scale;
    const int id = targets[n] - vocab_start;
    if (targets[n] >= 0 && id >= 0 && id < local_vocab) d[id] -= scale;
  }
}

}  // namespace grove::parallel
