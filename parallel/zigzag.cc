#include "parallel/zigzag.h"

#include <cstring>

#include "core/status.h"
#include "kernels/cpu/ops.h"

namespace grove::parallel {

Zigzag::Zigzag(int S_, int p_, int rank_) : S(S_), p(p_), rank(rank_) {
  GROVE_CHECK(p >= 1 && rank >= 0 && rank < p)
      << "zigzag layout: rank " << rank << " out of range for cp=" << p;
  GROVE_CHECK(S > 0 && S % (2 * p) == 0)
      << "zigzag layout: sequence " << S << " is not a multiple of 2*cp = " << 2 * p;
}

int Zigzag::position(int i) const {
  const int c = chunk();
  return i < c ? chunk_pos0(0) + i : chunk_pos0(1) + (i - c);
}

std::vector<int32_t> Zigzag::positions() const {
  std::vector<int32_t> pos(local_rows());
  for (int i = 0; i < local_rows(); ++i) pos[i] = position(i);
  return pos;
}

template <typename T>
void zigzag_shard(T* shard, const T* full, const Zigzag& z, int64_t row_elems) {
  const int64_t chunk_elems = int64_t(z.chunk()) * row_elems;
  for (int half = 0; half < 2; ++half)
    std::memcpy(shard + half * chunk_elems, full + z.chunk_index(half) * chunk_elems,
                sizeof(T) * chunk_elems);
}

template <typename T>
void zigzag_unshard(T* full, const T* shards, int S, int p, int64_t row_elems) {
  const Zigzag z0(S, p, 0);
  const int64_t chunk_elems = int64_t(z0.chunk()) * row_elems;
  for (int r = 0; r < p; ++r) {
    const Zigzag z = z0.of_rank(r);
    const T* shard = shards + int64_t(r) * 2 * chunk_elems;
    for (int half = 0; half < 2; ++half)
      std::memcpy(full + z.chunk_index(half) * chunk_elems, shard + half * chunk_elems,
                  sizeof(T) * chunk_elems);
  }
}

void zigzag_all_gather(comm::Communicator& cp, const float* shard, float* full, float* scratch,
                       int S, int64_t row_elems) {
  const int p = cp.size();
  cp.all_gather(shard, scratch, int64_t(S / p) * row_elems, DType::kF32);
  zigzag_unshard(full, scratch, S, p, row_elems);
}

void zigzag_rope_forward(float* x, const float* cos_table, const float* sin_table, const Zigzag& z,
                         int B, int NHx, int HD) {
  const int64_t chunk_elems = int64_t(z.chunk()) * B * NHx * HD;
  for (int half = 0; half < 2; ++half)
    cpu::rope_forward(x + half * chunk_elems, cos_table, sin_table, z.chunk(), B, NHx, HD,
                      z.chunk_pos0(half));
}

void zigzag_rope_backward(float* dx, const float* cos_table, const float* sin_table,
                          const Zigzag& z, int B, int NHx, int HD) {
  const int64_t chunk_elems = int64_t(z.chunk()) * B * NHx * HD;
  for (int half = 0; half < 2; ++half)
    cpu::rope_backward(dx + half * chunk_elems, cos_table, sin_table, z.chunk(), B, NHx, HD,
                       z.chunk_pos0(half));
}

#define GROVE_INSTANTIATE(T)                                           \
  template void zigzag_shard<T>(T*, const T*, const Zigzag&, int64_t); \
  template void zigzag_unshard<T>(T*, const T*, int, int, int64_t);
GROVE_INSTANTIATE(float)
GROVE_INSTANTIATE(double)
GROVE_INSTANTIATE(int32_t)
#undef GROVE_INSTANTIATE

}  // namespace grove::parallel
