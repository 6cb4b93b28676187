// The transformer on the CPU backend (the whole parallel engine); see model/transformer.h.
#include "model/transformer.h"

#include "model/transformer_impl.h"

namespace grove {

template class TransformerT<CpuBackend>;

}  // namespace grove
