#include "planner/search.h"

#include <algorithm>
#include <cstdio>

namespace grove::planner {

namespace {

std::vector<int> Divisors(int n) {
  std::vector<int> d;
  for (int i = 1; i <= n; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}

std::string GiB(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace

StatusOr<SearchResult> SearchLayouts(const SearchRequest& r, const ClusterSpec& cluster) {
  if (r.world < 1)
    return Status::Error("world (--gpus) must be >= 1, got " + std::to_string(r.world));
  if (cluster.max_nodes > 0 && r.world > cluster.devices_per_node * cluster.max_nodes)
    return Status::Error("world " + std::to_string(r.world) + " exceeds cluster " + cluster.name +
                         " (" + std::to_string(cluster.devices_per_node * cluster.max_nodes) +
                         " devices)");
  if (r.global_batch < 1) return Status::Error("the global batch must be >= 1 sequence");
  if (r.split == BatchSplit::kFixedGlobalMicroBatch &&
      (r.global_micro_batch < 1 || r.global_batch % r.global_micro_batch != 0))
    return Status::Error("train.batch_size=" + std::to_string(r.global_micro_batch) +
                         " must divide the global batch " + std::to_string(r.global_batch));
  for (auto [name, v] :
       {std::pair<const char*, int>{"tp", r.tp}, {"cp", r.cp}, {"ep", r.ep}, {"dp", r.dp}})
    if (v < 0 || (v > 0 && r.world % v != 0))
      return Status::Error(std::string("parallel.") + name + "=" + std::to_string(v) +
                           " must divide the world " + std::to_string(r.world) + " (0 = choose)");
  if (r.pp < 1 || r.world % r.pp != 0 || r.pp_virtual < 1)
    return Status::Error("pp=" + std::to_string(r.pp) + " must divide the world " +
                         std::to_string(r.world));
  const int stage_world = r.world / r.pp;
  const double limit =
      r.memory_limit_bytes > 0 ? r.memory_limit_bytes : cluster.device.memory_bytes;
  const double usable = kUsableMemoryFraction * limit;
  const std::vector<Recompute> modes =
      r.recompute
          ? std::vector<Recompute>{*r.recompute}
          : std::vector<Recompute>{Recompute::kNone, Recompute::kSelective, Recompute::kFull};
  SearchResult out;
  std::vector<Prediction> fit;
  std::string first_invalid;
  for (int tp : Divisors(stage_world)) {
    if (r.tp && tp != r.tp) continue;
    for (int cp : Divisors(stage_world / tp)) {
      if (r.cp && cp != r.cp) continue;
      const int dp = stage_world / (tp * cp);
      if (r.dp && dp != r.dp) continue;
      for (int ep : Divisors(stage_world)) {
        if (r.ep && ep != r.ep) continue;
        if (!r.ep && r.workload.model.moe.num_experts == 0 && ep > 1) continue;
        // Micro-batch choices per data-parallel rank.
        std::vector<std::pair<int, int>> batches;  // (micro_batch, grad_accum)
        if (r.split == BatchSplit::kFixedGlobalMicroBatch) {
          if (r.global_micro_batch % dp != 0) {
            if (first_invalid.empty())
              first_invalid = "dp=" + std::to_string(dp) + " does not divide train.batch_size=" +
                              std::to_string(r.global_micro_batch);
            continue;
          }
          batches.push_back({r.global_micro_batch / dp, r.global_batch / r.global_micro_batch});
        } else {
          if (r.global_batch % dp != 0) continue;
          for (int b : Divisors(r.global_batch / dp))
            batches.push_back({b, r.global_batch / dp / b});
        }
        for (auto [mb, accum] : batches)
          for (Recompute rc : modes) {
            Layout l;
            l.tp = tp, l.cp = cp, l.ep = ep, l.dp = dp;
            l.pp = r.pp, l.pp_virtual = r.pp_virtual;
            l.recompute = rc;
            l.sp = r.sp;
            l.micro_batch = mb;
            l.grad_accum = accum;
            if (Status s = CheckLayout(r.workload, l, cluster); !s.ok()) {
              if (first_invalid.empty()) first_invalid = l.str() + ": " + s.message();
              continue;
            }
            Prediction p = Predict(r.workload, l, cluster);
            p.device_memory = limit;
            p.fits = p.memory.total <= usable;
            ++out.considered;
            if (!p.fits) {
              ++out.rejected_memory;
              if (!out.smallest || p.memory.total < out.smallest->memory.total) out.smallest = p;
              continue;
            }
            fit.push_back(std::move(p));
          }
      }
    }
  }
  if (out.considered == 0)
    return Status::Error("no layout of " + std::to_string(r.world) + " devices can run this model" +
                         (first_invalid.empty() ? "" : " (e.g. " + first_invalid + ")"));
  if (fit.empty())
    return Status::Error("no layout fits " + GiB(limit) + " per device (" + GiB(usable) +
                         " usable): the smallest, " + out.smallest->layout.str() + ", needs " +
                         GiB(out.smallest->memory.total) +
                         "; use more devices, a smaller micro-batch or sequence, or full "
                         "recompute");
  std::stable_sort(fit.begin(), fit.end(), [](const Prediction& a, const Prediction& b) {
    if (a.step_s != b.step_s) return a.step_s < b.step_s;
    return a.memory.total < b.memory.total;
  });
  if (r.max_results > 0 && int(fit.size()) > r.max_results) fit.resize(r.max_results);
  out.ranked = std::move(fit);
  return out;
}

}  // namespace grove::planner
