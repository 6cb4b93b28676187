// One AdamW update over the flat parameter buffers of a ParamLayout (model/weights.h), on any
// kernel backend: one adamw_update per run of entries with the same weight decay (matrices decay,
// norm weights do not; norm weights break the runs). The alignment padding between entries holds
// zeros in params, grads and moments and stays zero. Decoupled weight decay, bias correction with
// the 1-based `step`, as torch.optim.AdamW.
#pragma once

#include "model/weights.h"

namespace grove {

template <class B>
void flat_adamw_step(const ParamLayout& layout, float* params, const float* grads, float* m,
                     float* v, int step, float lr, float beta1, float beta2, float eps,
                     float weight_decay) {
  const std::vector<ParamEntry>& e = layout.entries;
  size_t i = 0;
  while (i < e.size()) {
    size_t j = i;
    while (j + 1 < e.size() && e[j + 1].decay == e[i].decay) ++j;
    const int64_t begin = e[i].offset, end = e[j].offset + e[j].numel;
    B::adamw_update(params + begin, grads + begin, m + begin, v + begin, end - begin, lr, beta1,
                    beta2, eps, e[i].decay ? weight_decay : 0.0f, step);
    i = j + 1;
  }
}

}  // namespace grove
