// Error checking for CUDA runtime, cuBLAS and cuBLASLt calls.
//
// Every call into the CUDA libraries goes through one of these macros; a failure throws
// grove::Error naming the file, the line, the call and the library's own message. Kernel launches
// are followed by GROVE_CUDA_CHECK_LAUNCH() so that a bad launch configuration is reported at the
// launch site instead of at the next unrelated call.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <sstream>
#include <string>

#include "core/status.h"

namespace grove::cuda::detail {

[[noreturn]] inline void throw_cuda_error(const char* file, int line, const char* call,
                                          const std::string& what) {
  std::ostringstream os;
  os << file << ":" << line << ": " << call << " failed: " << what;
  throw ::grove::Error(os.str());
}

inline std::string cuda_error_string(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
}

inline std::string cublas_error_string(cublasStatus_t st) {
  return std::string(cublasGetStatusName(st)) + " (" + cublasGetStatusString(st) + ")";
}

}  // namespace grove::cuda::detail

#define GROVE_CUDA_CHECK(call)                                                              \
  do {                                                                                      \
    cudaError_t grove_err_ = (call);                                                        \
    if (grove_err_ != cudaSuccess)                                                          \
      ::grove::cuda::detail::throw_cuda_error(                                              \
          __FILE__, __LINE__, #call, ::grove::cuda::detail::cuda_error_string(grove_err_)); \
  } while (0)

// cuBLAS and cuBLASLt share cublasStatus_t.
#define GROVE_CUBLAS_CHECK(call)                                                             \
  do {                                                                                       \
    cublasStatus_t grove_st_ = (call);                                                       \
    if (grove_st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      ::grove::cuda::detail::throw_cuda_error(                                               \
          __FILE__, __LINE__, #call, ::grove::cuda::detail::cublas_error_string(grove_st_)); \
  } while (0)

// After a <<<...>>> launch: reports invalid configurations (grid, shared memory) at once.
#define GROVE_CUDA_CHECK_LAUNCH() GROVE_CUDA_CHECK(cudaGetLastError())
