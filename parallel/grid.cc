#include "parallel/grid.h"

#include <algorithm>
#include <sstream>

namespace grove::parallel {

StatusOr<ParallelGrid> ParallelGrid::create(std::shared_ptr<comm::Communicator> world,
                                            const GridShape& shape) {
  GROVE_CHECK(world) << "ParallelGrid::create needs a world communicator";
  GROVE_RETURN_IF_ERROR(validate(shape));
  if (shape.world != world->size()) {
    std::ostringstream os;
    os << "world " << shape.world << " ≠ communicator size " << world->size() << " (group '"
       << world->name() << "')";
    return Status::Error(os.str());
  }
  ParallelGrid grid;
  grid.shape_ = shape;
  grid.coord_ = grid_coord(shape, world->rank());
  grid.world_ = world;
  for (Group g : kAllGroups) {
    // The group's lowest rank names it (color); the position in it orders it (key).
    const std::vector<int> members = group_members(shape, g, world->rank());
    const int color = *std::min_element(members.begin(), members.end());
    const int key = static_cast<int>(std::find(members.begin(), members.end(), world->rank()) -
                                     members.begin());
    std::unique_ptr<comm::Communicator> c = world->split(color, key, group_name(g));
    // The communicator's members are world ranks of `world`'s own world; map ours onto them.
    std::vector<int> expected;
    for (int r : members) expected.push_back(world->info().world_ranks[r]);
    GROVE_CHECK(c && c->info().world_ranks == expected)
        << "group " << group_name(g) << " of " << shape.str()
        << " does not have the layout's members";
    grid.groups_[static_cast<int>(g)] = std::move(c);
  }
  return grid;
}

}  // namespace grove::parallel
