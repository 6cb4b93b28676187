// The parallel layout's arithmetic: which rank holds which shard, and which ranks form each
// parallel group. Pure functions of the shape (no communication): the worker's ParallelGrid
// (parallel/grid.h) splits its communicators by them, the coordinator's planner computes ranks'
// coordinates with them, and validate() is the one check of a shape.
//
// Dense grid, tp × cp × dp = world, rank order tp fastest, then cp, then dp:
//     rank = tp_rank + tp · (cp_rank + cp · dp_rank)
// Expert grid folded over the same ranks, ep × edp = tp · cp · dp (expert tensor parallel = 1),
// rank order ep fastest, then edp:
//     rank = ep_rank + ep · edp_rank
// Groups (members listed in group-rank order, i.e. ascending rank):
//     tp     ranks that differ only in tp_rank      (tensor + sequence parallel)
//     cp     ranks that differ only in cp_rank      (context parallel)
//     dp     ranks that differ only in dp_rank      (data parallel)
//     dp_cp  ranks that differ in cp_rank, dp_rank  (dense gradient reduction when cp > 1)
//     ep     ranks that differ only in ep_rank      (expert all-to-all)
//     edp    ranks that differ only in edp_rank     (expert gradient reduction)
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace grove::parallel {

struct GridShape {
  int world = 1;
  int tp = 1;
  int cp = 1;
  int ep = 1;
  int dp = 1;

  // Expert data parallel size: tp · cp · dp / ep (valid shapes only).
  int edp() const { return tp * cp * dp / ep; }
  // "world=8 tp=2 cp=2 ep=4 dp=2"
  std::string str() const;
};

// OK, or one error naming the numbers, e.g. "tp=3 × cp=1 × dp=1 ≠ world 4".
Status validate(const GridShape& shape);

enum class Group { kTp, kCp, kDp, kDpCp, kEp, kEdp };
inline constexpr Group kAllGroups[] = {Group::kTp,   Group::kCp, Group::kDp,
                                       Group::kDpCp, Group::kEp, Group::kEdp};
const char* group_name(Group group);  // "tp", "cp", "dp", "dp_cp", "ep", "edp"

// A rank's coordinates in the dense and in the expert grid.
struct GridCoord {
  int rank = 0;
  int tp = 0, cp = 0, dp = 0;  // dense
  int ep = 0, edp = 0;         // expert
};

// Pure layout arithmetic (no communication); `shape` must be valid.
GridCoord grid_coord(const GridShape& shape, int rank);
int dense_rank(const GridShape& shape, int tp_rank, int cp_rank, int dp_rank);
int expert_rank(const GridShape& shape, int ep_rank, int edp_rank);
// World ranks of the `group` that contains `rank`, in group-rank order.
std::vector<int> group_members(const GridShape& shape, Group group, int rank);
int group_size(const GridShape& shape, Group group);

}  // namespace grove::parallel
