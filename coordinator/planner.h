// Layout planner: picks tp / cp / ep / dp and the recompute mode for a job, from the per-rank
// memory formula (spec/memory.h, docs/memory.md), or rejects the job with the reason and the
// smallest tensor-parallel size that would fit. The rank layout and the tensor-parallel
// divisibility rules are the worker's own (spec/grid.h, spec/train_config.h).
//
// Rules:
//  - tp · cp · dp = world; ep divides the world (expert grid folded over the same ranks).
//  - tp divides n_heads, the kv heads, the SwiGLU hidden size, the vocabulary and s / cp (the
//    sequence-parallel shard), and tp divides ranks_per_host: with ranks placed by slot, every TP
//    group then lies on one host (TP traffic stays on the intra-host links).
//  - Sequence parallelism is on whenever tp > 1 (Megatron-LM), unless the request turns it off.
//  - Memory: EstimateMemory at the rank's micro-batch train.batch_size / dp (as the worker splits
//    it; a dp that does not divide it is refused), sequence train.seq_len / cp, the experts over
//    ep and the MoE layers' expert stash: the cost model's PredictMemory at fp32, one memory
//    model for both planners. It must fit in 90% of the device memory (the rest is left to
//    workspaces and fragmentation).
//  - Search order, first fit wins: tp ascending with no / selective recompute, then tp ascending
//    with full recompute (full recompute costs a third more compute; a wider TP group within a
//    host usually costs less). Fields the request fixes are kept as given.
//  - With a cluster description (PlanRequest::cluster; grove-coordinator --cluster) and a
//    layout left open (tp, cp, ep or the recompute mode), the fastest layout by the cost model
//    (planner/search.h, docs/planning.md) is taken instead of the first that fits: every
//    (tp, cp, ep, dp, recompute) that runs the model and fits the memory, with the configured
//    micro-batch (train.batch_size over dp) and the fixed fields kept. Its memory is the cost
//    model's (per data-parallel micro-batch, the MoE stash, experts over ep).
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"
#include "planner/cluster.h"
#include "planner/cost_model.h"
#include "spec/grid.h"
#include "spec/memory.h"
#include "spec/model_config.h"
#include "spec/train_config.h"

namespace grove::coordinator {

inline constexpr double kUsableMemoryFraction = planner::kUsableMemoryFraction;  // 0.9

struct PlanRequest {
  int world_size = 1;
  int tp = 0;                     // 0 = plan
  int cp = 0;                     // 0 = 1
  int ep = 0;                     // 0 = 1
  int dp = 0;                     // 0 = world / (tp · cp)
  std::string recompute;          // "" = plan; else none | selective | full
  double device_memory_gib = 0;   // 0 = no memory limit
  int ranks_per_host = 0;         // 0 = world_size
  bool sequence_parallel = true;  // SP whenever tp > 1 (false: plain TP)
  // The cluster the job runs on (not owned; null: the first-fit planner). Its devices per node
  // are replaced by ranks_per_host when that is given.
  const planner::ClusterSpec* cluster = nullptr;
};

struct Plan {
  int world = 1, tp = 1, cp = 1, ep = 1, dp = 1;
  Recompute recompute = Recompute::kSelective;
  bool sp = false;
  MemoryEstimate memory;
  int64_t device_memory_bytes = 0;  // 0 = unlimited
  std::string explanation;
  // The cost model's step time at this layout on the request's cluster, whichever way the
  // layout was chosen (0: no cluster, or a layout the cost model cannot size), and what it
  // assumed or why there is none (docs/dashboard.md).
  double predicted_step_s = 0;
  std::string prediction_note;

  parallel::GridShape shape() const { return {world, tp, cp, ep, dp}; }
};

// Errors name the request field ("parallel.tp=3 does not divide parallel.world_size=4") or
// say what memory the job needs and what to change.
StatusOr<Plan> PlanLayout(const TrainConfig& config, const PlanRequest& request);

// The cost model's prediction of `plan` for `config` on `cluster` (the request's cluster with
// ranks_per_host devices per node): sets plan->predicted_step_s and plan->prediction_note, or
// only the note (why not) when the layout cannot be sized. PlanLayout calls it; exposed for tests.
void PredictPlan(const TrainConfig& config, const planner::ClusterSpec& cluster, Plan* plan);

// A rank's coordinates in the plan's layout (parallel::grid_coord, spec/grid.h); 0 <= rank < world.
using Coords = parallel::GridCoord;
Coords RankCoords(const Plan& plan, int rank);

// "12.3 GiB"
std::string FormatGiB(int64_t bytes);

}  // namespace grove::coordinator
