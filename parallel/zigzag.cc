#include "parallel/zigzag.h"

#include "kernels/cpu/ops.h"

namespace grove::parallel {

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

}  // namespace grove::parallel
