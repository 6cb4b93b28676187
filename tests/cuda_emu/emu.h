// CPU emulation of the CUDA features that kernels/cuda/*.cu use, so that the GPU tests (tests/cuda,
// built again as test_cuda_*_emu and test_gpu_transformer_emu) run every kernel, the cuBLAS /
// cuBLASLt GEMMs and the GPU model on a machine without a GPU, and the trainer's GPU path
// (train.device=cuda: test_gpu_train_emu, and test_gpu_multirank_train_emu for data parallelism
// over MPI with the gradients staged through host memory) runs too. The .cu files are compiled as
// they are, apart from a mechanical rewrite done at build time (rewrite_kernel.cmake): `extern
// __shared__` arrays become emu::smem(), static `__shared__` variables become function-local
// statics (EMU_SHARED), and `kernel<<<grid, block, smem, stream>>>(args)` becomes
// `::emu::Launch(kernel, grid, block, smem, stream)(args)`.
//
// Emulated:
//  - Threads and blocks. Every CUDA thread of a block is a fiber with its own stack (a
//  register-only
//    switch on x86-64, ucontext elsewhere), all on the calling OS thread; blocks run one after
//    another. threadIdx, blockIdx, blockDim and gridDim (1-3 dimensions; warps are formed from the
//    linear thread index, x fastest) are globals set for the fiber that runs. (Fibers rather than
//    one OS thread per CUDA thread: a barrier is a function call instead of futex wake-ups of up to
//    1024 threads on two cores; runs are reproducible; a deadlock is reported instead of hanging.)
//  - __syncthreads, __syncwarp and the shuffles __shfl_sync / _xor / _up / _down of any type of
//    up to 8 bytes, with width (full mask only, checked). A fiber that reaches a barrier that is
//    not yet complete yields; the last to arrive opens it and runs on. A barrier that can never
//    open (__syncthreads in divergent code, a thread that returned while the others wait) is
//    reported as a deadlock and aborts, where a GPU would hang or misbehave. Lanes of a warp that
//    reach different warp-synchronous calls together abort too.
//  - Scheduling, chosen to expose missing barriers. Between two openings of __syncthreads (an
//    epoch) the scheduler either runs whole warps one after another, in a random order, each up to
//    the next __syncthreads, or runs a random runnable fiber at each step; which of the two is
//    drawn per epoch. Inside a warp the lanes run in a random order between warp barriers. So a
//    missing __syncthreads (a warp reads a tile another warp has not written yet, or overwrites one
//    another warp still reads) or a missing __syncwarp makes some thread see stale data or NaN
//    (below), which the comparison with the reference reports. Seeded (set_schedule_seed, default
//    1; GROVE_EMU_SEED=n shifts it): reproducible.
//  - Shared memory. Dynamic: exactly the bytes given at launch, fresh for each block; static: one
//    variable per kernel. Both are filled with 0xff bytes (NaN as bf16 and as fp32, -1 as int)
//    whenever a block starts, so reading what was never written shows, and AddressSanitizer
//    reports any access past the end. A launch needing more than the 48 KiB default fails unless
//    cudaFuncSetAttribute raised the kernel's limit (at most sm_90's 227 KiB), as on the device.
//  - atomicAdd (float, double, int, unsigned, unsigned long long), atomicMax, __ldg, and the device
//    math functions the host lacks (rsqrtf, __expf, __fdividef, ...; the accurate function stands
//    in for the fast one).
//  - nvcuda::wmma, 16x16x16 bf16 fragments with fp32 accumulators: load / store / mma / fill with
//    the API's contract. Fragments hold 8 elements per lane like the hardware's, but each kind
//    (matrix_a and matrix_b in either layout, accumulator) maps (lane, element) to (row, col)
//    through its own scrambled bijection. load / store check the 256-bit pointer alignment and that
//    ldm is a multiple of 16 bytes. load_matrix_sync / store_matrix_sync do not synchronize the
//    warp here: their ".sync" is convergence, not memory ordering (PTX), so a kernel that needs
//    another lane's shared-memory writes must __syncwarp first, and the emulator checks that it
//    does. mma_sync gathers all lanes' fragments, so it does act as a warp barrier.
//  - The CUDA runtime (emu_runtime.cc): launches, with the limits above and the block / grid size
//    limits; one device (cudaGetDeviceCount reports 1, so cuda_device_available() is true);
//    cudaMalloc / cudaFree / memcpy / memset, sync and async (host memory filled with NaN bytes and
//    kept in a registry: a host pointer passed to a kernel, a copy's device side or a GEMM is
//    reported; AddressSanitizer covers "global memory" too); the shared-memory opt-in; errors.
//    Streams and events are accepted and ignored: everything is synchronous.
//  - Several host threads using the runtime at once (the thread transport's ranks, each with its
//    own stream): the allocation registry is locked, the sticky error is per thread (as in CUDA),
//    and a launch holds one lock for its whole grid, so grids from different threads run one
//    after another, each on its launching thread. Host-side races between threads are not
//    detected (the emulated binaries use AddressSanitizer, not ThreadSanitizer).
//  - cuBLAS / cuBLASLt (emu_blas.cc): the GEMM calls kernels/cuda makes, as a plain column-major
//    GEMM with double sums, one rounding to the output type, the Lt bias epilogue.
//
// Not emulated (only a GPU run checks these: the gpu label):
//  - Real timing, occupancy, register limits (__launch_bounds__ is ignored), bank conflicts.
//  - The memory model. Memory is sequentially consistent and a fiber runs uninterrupted from one
//    barrier to the next, so barriers (and mma_sync, the shuffles, which need every lane's values)
//    act as full fences, and races inside one barrier interval are not reproduced: two lanes doing
//    a read-modify-write of one address never lose an update (so a missing atomic goes unnoticed),
//    a missing __threadfence or volatile is never noticed. Only the order of accesses relative to
//    barriers is explored. Concurrency between streams is not either.
//  - Warp divergence beyond what these kernels use: no partial masks, no __activemask / ballot /
//    vote, no exited lanes taking part in warp operations (those abort or deadlock); blocks of
//    whole warps only.
//  - Tensor-core, SFU and cuBLAS arithmetic: mma sums the exact bf16 products in fp32 in order
//    k = 0..15, cuBLAS in double (the hardware's order and rounding differ), exp2f / log2f are the
//    host's libm, no flushing of denormals. The tests' tolerances hold for any fp32 order.
//  - Device limits other than the ones checked above.
//  - NCCL. The emulated worker is built without GROVE_HAVE_NCCL, so data parallelism takes the
//    host (MPI) group and the model's host-staged all-reduce; the device-buffer all-reduce over
//    NCCL and its overlap with the backward (per-block ranges) run only on GPU machines.
//
// Why the scrambled layout: WMMA fragment layouts are unspecified and differ between GPU
// generations. With the natural layout (lane l holding row l / 2, say) code that assumes a layout
// (indexes x[e] as a given (row, col), or copies an accumulator into a matrix_a fragment) would
// pass here and compute garbage on an H100. With a scrambled layout such code fails here too, while
// code that only relies on the API's guarantees (two accumulator fragments of one type hold the
// same (row, col) in the same slot, which the attention kernels use for their per-row factors)
// passes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// Device code calls min / max unqualified (CUDA declares them for device code only).
using std::max;
using std::min;

