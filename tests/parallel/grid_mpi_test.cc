// ParallelGrid over real communicators: for every shape the world admits (all tp × cp × dp
// factorisations, every ep dividing the world; at np=4 every 2×2 and at np=8 every 2×2×2 grid),
// each group's communicator has exactly the layout's members in order, and collectives over it
// produce the closed-form results. Run at np = 1, 2, 3, 4, 8.
#include <gtest/gtest.h>

#include <numeric>

#include "parallel/grid.h"
#include "tests/comm/mpi_test_env.h"

namespace grove::parallel {
namespace {

// A non-owning shared_ptr to the harness' world (the grid shares ownership of what it is given).
std::shared_ptr<comm::Communicator> world_ptr() {
  return std::shared_ptr<comm::Communicator>(&test::world(), [](comm::Communicator*) {});
}

void check_grid(const GridShape& s) {
  SCOPED_TRACE(s.str());
  StatusOr<ParallelGrid> made = ParallelGrid::create(world_ptr(), s);
  ASSERT_TRUE(made.ok()) << made.status().message();
  const ParallelGrid& grid = made.value();
  const int r = test::world().rank();
  const GridCoord want = grid_coord(s, r);
  EXPECT_EQ(grid.coord().tp, want.tp);
  EXPECT_EQ(grid.coord().cp, want.cp);
  EXPECT_EQ(grid.coord().dp, want.dp);
  EXPECT_EQ(grid.coord().ep, want.ep);
  EXPECT_EQ(grid.coord().edp, want.edp);
  EXPECT_EQ(&grid.world(), &test::world());
  EXPECT_EQ(grid.tp().rank(), want.tp);
  EXPECT_EQ(grid.cp().rank(), want.cp);
  EXPECT_EQ(grid.dp().rank(), want.dp);
  EXPECT_EQ(grid.dp_cp().rank(), want.cp + s.cp * want.dp);
  EXPECT_EQ(grid.ep().rank(), want.ep);
  EXPECT_EQ(grid.edp().rank(), want.edp);

  for (Group g : kAllGroups) {
    SCOPED_TRACE(group_name(g));
    comm::Communicator& c = grid.group(g);
    const std::vector<int> members = group_members(s, g, r);
    EXPECT_EQ(c.name(), group_name(g));
    EXPECT_EQ(c.size(), int(members.size()));
    EXPECT_EQ(c.info().world_ranks, members);
    EXPECT_EQ(members[c.rank()], r);
    // Who is really on the other end: gather world ranks, and sum (rank + 1) · 3 exactly.
    Tensor mine = Tensor::empty({1}, DType::kI32);
    mine.data<int32_t>()[0] = r;
    Tensor all = Tensor::empty({c.size()}, DType::kI32);
    c.all_gather(mine, all);
    EXPECT_EQ(std::vector<int>(all.data<int32_t>(), all.data<int32_t>() + c.size()), members);
    Tensor sum = Tensor::empty({2}, DType::kI64);
    sum.data<int64_t>()[0] = r + 1;
    sum.data<int64_t>()[1] = 3;
    c.all_reduce(sum, comm::ReduceOp::kSum);
    int64_t want_sum = 0;
    for (int m : members) want_sum += m + 1;
    EXPECT_EQ(sum.data<int64_t>()[0], want_sum);
    EXPECT_EQ(sum.data<int64_t>()[1], 3 * c.size());
  }
}

TEST(GridMpi, EveryShapeOfThisWorld) {
  const int n = test::world().size();
  int grids = 0;
  for (int tp = 1; tp <= n; ++tp)
    for (int cp = 1; tp * cp <= n; ++cp) {
      if (n % (tp * cp)) continue;
      for (int ep = 1; ep <= n; ++ep) {
        if (n % ep) continue;
        check_grid({.world = n, .tp = tp, .cp = cp, .ep = ep, .dp = n / (tp * cp)});
        ++grids;
      }
    }
  if (test::world().rank() == 0) std::printf("checked %d grid shapes at world %d\n", grids, n);
}

TEST(GridMpi, BadShapesFailOnEveryRankWithoutCommunicating) {
  const int n = test::world().size();
  StatusOr<ParallelGrid> g =
      ParallelGrid::create(world_ptr(), {.world = n, .tp = n + 1, .cp = 1, .ep = 1, .dp = 1});
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().message(),
            "tp=" + std::to_string(n + 1) + " × cp=1 × dp=1 ≠ world " + std::to_string(n));
  g = ParallelGrid::create(world_ptr(), {.world = 2 * n, .tp = 2 * n, .cp = 1, .ep = 1, .dp = 1});
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().message(), "world " + std::to_string(2 * n) + " ≠ communicator size " +
                                      std::to_string(n) + " (group 'world')");
  test::world().barrier();
}

TEST(GridMpi, GridIsCopyableAndSharesItsCommunicators) {
  const int n = test::world().size();
  StatusOr<ParallelGrid> made =
      ParallelGrid::create(world_ptr(), {.world = n, .tp = n, .cp = 1, .ep = n, .dp = 1});
  ASSERT_TRUE(made.ok());
  ParallelGrid copy = made.value();
  EXPECT_EQ(&copy.tp(), &made.value().tp());
  Tensor t = Tensor::zeros({1}, DType::kI32);
  t.data<int32_t>()[0] = 1;
  copy.tp().all_reduce(t, comm::ReduceOp::kSum);
  EXPECT_EQ(t.data<int32_t>()[0], n);
}

}  // namespace
}  // namespace grove::parallel
