// The layout search: every (tp, cp, ep, dp, recompute, micro-batch) that runs the workload on
// `world` devices of the cluster and fits its memory, ranked by predicted step time (ties: less
// memory). Pipeline parallelism is not searched (Grove trains with pp = 1).
//
// The global batch (sequences per optimizer step) is fixed. Two ways to split it:
//  - kFixedGlobalMicroBatch (Grove's config: train.batch_size sequences per micro-batch over all
//    data-parallel ranks, train.grad_accum micro-batches): dp must divide the micro-batch;
//  - kFree: any per-rank micro-batch b with b · dp dividing the global batch; grad_accum is
//    the rest.
#pragma once

#include <optional>
#include <vector>

#include "core/status.h"
#include "planner/cluster.h"
#include "planner/cost_model.h"

namespace grove::planner {

enum class BatchSplit { kFixedGlobalMicroBatch, kFree };

struct SearchRequest {
  Workload workload;
  int world = 1;
  int global_batch = 8;        // sequences per optimizer step
  int global_micro_batch = 8;  // kFixedGlobalMicroBatch: sequences per micro-batch (all ranks)
  BatchSplit split = BatchSplit::kFixedGlobalMicroBatch;
  // Fixed choices (0 / nullopt: search it).
  int tp = 0, cp = 0, ep = 0, dp = 0;
  // Pipeline stages, fixed (Grove trains with pp = 1; pp > 1 only evaluates published
  // configurations); pp must divide the world.
  int pp = 1, pp_virtual = 1;
  std::optional<Recompute> recompute;
  bool sp = true;
  double memory_limit_bytes = 0;  // 0: the cluster's device memory
  int max_results = 10;
};

struct SearchResult {
  std::vector<Prediction> ranked;  // fastest first, only layouts that fit
  int considered = 0;              // valid layouts predicted
  int rejected_memory = 0;         // of those, over the memory limit
  // The smallest memory need among layouts that do not fit (when none fits).
  std::optional<Prediction> smallest;
};

// Errors: the request's fields (world, batch), or nothing valid / nothing fits, naming the
// memory the smallest layout needs.
StatusOr<SearchResult> SearchLayouts(const SearchRequest& request, const ClusterSpec& cluster);

}  // namespace grove::planner