// The CUDA headers define __launch_bounds__, and the C++ overload of cudaFuncSetAttribute that
// takes a kernel, only for nvcc.
#define __launch_bounds__(...)
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

#define EMU_CHECK(cond)                                                   \
  do {                                                                    \
    if (!(cond)) ::emu::fail(__FILE__, __LINE__, "check failed: " #cond); \
  } while (0)

// The thread and block of the fiber that runs (set by the scheduler at every switch).
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

[[noreturn]] void fail(const char* file, int line, const char* what);

// Selects the scheduling order of the launches that follow (reproducible per seed; the environment
// variable GROVE_EMU_SEED=n shifts every seed, to explore other schedules).
void set_schedule_seed(uint64_t seed);

// Device memory is host memory; the runtime keeps a registry of what cudaMalloc / cudaMallocAsync
// returned, so that a host pointer handed to a kernel, a cuBLAS call or cudaMemcpy (as the device
// side) is reported. True for a pointer into a live allocation or one past its end.
bool is_device_pointer(const void* p);
// Every byte of [p, p + bytes) inside one live allocation.
bool is_device_range(const void* p, size_t bytes);
// Marks [p, p + bytes) as device memory while it lives (tests that give host arrays to Launch).
class AsDevice {
 public:
  AsDevice(const void* p, size_t bytes);
  ~AsDevice();
  AsDevice(const AsDevice&) = delete;
  AsDevice& operator=(const AsDevice&) = delete;

 private:
  const void* p_;
};

// A barrier for `expected` fibers. `generation` counts how often it has opened.
struct Barrier {
  int expected = 0;
  int arrived = 0;
  uint64_t generation = 0;
  std::vector<int> waiters;  // fibers blocked here
};
// Blocks the calling fiber until `expected` fibers have arrived (the last one runs on).
void arrive_and_wait(Barrier& b);

// Per-warp state. Warp-collective calls exchange data through buffers indexed by the parity of
// the warp barrier's generation: a lane reads slot p after barrier instance g (p = g % 2) opened
// and before it arrives at instance g + 1, and no lane can write slot p again before instance
// g + 1 has opened, so one barrier per collective call is enough.
enum class Op : int { kSyncwarp, kShfl, kMma };
struct Warp {
  Barrier bar;
  Op op[2][32];
  uint64_t shfl[2][32];                   // the lanes' values, as bytes
  float a[2][256], b[2][256], c[2][256];  // gathered mma operands, [row * 16 + col]
};
struct Block {
  Barrier bar;
  std::vector<Warp> warps;
  unsigned char* smem = nullptr;
};
inline Block* current_block = nullptr;
// Linear index of the running thread in its block (x fastest, then y, then z), as on the device:
// it decides the warp and the lane.
inline int current_tid = 0;

inline Warp& warp() {
  return current_block->warps[current_tid / 32];
}
inline int lane() {
  return current_tid % 32;
}
inline unsigned char* smem() {
  return current_block->smem;
}

// Static __shared__ variables: the rewrite (rewrite_kernel.cmake) makes them function-local
// statics, one per kernel (template instance), shared by the block's fibers as the block's
// shared memory is by its threads (blocks run one at a time). The first thread to pass the
// declaration registers it; it is filled with 0xff bytes then and whenever a block starts, like
// dynamic shared memory.
bool register_shared(void* p, size_t bytes);
#define EMU_SHARED(name)                                 \
  [[maybe_unused]] static const bool emu_shared_##name = \
      ::emu::register_shared(&(name), sizeof(name))

// One warp-synchronous step: records the operation, waits for the warp, and (lane 0) checks that
// every lane made the same one. Returns the parity of the exchange buffers to use.
inline int warp_collective(Op op) {
  Warp& w = warp();
  const int p = static_cast<int>(w.bar.generation & 1);
  w.op[p][lane()] = op;
  arrive_and_wait(w.bar);
  if (lane() == 0)
    for (int l = 1; l < 32; ++l)
      if (w.op[p][l] != op)
        fail(__FILE__, __LINE__, "lanes of one warp made different warp-synchronous calls");
  return p;
}

// The value `src(lane)` of every lane's `value`: all 32 lanes take part (full mask, checked).
template <typename T, typename Src>
inline T shuffle(unsigned mask, T value, Src src) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "emu: shuffle of <= 8 bytes");
  EMU_CHECK(mask == 0xffffffffu);
  Warp& w = warp();
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  w.shfl[w.bar.generation & 1][lane()] = bits;
  const int p = warp_collective(Op::kShfl);
  const int from = src(lane());
  EMU_CHECK(from >= 0 && from < 32);
  T out;
  std::memcpy(&out, &w.shfl[p][from], sizeof(T));
  return out;
}
inline void check_width(int width) {
  EMU_CHECK(width > 0 && width <= 32 && (width & (width - 1)) == 0);
}

