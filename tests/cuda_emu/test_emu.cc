// The CUDA emulator itself (emu.h): WMMA against a plain matrix product in every operand layout,
// a missing __syncthreads shows up, a divergent one is reported, launches enforce the
// shared-memory limits, static shared memory is per block and starts as NaN, shuffles follow
// their definitions, and host pointers given as device memory are reported.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tests/cuda_emu/emu.h"

namespace {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;

// d = a b + c for one 16x16x16 tile; a in layout LA, b in LB, c row-major, d column-major.
template <typename LA, typename LB>
void mma_kernel(float* d, const bf16* a, const bf16* b, const float* c) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, LA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, LB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, 16, wmma::mem_col_major);
}

template <typename LA, typename LB>
void check_mma() {
  constexpr bool a_row = std::is_same_v<LA, wmma::row_major>;
  constexpr bool b_row = std::is_same_v<LB, wmma::row_major>;
  // Small integers: every product and sum is exact in fp32, so the result must be exact.
  alignas(32) bf16 a[256], b[256];
  alignas(32) float c[256], d[256];
  double A[16][16], B[16][16];
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 16; ++k) {
      A[r][k] = (r * 7 + k * 3) % 9 - 4;
      B[r][k] = (r * 5 + k * 11) % 7 - 3;
      a[a_row ? r * 16 + k : k * 16 + r] = __float2bfloat16_rn(static_cast<float>(A[r][k]));
      b[b_row ? r * 16 + k : k * 16 + r] = __float2bfloat16_rn(static_cast<float>(B[r][k]));
      c[r * 16 + k] = static_cast<float>(r - k);
    }
  const emu::AsDevice dev_a(a, sizeof a), dev_b(b, sizeof b), dev_c(c, sizeof c),
      dev_d(d, sizeof d);
  emu::Launch(mma_kernel<LA, LB>, 1, 32)(d, a, b, c);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col) {
      double want = r - col;
      for (int k = 0; k < 16; ++k) want += A[r][k] * B[k][col];
      ASSERT_EQ(d[col * 16 + r], want) << "row " << r << " col " << col;
    }
}

TEST(CudaEmu, MmaMatchesMatrixProductInEveryLayout) {
  check_mma<wmma::row_major, wmma::row_major>();
  check_mma<wmma::row_major, wmma::col_major>();
  check_mma<wmma::col_major, wmma::row_major>();
  check_mma<wmma::col_major, wmma::col_major>();
}

// The flash-attention loop shape: per iteration the block loads a tile (one element per thread),
// then each warp reads it over several warp-synchronous steps. Without the __syncthreads at the
// top, a warp that is ahead overwrites the tile while a slower warp still reads it.
constexpr int kThreads = 128, kIters = 6, kSteps = 8;
void tile_loop_kernel(float* out, bool sync_before_load) {
  float* tile = reinterpret_cast<float*>(emu::smem());
  const int t = static_cast<int>(threadIdx.x);
  for (int it = 0; it < kIters; ++it) {
    if (sync_before_load) __syncthreads();
    tile[t] = static_cast<float>(it * 1000 + t);
    __syncthreads();
    float acc = 0.f;
    for (int step = 0; step < kSteps; ++step) {
      acc += tile[(t + 32 * step + 7) % kThreads];
      __syncwarp();
    }
    out[it * kThreads + t] = acc;
  }
}

std::vector<float> run_tile_loop(bool sync_before_load, uint64_t seed) {
  std::vector<float> out(kIters * kThreads);
  emu::set_schedule_seed(seed);
  const emu::AsDevice dev_out(out.data(), out.size() * sizeof(float));
  emu::Launch(tile_loop_kernel, 1, kThreads, kThreads * sizeof(float))(out.data(),
                                                                       sync_before_load);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  return out;
}

TEST(CudaEmu, MissingSyncthreadsChangesTheResult) {
  std::vector<float> want(kIters * kThreads);
  for (int it = 0; it < kIters; ++it)
    for (int t = 0; t < kThreads; ++t)
      for (int step = 0; step < kSteps; ++step)
        want[it * kThreads + t] += static_cast<float>(it * 1000 + (t + 32 * step + 7) % kThreads);
  for (uint64_t seed : {1, 2, 3}) {
    EXPECT_EQ(run_tile_loop(true, seed), want) << "seed " << seed;
    EXPECT_NE(run_tile_loop(false, seed), want) << "seed " << seed;
  }
}

void divergent_kernel(int) {
  if (threadIdx.x < 32) __syncthreads();
}
TEST(CudaEmuDeathTest, DivergentSyncthreadsIsADeadlock) {
  EXPECT_DEATH(emu::Launch(divergent_kernel, 1, 64)(0), "deadlock");
}

