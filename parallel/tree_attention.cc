#include "parallel/tree_attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"

namespace grove::parallel {

// The decoding combine (the training algorithms are templates: parallel/cp_attention_impl.h) is
// the kernels' merge in its collective form (kernels/cpu/ops.h): attention_merge_scale
// (num = o·e^{lse − M}, den = e^{lse − M}; 0 for an empty partial) before the SUM,
// attention_merge_finish (out = num / den, lse = M + log den) after it.
int64_t tree_combine_scratch_elems(int64_t rows, int HD) {
  return rows * (HD + 2);
}

void tree_combine(comm::Communicator& cp, float* o, float* lse, int64_t rows, int HD,
                  float* scratch, CommStats* stats) {
  const int p = cp.size();
  float* m = scratch;            // [rows]
  float* num = scratch + rows;   // [rows, HD]
  float* den = num + rows * HD;  // [rows]
  std::memcpy(m, lse, sizeof(float) * rows);
  cp.all_reduce(m, rows, DType::kF32, comm::ReduceOp::kMax);
  // rows of HD values: the kernels' layout with SQ = rows, B = NH = 1.
  GROVE_CHECK(rows <= INT_MAX) << "tree_combine: rows=" << rows << " exceeds int";
  cpu::attention_merge_scale<float>(num, den, o, lse, m, int(rows), 1, 1, HD);
  cp.all_reduce(num, rows * (HD + 1), DType::kF32, comm::ReduceOp::kSum);
  if (stats) {
    stats->all_reduce(p, rows);
    stats->all_reduce(p, rows * (HD + 1));
  }
  cpu::attention_merge_finish<float>(o, lse, num, den, m, int(rows), 1, 1, HD);
}

}  // namespace grove::parallel
