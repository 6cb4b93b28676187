// The transformer on one CUDA device per rank: TransformerT<CudaBackend<T>> (model/transformer.h)
// with T = float (fp32, no TF32: follows the CPU backend step by step) or bf16 (bf16 operands and
// activations, fp32 accumulation, fp32 master weights, gradients and optimizer state), plus what
// a GPU run reports: the device's name and its dense peak for MFU.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "kernels/cuda/backend.h"
#include "model/transformer.h"
#include "spec/enums.h"

namespace grove {

using CudaTransformerF32 = TransformerT<CudaBackend<float>>;
using CudaTransformerBf16 = TransformerT<CudaBackend<cuda::bf16>>;
extern template class TransformerT<CudaBackend<float>>;
extern template class TransformerT<CudaBackend<cuda::bf16>>;
namespace parallel {
extern template class ContextAttentionT<CudaBackend<float>>;
extern template class ContextAttentionT<CudaBackend<cuda::bf16>>;
}  // namespace parallel

// The name of the current CUDA device ("NVIDIA H100 80GB HBM3"), and the data sheet's dense
// tensor-core peak for a device of that name in TFLOP/s (0 when the name is not known), the
// denominator of MFU; `bf16` false: fp32 without TF32.
std::string current_device_name();
double dense_peak_tflops(const std::string& device_name, bool bf16);

}  // namespace grove
