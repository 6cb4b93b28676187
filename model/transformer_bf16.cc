// The transformer on the CPU with bf16 GEMM operands (train.precision=bf16, train.device=cpu);
// see model/transformer.h and kernels/cpu/bf16_backend.h.
#include "model/transformer.h"
#include "model/transformer_impl.h"
#include "parallel/cp_attention_impl.h"

namespace grove {

template class parallel::ContextAttentionT<CpuBf16Backend>;
template class TransformerT<CpuBf16Backend>;

}  // namespace grove