// Runs kernel(args...) on the grid (emu_runtime.cc). Written by the rewrite in place of
// `kernel<<<grid, block, smem, stream>>>(args...)`; invalid configurations set cudaGetLastError.
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem_bytes,
              const std::function<void()>& body);

// A pointer argument of a kernel must be null or point into device memory.
template <typename P>
inline void check_argument(const P& p, size_t index) {
  if constexpr (std::is_pointer_v<P>) {
    if (p != nullptr && !is_device_pointer(p)) {
      std::fprintf(stderr, "emu: kernel argument %zu (%p) is not device memory\n", index,
                   static_cast<const void*>(p));
      fail(__FILE__, __LINE__, "a host pointer passed to a kernel");
    }
  }
}

template <typename... Params>
class Launch {
 public:
  Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes = 0,
         cudaStream_t = nullptr)
      : kernel_(kernel), grid_(grid), block_(block), smem_bytes_(smem_bytes) {}
  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "kernel argument count");
    // Converted to the parameter types once, like kernel arguments; each thread gets a copy.
    const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    std::apply(
        [](const auto&... p) {
          size_t i = 0;
          (check_argument(p, i++), ...);
        },
        params);
    run_grid(reinterpret_cast<const void*>(kernel_), grid_, block_, smem_bytes_,
             [&] { std::apply(kernel_, params); });
  }

 private:
  void (*kernel_)(Params...);
  dim3 grid_, block_;
  size_t smem_bytes_;
};

}  // namespace emu

