// The transformer on the CUDA backend; see model/cuda/cuda_transformer.h.
#include "model/cuda/cuda_transformer.h"

#include <cuda_runtime_api.h>

#include "model/transformer_impl.h"
#include "parallel/cp_attention_impl.h"

namespace grove {

// Context-parallel attention (tree, ring) on the CUDA backends.
template class parallel::ContextAttentionT<CudaBackend<float>>;
template class parallel::ContextAttentionT<CudaBackend<cuda::bf16>>;

template class TransformerT<CudaBackend<float>>;
template class TransformerT<CudaBackend<cuda::bf16>>;

std::string current_device_name() {
  int dev = 0;
  GROVE_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  GROVE_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return prop.name;
}

double dense_peak_tflops(const std::string& name, bool bf16) {
  // NVIDIA data sheets, SXM parts, dense (no 2:4 sparsity); fp32 without TF32.
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has("H100") || has("H200") || has("GH200")) return bf16 ? 989.4 : 66.9;
  if (has("A100")) return bf16 ? 312.0 : 19.5;
  return 0;
}

}  // namespace grove
