// BlasHandle: RAII owner of a cuBLAS handle, a cuBLASLt handle and the Lt workspaces.
//
// Invariants: one handle belongs to one device and is used by one host thread at a time (the
// ops in kernels/cuda/ops.h use default_blas_handle(), one per thread and device). Each stream
// gets its own workspace, so matmuls issued on concurrent streams never share scratch memory.
// cuBLASLt algorithm choices are cached per problem (shape, layout, types, alignment).
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <map>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace grove::cuda {

class BlasHandle {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;

  // Creates the handles on the current device.
  explicit BlasHandle(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~BlasHandle();
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;

  int device() const { return device_; }
  // The cuBLAS handle, bound to `stream`.
  cublasHandle_t cublas(cudaStream_t stream);
  cublasLtHandle_t lt() const { return lt_; }
  // The Lt workspace for `stream` (allocated on first use), workspace_bytes() long.
  void* workspace(cudaStream_t stream);
  size_t workspace_bytes() const { return workspace_bytes_; }

  // Key of a cached Lt algorithm: trans_a, trans_b, m, n, k, lda, ldb, ldc, C type, alignment,
  // bias epilogue. nullopt: cuBLASLt offered none (e.g. odd leading dimensions); cublasGemmEx is
  // used instead.
  using AlgoKey = std::tuple<int, int, int, int, int, int, int, int, int, int, int>;
  using AlgoCache = std::map<AlgoKey, std::optional<cublasLtMatmulAlgo_t>>;
  AlgoCache& algo_cache() { return algo_cache_; }

 private:
  int device_ = 0;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::vector<std::pair<cudaStream_t, void*>> workspaces_;
  AlgoCache algo_cache_;
};

// This thread's handle for the current device (created on first use, destroyed at thread exit).
BlasHandle& default_blas_handle();

}  // namespace grove::cuda
