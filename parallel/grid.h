// ParallelGrid: which rank holds which shard, and the communicator of every parallel group.
//
// Built once from (world, tp, cp, ep, dp) and passed explicitly to everything that communicates;
// there is no global process-group state.
//
// Dense grid, tp × cp × dp = world, rank order tp fastest, then cp, then dp:
//     rank = tp_rank + tp · (cp_rank + cp · dp_rank)
// Expert grid folded over the same ranks, ep × edp = tp · cp · dp (expert tensor parallel = 1),
// rank order ep fastest, then edp:
//     rank = ep_rank + ep · edp_rank
// Groups (each a sub-communicator; members listed in group-rank order, i.e. ascending rank):
//     tp     ranks that differ only in tp_rank      (tensor + sequence parallel)
//     cp     ranks that differ only in cp_rank      (context parallel)
//     dp     ranks that differ only in dp_rank      (data parallel)
//     dp_cp  ranks that differ in cp_rank, dp_rank  (dense gradient reduction when cp > 1)
//     ep     ranks that differ only in ep_rank      (expert all-to-all)
//     edp    ranks that differ only in edp_rank     (expert gradient reduction)
// A group of size one is still a communicator (its collectives are copies).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
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

class ParallelGrid {
 public:
  // Collective over `world`: validates the shape (also against world->size()) and splits one
  // communicator per group. On an invalid shape every rank gets the same error, and nothing
  // was communicated.
  static StatusOr<ParallelGrid> create(std::shared_ptr<comm::Communicator> world,
                                       const GridShape& shape);

  const GridShape& shape() const { return shape_; }
  const GridCoord& coord() const { return coord_; }

  comm::Communicator& world() const { return *world_; }
  comm::Communicator& group(Group g) const { return *groups_[static_cast<int>(g)]; }
  comm::Communicator& tp() const { return group(Group::kTp); }
  comm::Communicator& cp() const { return group(Group::kCp); }
  comm::Communicator& dp() const { return group(Group::kDp); }
  comm::Communicator& dp_cp() const { return group(Group::kDpCp); }
  comm::Communicator& ep() const { return group(Group::kEp); }
  comm::Communicator& edp() const { return group(Group::kEdp); }

 private:
  ParallelGrid() = default;

  GridShape shape_;
  GridCoord coord_;
  std::shared_ptr<comm::Communicator> world_;
  std::shared_ptr<comm::Communicator> groups_[6];  // indexed by Group
};

}  // namespace grove::parallel
