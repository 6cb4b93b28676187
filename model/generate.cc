// The Generator on the host backend: the templates of model/generate_impl.h for CpuBackend.
#include "model/generate.h"

#include <algorithm>

#include "model/generate_impl.h"

namespace grove {

int32_t argmax(const float* x, int n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

template class GeneratorT<CpuBackend>;

}  // namespace grove
