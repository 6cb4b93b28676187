#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "comm/thread_reduce.h"

namespace grove::comm::detail {
namespace {

template <typename T>
__device__ T combine_one(T a, T b, bool max) {
  if (!max) return static_cast<T>(a + b);
  if constexpr (std::is_floating_point_v<T>) {
    if (b != b) return b;  // a NaN wins, as in the MPI backend's bf16 max
  }
  return b > a ? b : a;
}

__device__ __nv_bfloat16 combine_one(__nv_bfloat16 a, __nv_bfloat16 b, bool max) {
  const float x = __bfloat162float(a), y = __bfloat162float(b);
  if (!max) return __float2bfloat16_rn(x + y);
  return (y != y || y > x) ? b : a;
}

template <typename T>
__global__ void combine_kernel(T* acc, const T* x, int64_t count, bool max) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride)
    acc[i] = combine_one(acc[i], x[i], max);
}

template <typename T>
cudaError_t launch(void* acc, const void* x, int64_t count, bool max, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 1024 ? blocks : 1024);
  combine_kernel<T>
      <<<grid, kThreads, 0, stream>>>(static_cast<T*>(acc), static_cast<const T*>(x), count, max);
  return cudaGetLastError();
}

}  // namespace

cudaError_t combine_on_device(void* acc, const void* x, int64_t count, DType dtype, ReduceOp op,
                              cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  const bool max = op == ReduceOp::kMax;
  switch (dtype) {
    case DType::kF32:
      return launch<float>(acc, x, count, max, stream);
    case DType::kF64:
      return launch<double>(acc, x, count, max, stream);
    case DType::kBF16:
      return launch<__nv_bfloat16>(acc, x, count, max, stream);
    case DType::kI32:
      return launch<int32_t>(acc, x, count, max, stream);
    case DType::kI64:
      return launch<int64_t>(acc, x, count, max, stream);
    case DType::kU8:
      return launch<uint8_t>(acc, x, count, max, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace grove::comm::detail
