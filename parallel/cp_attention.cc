// Context-parallel attention on the host backend (parallel/cp_attention.h): the templates of
// parallel/cp_attention_impl.h for CpuBackend.
#include "parallel/cp_attention.h"

#include "parallel/cp_attention_impl.h"

namespace grove::parallel {

template class ContextAttentionT<CpuBackend>;

}  // namespace grove::parallel
