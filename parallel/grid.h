// ParallelGrid: the communicator of every parallel group of a rank.
//
// Built once from a GridShape and passed explicitly to everything that communicates; there is no
// global process-group state. The layout (rank order, group members) is spec/grid.h's; a group of
// size one is still a communicator (its collectives are copies).
#pragma once

#include <memory>

#include "comm/communicator.h"
#include "core/status.h"
#include "spec/grid.h"

namespace grove::parallel {

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
