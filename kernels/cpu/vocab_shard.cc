// Vocabulary-shard embedding and cross-entropy (kernels/cpu/ops.h): the kernels of the
// vocabulary-parallel embedding and loss (parallel/vocab_parallel.h, docs/tensor_parallel.md).
// This rank owns the ids [vocab_start, vocab_start + V) of the table rows / logit columns.
//
// The sums run in T in index order (std::exp, no SIMD reduction), so a result depends only on its
// row's values, never on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"

namespace grove::cpu {

namespace {
// The shard-local id of a global id, or -1 when this shard does not own it.
inline int local_id(int32_t id, int vocab_start, int V) {
  const int64_t local = int64_t{id} - vocab_start;
  return id >= 0 && local >= 0 && local < V ? static_cast<int>(local) : -1;
}
}  // namespace

template <typename T>
void embedding_forward_shard(T* out, const int32_t* tokens, const T* table, int N, int C,
                             int vocab_start, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    T* row = out + int64_t(n) * C;
    const int id = local_id(tokens[n], vocab_start, V);
    if (id >= 0)
      std::memcpy(row, table + int64_t(id) * C, sizeof(T) * C);
    else
      std::memset(row, 0, sizeof(T) * C);
  }
}

template <typename T>
void embedding_backward_shard(T* dtable, const T* dout, const int32_t* tokens, int N, int C,
                              int vocab_start, int V) {
  // Sequential over tokens: an id can repeat, and a fixed order keeps the sum reproducible.
  for (int n = 0; n < N; ++n) {
    const int id = local_id(tokens[n], vocab_start, V);
    if (id < 0) continue;
    T* row = dtable + int64_t(id) * C;
    const T* g = dout + int64_t(n) * C;
    for (int c = 0; c < C; ++c) row[c] += g[c];
  }
}

template <typename T>
void cross_entropy_shard_max(T* row_max, const T* logits, int N, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = logits + int64_t(n) * V;
    T m = -std::numeric_limits<T>::infinity();
    for (int j = 0; j < V; ++j) m = std::max(m, x[j]);
    row_max[n] = m;
  }
}

template <typename T>
void cross_entropy_shard_sums(T* packed, const T* logits, const T* row_max, const int32_t* targets,
                              int N, int V, int vocab_start) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = logits + int64_t(n) * V;
    const T m = row_max[n];
    T sum = 0;
    for (int j = 0; j < V; ++j) sum += std::exp(x[j] - m);
    packed[n] = sum;
    const int id = local_id(targets[n], vocab_start, V);
    packed[N + n] = id >= 0 ? x[id] : T(0);
  }
}

template <typename T>
void cross_entropy_shard_finish(T* losses, T* lse, const T* row_max, const T* packed,
                                const int32_t* targets, int N) {
  for (int n = 0; n < N; ++n) {
    lse[n] = row_max[n] + std::log(packed[n]);
    losses[n] = targets[n] >= 0 ? lse[n] - packed[N + n] : T(0);
  }
}

template <typename T>
void cross_entropy_shard_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets,
                                  const T* dloss, int N, int V, int vocab_start) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* x = logits + int64_t(n) * V;
    T* d = dlogits + int64_t(n) * V;
    const T scale = targets[n] >= 0 ? dloss[n] : T(0);
    const T l = lse[n];
    for (int j = 0; j < V; ++j) d[j] = std::exp(x[j] - l) * scale;
    const int id = local_id(targets[n], vocab_start, V);
    if (id >= 0) d[id] -= scale;
  }
}

#define GROVE_INSTANTIATE(T)                                                                      \
  template void embedding_forward_shard<T>(T*, const int32_t*, const T*, int, int, int, int);     \
  template void embedding_backward_shard<T>(T*, const T*, const int32_t*, int, int, int, int);    \
  template void cross_entropy_shard_max<T>(T*, const T*, int, int);                               \
  template void cross_entropy_shard_sums<T>(T*, const T*, const T*, const int32_t*, int, int,     \
                                            int);                                                 \
  template void cross_entropy_shard_finish<T>(T*, T*, const T*, const T*, const int32_t*, int);   \
  template void cross_entropy_shard_backward<T>(T*, const T*, const T*, const int32_t*, const T*, \
                                                int, int, int);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
#undef GROVE_INSTANTIATE

}  // namespace grove::cpu