void mixed_collectives_kernel(int) {
  if (threadIdx.x == 3) {
    __syncwarp();
  } else {
    float x = 1.f;
    x = __shfl_xor_sync(0xffffffffu, x, 1);
    (void)x;
  }
}
TEST(CudaEmuDeathTest, LanesMustMakeTheSameWarpCall) {
  EXPECT_DEATH(emu::Launch(mixed_collectives_kernel, 1, 32)(0), "different warp-synchronous");
}

void noop_kernel(int) {}
TEST(CudaEmu, SharedMemoryAboveTheDefaultNeedsTheOptIn) {
  emu::Launch(noop_kernel, 1, 32, 64 << 10)(0);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  ASSERT_EQ(
      cudaFuncSetAttribute(noop_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10),
      cudaSuccess);
  emu::Launch(noop_kernel, 1, 32, 64 << 10)(0);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(
      cudaFuncSetAttribute(noop_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 << 10),
      cudaErrorInvalidValue);
  emu::Launch(noop_kernel, 1, 2048)(0);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
}

// Static __shared__ as the rewrite leaves it: one variable for the block, NaN until written in
// every block; 2-D blocks form warps from the linear index.
void static_shared_kernel(float* out) {
  static float tile[2][32];
  EMU_SHARED(tile);
  const unsigned t = threadIdx.y * 32 + threadIdx.x;  // blockDim (32, 2)
  if (threadIdx.y == 0) tile[0][threadIdx.x] = static_cast<float>(blockIdx.x);
  __syncthreads();
  out[blockIdx.x * 64 + t] = tile[threadIdx.y][threadIdx.x] + static_cast<float>(emu::lane());
}
TEST(CudaEmu, StaticSharedMemoryIsPerBlockAndStartsAsNaN) {
  std::vector<float> out(3 * 64);
  const emu::AsDevice dev(out.data(), out.size() * sizeof(float));
  emu::Launch(static_shared_kernel, 3, dim3(32, 2))(out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 64; ++t) {
      if (t < 32)
        EXPECT_EQ(out[b * 64 + t], b + t) << "block " << b << " thread " << t;
      else
        EXPECT_TRUE(std::isnan(out[b * 64 + t])) << "block " << b << " thread " << t;
    }
}

// Every shuffle, with a segment width of 16: the source lane, or the caller's own value where the
// source is outside its segment.
void shuffle_kernel(int* out) {
  const int l = emu::lane(), v = 100 + l;
  out[0 * 32 + l] = __shfl_sync(0xffffffffu, v, 3, 16);
  out[1 * 32 + l] = __shfl_up_sync(0xffffffffu, v, 2, 16);
  out[2 * 32 + l] = __shfl_down_sync(0xffffffffu, v, 2, 16);
  out[3 * 32 + l] = __shfl_xor_sync(0xffffffffu, v, 5);
  const double d = __shfl_down_sync(0xffffffffu, 0.5 + l, 1);
  out[4 * 32 + l] = static_cast<int>(d * 2);
}
TEST(CudaEmu, ShufflesFollowTheirDefinitions) {
  std::vector<int> out(5 * 32);
  const emu::AsDevice dev(out.data(), out.size() * sizeof(int));
  emu::Launch(shuffle_kernel, 1, 32)(out.data());
  for (int l = 0; l < 32; ++l) {
    const int seg = l & ~15, in = l & 15;
    EXPECT_EQ(out[l], 100 + seg + 3) << l;
    EXPECT_EQ(out[32 + l], 100 + (in >= 2 ? l - 2 : l)) << l;
    EXPECT_EQ(out[64 + l], 100 + (in + 2 < 16 ? l + 2 : l)) << l;
    EXPECT_EQ(out[96 + l], 100 + (l ^ 5)) << l;
    EXPECT_EQ(out[128 + l], 2 * (l < 31 ? l + 1 : l) + 1) << l;
  }
}

void write_kernel(float* out) {
  out[threadIdx.x] = 1.f;
}
TEST(CudaEmuDeathTest, HostPointerToAKernelIsReported) {
  std::vector<float> host(32);
  EXPECT_DEATH(emu::Launch(write_kernel, 1, 32)(host.data()), "not device memory");
}

TEST(CudaEmu, CopiesCheckWhichSideIsDeviceMemory) {
  float* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 4 * sizeof(float)), cudaSuccess);
  float host[4] = {1, 2, 3, 4};
  EXPECT_EQ(cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(host, dev, sizeof host, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(dev, host, 5 * sizeof(float), cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);  // past the allocation
  cudaGetLastError();
  EXPECT_EQ(cudaFree(dev), cudaSuccess);
  EXPECT_EQ(cudaFree(dev), cudaErrorInvalidValue);  // freed twice
  cudaGetLastError();
}

}  // namespace