inline void __syncthreads() {
  emu::arrive_and_wait(emu::current_block->bar);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  EMU_CHECK(mask == 0xffffffffu);
  emu::warp_collective(emu::Op::kSyncwarp);
}
// Shuffles (full mask only). With width < 32 the warp is cut into segments of `width` lanes; a
// source lane outside the caller's segment yields the caller's own value, as on the device.
template <typename T>
inline T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
  emu::check_width(width);
  return emu::shuffle(mask, value,
                      [&](int l) { return (l & ~(width - 1)) + (src_lane & (width - 1)); });
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  emu::check_width(width);
  EMU_CHECK(lane_mask >= 0 && lane_mask < 32);
  return emu::shuffle(mask, value, [&](int l) {
    const int s = l ^ lane_mask;
    return s >= ((l & ~(width - 1)) + width) ? l : s;
  });
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  emu::check_width(width);
  return emu::shuffle(mask, value, [&](int l) {
    return (l & (width - 1)) >= static_cast<int>(delta) ? l - static_cast<int>(delta) : l;
  });
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  emu::check_width(width);
  return emu::shuffle(mask, value, [&](int l) {
    return (l & (width - 1)) + static_cast<int64_t>(delta) < width ? l + static_cast<int>(delta)
                                                                   : l;
  });
}

// Atomics. Fibers share one OS thread and a fiber runs uninterrupted between barriers, so a plain
// read-modify-write is atomic here (the memory model is not emulated, see above).
template <typename T>
inline T atomicAdd(T* address, T value) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, int> ||
                    std::is_same_v<T, unsigned> || std::is_same_v<T, unsigned long long>,
                "emu: atomicAdd of float, double, int, unsigned or unsigned long long");
  const T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
inline T atomicMax(T* address, T value) {
  static_assert(std::is_integral_v<T>, "emu: atomicMax of integers");
  const T old = *address;
  *address = std::max(old, value);
  return old;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// Device intrinsics and math functions CUDA has and the host's libm does not: the accurate
// functions stand in for the fast ones (the tests' tolerances hold for either).
inline float rsqrtf(float x) {
  return 1.f / std::sqrt(x);
}
inline double rsqrt(double x) {
  return 1.0 / std::sqrt(x);
}
inline float __expf(float x) {
  return std::exp(x);
}
inline float __logf(float x) {
  return std::log(x);
}
inline float __powf(float x, float y) {
  return std::pow(x, y);
}
inline float __sinf(float x) {
  return std::sin(x);
}
inline float __cosf(float x) {
  return std::cos(x);
}
inline float __fdividef(float x, float y) {
  return x / y;
}
// The round-to-nearest arithmetic intrinsics (no contraction into a fused multiply-add).
inline float __fadd_rn(float x, float y) {
  return x + y;
}
inline float __fsub_rn(float x, float y) {
  return x - y;
}
inline float __fmul_rn(float x, float y) {
  return x * y;
}
inline float __frcp_rn(float x) {
  return 1.f / x;
}
inline float __saturatef(float x) {
  return std::clamp(x, 0.f, 1.f);
}

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "emu: 16x16x16 fragments only");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float>
                                                 : std::is_same_v<T, __nv_bfloat16>,
                "emu: bf16 operands and fp32 accumulators only");
  static constexpr int num_elements = 8;
  T x[num_elements];
};

