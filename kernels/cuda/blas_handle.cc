#include "kernels/cuda/blas_handle.h"

#include <memory>

#include "kernels/cuda/check.h"

namespace grove::cuda {

BlasHandle::BlasHandle(size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  GROVE_CUDA_CHECK(cudaGetDevice(&device_));
  GROVE_CUBLAS_CHECK(cublasCreate(&cublas_));
  // Pure fp32 for float GEMMs (no TF32), so that the fp32 path matches the CPU to fp32 rounding.
  GROVE_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  cublasStatus_t st = cublasLtCreate(&lt_);
  if (st != CUBLAS_STATUS_SUCCESS) {
    cublasDestroy(cublas_);
    GROVE_CUBLAS_CHECK(st);
  }
}

BlasHandle::~BlasHandle() {
  // Destructors must not throw; at process exit the driver may already be shutting down, so
  // errors here are ignored.
  int current = 0;
  cudaGetDevice(&current);
  cudaSetDevice(device_);
  for (auto& [stream, ptr] : workspaces_) cudaFree(ptr);
  if (lt_) cublasLtDestroy(lt_);
  if (cublas_) cublasDestroy(cublas_);
  cudaSetDevice(current);
}

cublasHandle_t BlasHandle::cublas(cudaStream_t stream) {
  GROVE_CUBLAS_CHECK(cublasSetStream(cublas_, stream));
  return cublas_;
}

void* BlasHandle::workspace(cudaStream_t stream) {
  for (auto& [s, ptr] : workspaces_)
    if (s == stream) return ptr;
  void* ptr = nullptr;
  GROVE_CUDA_CHECK(cudaMalloc(&ptr, workspace_bytes_));
  workspaces_.emplace_back(stream, ptr);
  return ptr;
}

BlasHandle& default_blas_handle() {
  thread_local std::vector<std::unique_ptr<BlasHandle>> handles;  // indexed by device
  int device = 0;
  GROVE_CUDA_CHECK(cudaGetDevice(&device));
  if (static_cast<int>(handles.size()) <= device) handles.resize(device + 1);
  if (!handles[device]) handles[device] = std::make_unique<BlasHandle>();
  return *handles[device];
}

}  // namespace grove::cuda
