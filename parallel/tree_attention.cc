#include "parallel/tree_attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"

namespace grove::parallel {

// The combine is the kernels' merge in its collective form (kernels/cpu/ops.h):
// attention_merge_scale (num = o·e^{lse − M}, den = e^{lse − M}; 0 for an empty partial) before
// the SUM, attention_merge_finish (out = num / den, lse = M + log den) after it.
namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Sizes {
  int p, Sl;
  int64_t Eq, El;  // one shard of q-shaped data, one shard of lse
  Sizes(const CpAttentionShape& s, int p_) : p(p_), Sl(s.S / p_) {
    Eq = int64_t(Sl) * s.B * s.NH * s.HD;
    El = int64_t(s.B) * s.NH * Sl;
  }
  int64_t forward() const { return p * (2 * Eq + 3 * El) + 2 * (Eq + El); }
  int64_t backward() const { return 4 * p * Eq + p * El + Eq + El; }
};
}  // namespace

int64_t tree_workspace_elems(const CpAttentionShape& s, int p) {
  const Sizes z(s, p);
  return std::max(z.forward(), z.backward());
}

void tree_attention_forward(comm::Communicator& cp, const CpAttentionShape& s, float* out,
                            float* lse, const float* q, const float* k, const float* v,
                            float* workspace, CommStats* stats) {
  const Sizes z(s, cp.size());
  const int p = z.p, r = cp.rank(), Sl = z.Sl, B = s.B, NH = s.NH, HD = s.HD;
  const int64_t Eq = z.Eq, El = z.El, block = Eq + El;
  float* qall = workspace;            // [p][Sl, B, NH, HD]   every rank's queries
  float* packed = qall + p * Eq;      // [p][Sl·B·NH·HD | B·NH·Sl]  numerators | weights
  float* lse_i = packed + p * block;  // [p][B, NH, Sl]       this rank's partial lse
  float* m = lse_i + p * El;          // [p][B, NH, Sl]       global max
  float* recv = m + p * El;           // [Sl·B·NH·HD | B·NH·Sl] this rank's combined block
  float* scratch = recv + block;      // partial_scratch_elems(Sl, ...)

  cp.all_gather(q, qall, Eq, DType::kF32);
  if (stats) stats->all_gather(p, Eq);

  // Partials of every query block against the local K/V (two zigzag chunks).
  Segment ks[2], qs[2];
  zigzag_segments(ks, s.S, p, r);
  for (int j = 0; j < p; ++j) {
    float* num = packed + j * block;
    std::fill(num, num + Eq, 0.0f);
    std::fill(lse_i + j * El, lse_i + (j + 1) * El, kNegInf);
    zigzag_segments(qs, s.S, p, j);
    partial_attention_forward(num, lse_i + j * El, qall + j * Eq, Sl, qs, k, v, Sl, ks, B, NH,
                              s.NKV, HD, s.causal, scratch);
  }

  // Exact combine: MAX all-reduce, then one packed SUM reduce-scattered to the query owners.
  std::memcpy(m, lse_i, sizeof(float) * p * El);
  cp.all_reduce(m, p * El, DType::kF32, comm::ReduceOp::kMax);
  if (stats) stats->all_reduce(p, p * El);
  for (int j = 0; j < p; ++j) {
    float* num = packed + j * block;
    cpu::attention_merge_scale<float>(num, num + Eq, num, lse_i + j * El, m + j * El, Sl, B, NH,
                                      HD);
  }
  cp.reduce_scatter(packed, recv, block, DType::kF32, comm::ReduceOp::kSum);
  if (stats) stats->reduce_scatter(p, block);

  cpu::attention_merge_finish<float>(out, lse, recv, recv + Eq, m + r * El, Sl, B, NH, HD);
}

void tree_attention_backward(comm::Communicator& cp, const CpAttentionShape& s, float* dq,
                             float* dk, float* dv, const float* dout, const float* q,
                             const float* k, const float* v, const float* out, const float* lse,
                             float* workspace, CommStats* stats) {
  const Sizes z(s, cp.size());
  const int p = z.p, r = cp.rank(), Sl = z.Sl;
  const int64_t Eq = z.Eq, El = z.El;
  float* qall = workspace;  // [p][Sl, B, NH, HD]
  float* dout_all = qall + p * Eq;
  float* out_all = dout_all + p * Eq;
  float* lse_all = out_all + p * Eq;  // [p][B, NH, Sl]
  float* dq_all = lse_all + p * El;   // [p][Sl, B, NH, HD] this rank's dQ contributions
  float* recv = dq_all + p * Eq;      // [Sl, B, NH, HD]
  float* scratch = recv + Eq;         // B·NH·Sl

  {
    comm::Work wq = cp.all_gather_async(q, qall, Eq, DType::kF32);
    comm::Work wd = cp.all_gather_async(dout, dout_all, Eq, DType::kF32);
    comm::Work wo = cp.all_gather_async(out, out_all, Eq, DType::kF32);
    comm::Work wl = cp.all_gather_async(lse, lse_all, El, DType::kF32);
    wq.wait();
    wd.wait();
    wo.wait();
    wl.wait();
  }
  if (stats) {
    for (int i = 0; i < 3; ++i) stats->all_gather(p, Eq);
    stats->all_gather(p, El);
  }

  Segment ks[2], qs[2];
  zigzag_segments(ks, s.S, p, r);
  std::fill(dq_all, dq_all + p * Eq, 0.0f);
  for (int j = 0; j < p; ++j) {
    zigzag_segments(qs, s.S, p, j);
    partial_attention_backward(dq_all + j * Eq, dk, dv, dout_all + j * Eq, qall + j * Eq,
                               out_all + j * Eq, lse_all + j * El, Sl, qs, k, v, Sl, ks, s.B, s.NH,
                               s.NKV, s.HD, s.causal, scratch);
  }
  cp.reduce_scatter(dq_all, recv, Eq, DType::kF32, comm::ReduceOp::kSum);
  if (stats) stats->reduce_scatter(p, Eq);
  cpu::add_inplace(dq, recv, Eq);
}

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
