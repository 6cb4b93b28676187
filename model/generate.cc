// The Generator on the host backend: the templates of model/generate_impl.h for CpuBackend.
#include "model/generate.h"

#include "model/generate_impl.h"

namespace grove {

template class GeneratorT<CpuBackend>;

}  // namespace grove