namespace detail {
// (lane, element) -> row * 16 + col: an odd multiplier and an offset make a bijection of 0..255,
// a different one for each fragment kind.
template <typename Use, typename Layout>
struct Scramble;
template <>
struct Scramble<matrix_a, row_major> {
  static constexpr int kMul = 101, kAdd = 17;
};
template <>
struct Scramble<matrix_a, col_major> {
  static constexpr int kMul = 59, kAdd = 200;
};
template <>
struct Scramble<matrix_b, row_major> {
  static constexpr int kMul = 83, kAdd = 99;
};
template <>
struct Scramble<matrix_b, col_major> {
  static constexpr int kMul = 141, kAdd = 5;
};
template <>
struct Scramble<accumulator, void> {
  static constexpr int kMul = 37, kAdd = 0;
};
template <typename Use, typename Layout>
inline int slot(int lane, int e) {
  using S = Scramble<Use, Layout>;
  return ((lane * 8 + e) * S::kMul + S::kAdd) & 255;
}
inline void check_pointer(const void* p, unsigned ldm, size_t element_bytes) {
  EMU_CHECK(reinterpret_cast<uintptr_t>(p) % 32 == 0);  // 256-bit aligned
  EMU_CHECK(ldm * element_bytes % 16 == 0);
}
}  // namespace detail

template <typename Use, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f,
                             const __nv_bfloat16* p, unsigned ldm) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>);
  constexpr bool row = std::is_same_v<Layout, row_major>;
  detail::check_pointer(p, ldm, sizeof(*p));
  for (int e = 0; e < 8; ++e) {
    const int idx = detail::slot<Use, Layout>(emu::lane(), e), r = idx / 16, c = idx % 16;
    f.x[e] = row ? p[r * ldm + c] : p[c * ldm + r];
  }
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  detail::check_pointer(p, ldm, sizeof(*p));
  for (int e = 0; e < 8; ++e) {
    const int idx = detail::slot<accumulator, void>(emu::lane(), e), r = idx / 16, c = idx % 16;
    f.x[e] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  detail::check_pointer(p, ldm, sizeof(*p));
  for (int e = 0; e < 8; ++e) {
    const int idx = detail::slot<accumulator, void>(emu::lane(), e), r = idx / 16, c = idx % 16;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
}
template <typename Use, typename T, typename Layout, typename V>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const V& v) {
  for (T& x : f.x) x = static_cast<T>(v);
}
// d = a b + c. The lanes' elements are gathered into the warp's buffers, then each lane computes
// its own elements of d (d may be c).
template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  emu::Warp& w = emu::warp();
  const int q = static_cast<int>(w.bar.generation & 1), l = emu::lane();
  for (int e = 0; e < 8; ++e) {
    w.a[q][detail::slot<matrix_a, LA>(l, e)] = __bfloat162float(a.x[e]);
    w.b[q][detail::slot<matrix_b, LB>(l, e)] = __bfloat162float(b.x[e]);
    w.c[q][detail::slot<accumulator, void>(l, e)] = c.x[e];
  }
  const int p = emu::warp_collective(emu::Op::kMma);
  for (int e = 0; e < 8; ++e) {
    const int idx = detail::slot<accumulator, void>(l, e), r = idx / 16, col = idx % 16;
    float s = w.c[p][idx];
    for (int k = 0; k < 16; ++k) s += w.a[p][r * 16 + k] * w.b[p][k * 16 + col];
    d.x[e] = s;
  }
}

}  // namespace nvcuda::wmma
