// Grid layout (spec/grid.h): coordinates and group memberships against hand-written tables, the
// partition invariants for many shapes, and the exact error messages for bad shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "spec/grid.h"

namespace grove::parallel {
namespace {

using Members = std::vector<std::vector<int>>;

// The distinct groups of kind g, each listed once, ordered by their lowest rank.
Members all_groups(const GridShape& s, Group g) {
  std::set<std::vector<int>> seen;
  for (int r = 0; r < s.world; ++r) seen.insert(group_members(s, g, r));
  return Members(seen.begin(), seen.end());
}

TEST(GridLayout, TwoByTwoByTwoByHand) {
  const GridShape s{.world = 8, .tp = 2, .cp = 2, .ep = 4, .dp = 2};
  ASSERT_TRUE(validate(s).ok());
  EXPECT_EQ(s.edp(), 2);
  // rank: tp cp dp | ep edp
  const int table[8][5] = {{0, 0, 0, 0, 0}, {1, 0, 0, 1, 0}, {0, 1, 0, 2, 0}, {1, 1, 0, 3, 0},
                           {0, 0, 1, 0, 1}, {1, 0, 1, 1, 1}, {0, 1, 1, 2, 1}, {1, 1, 1, 3, 1}};
  for (int r = 0; r < 8; ++r) {
    GridCoord c = grid_coord(s, r);
    EXPECT_EQ(c.rank, r);
    EXPECT_EQ(c.tp, table[r][0]) << r;
    EXPECT_EQ(c.cp, table[r][1]) << r;
    EXPECT_EQ(c.dp, table[r][2]) << r;
    EXPECT_EQ(c.ep, table[r][3]) << r;
    EXPECT_EQ(c.edp, table[r][4]) << r;
    EXPECT_EQ(dense_rank(s, c.tp, c.cp, c.dp), r);
    EXPECT_EQ(expert_rank(s, c.ep, c.edp), r);
  }
  EXPECT_EQ(all_groups(s, Group::kTp), (Members{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(all_groups(s, Group::kCp), (Members{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(all_groups(s, Group::kDp), (Members{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(all_groups(s, Group::kDpCp), (Members{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(all_groups(s, Group::kEp), (Members{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(all_groups(s, Group::kEdp), (Members{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
}

TEST(GridLayout, TwoByTwoByHand) {
  // tp=2, dp=2, ep=2: the expert groups coincide with tp and dp.
  GridShape s{.world = 4, .tp = 2, .cp = 1, .ep = 2, .dp = 2};
  ASSERT_TRUE(validate(s).ok());
  EXPECT_EQ(all_groups(s, Group::kTp), (Members{{0, 1}, {2, 3}}));
  EXPECT_EQ(all_groups(s, Group::kCp), (Members{{0}, {1}, {2}, {3}}));
  EXPECT_EQ(all_groups(s, Group::kDp), (Members{{0, 2}, {1, 3}}));
  EXPECT_EQ(all_groups(s, Group::kEp), (Members{{0, 1}, {2, 3}}));
  EXPECT_EQ(all_groups(s, Group::kEdp), (Members{{0, 2}, {1, 3}}));
  // cp=2, dp=2, ep=4: one expert group over everything, edp of size one.
  s = {.world = 4, .tp = 1, .cp = 2, .ep = 4, .dp = 2};
  ASSERT_TRUE(validate(s).ok());
  EXPECT_EQ(all_groups(s, Group::kCp), (Members{{0, 1}, {2, 3}}));
  EXPECT_EQ(all_groups(s, Group::kDp), (Members{{0, 2}, {1, 3}}));
  EXPECT_EQ(all_groups(s, Group::kDpCp), (Members{{0, 1, 2, 3}}));
  EXPECT_EQ(all_groups(s, Group::kEp), (Members{{0, 1, 2, 3}}));
  EXPECT_EQ(all_groups(s, Group::kEdp), (Members{{0}, {1}, {2}, {3}}));
}

TEST(GridLayout, NonPowerOfTwoByHand) {
  // world 12 = tp 2 × cp 3 × dp 2; ep 4, edp 3.
  const GridShape s{.world = 12, .tp = 2, .cp = 3, .ep = 4, .dp = 2};
  ASSERT_TRUE(validate(s).ok());
  EXPECT_EQ(group_members(s, Group::kCp, 7), (std::vector<int>{7, 9, 11}));
  EXPECT_EQ(group_members(s, Group::kDp, 3), (std::vector<int>{3, 9}));
  EXPECT_EQ(group_members(s, Group::kDpCp, 4), (std::vector<int>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(group_members(s, Group::kEp, 6), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(group_members(s, Group::kEdp, 6), (std::vector<int>{2, 6, 10}));
  GridCoord c = grid_coord(s, 11);
  EXPECT_EQ((std::vector<int>{c.tp, c.cp, c.dp, c.ep, c.edp}), (std::vector<int>{1, 2, 1, 3, 2}));
}

// For any valid shape: each kind of group partitions the ranks into equal groups of the right
// size, each member's group is the same list, and ranks in a group differ exactly in that
// group's coordinates.
void check_partition(const GridShape& s) {
  SCOPED_TRACE(s.str());
  for (Group g : kAllGroups) {
    SCOPED_TRACE(group_name(g));
    Members groups = all_groups(s, g);
    ASSERT_EQ(int(groups.size()) * group_size(s, g), s.world);
    std::vector<int> seen(s.world, 0);
    for (const auto& m : groups) {
      ASSERT_EQ(int(m.size()), group_size(s, g));
      ASSERT_TRUE(std::is_sorted(m.begin(), m.end()));
      for (size_t i = 0; i < m.size(); ++i) {
        ++seen[m[i]];
        EXPECT_EQ(group_members(s, g, m[i]), m);
        GridCoord a = grid_coord(s, m[0]), b = grid_coord(s, m[i]);
        switch (g) {
          case Group::kTp:
            EXPECT_TRUE(a.cp == b.cp && a.dp == b.dp && b.tp == int(i));
            break;
          case Group::kCp:
            EXPECT_TRUE(a.tp == b.tp && a.dp == b.dp && b.cp == int(i));
            break;
          case Group::kDp:
            EXPECT_TRUE(a.tp == b.tp && a.cp == b.cp && b.dp == int(i));
            break;
          case Group::kDpCp:
            EXPECT_TRUE(a.tp == b.tp && b.cp + s.cp * b.dp == int(i));
            break;
          case Group::kEp:
            EXPECT_TRUE(a.edp == b.edp && b.ep == int(i));
            break;
          case Group::kEdp:
            EXPECT_TRUE(a.ep == b.ep && b.edp == int(i));
            break;
        }
      }
    }
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), s.world);
  }
}

TEST(GridLayout, EveryShapeUpTo16PartitionsTheRanks) {
  int shapes = 0;
  for (int world = 1; world <= 16; ++world)
    for (int tp = 1; tp <= world; ++tp)
      for (int cp = 1; tp * cp <= world; ++cp) {
        if (world % (tp * cp)) continue;
        const int dp = world / (tp * cp);
        for (int ep = 1; ep <= world; ++ep) {
          if (world % ep) continue;
          GridShape s{.world = world, .tp = tp, .cp = cp, .ep = ep, .dp = dp};
          ASSERT_TRUE(validate(s).ok()) << s.str();
          check_partition(s);
          ++shapes;
        }
      }
  EXPECT_GT(shapes, 200);
}

TEST(GridLayout, BadShapesGiveExactMessages) {
  auto msg = [](GridShape s) { return validate(s).message(); };
  EXPECT_EQ(msg({.world = 4, .tp = 3, .cp = 1, .ep = 1, .dp = 1}), "tp=3 × cp=1 × dp=1 ≠ world 4");
  EXPECT_EQ(msg({.world = 8, .tp = 2, .cp = 2, .ep = 1, .dp = 1}), "tp=2 × cp=2 × dp=1 ≠ world 8");
  EXPECT_EQ(msg({.world = 8, .tp = 2, .cp = 2, .ep = 3, .dp = 2}),
            "ep=3 does not divide tp × cp × dp = 8");
  EXPECT_EQ(msg({.world = 4, .tp = 2, .cp = 1, .ep = 8, .dp = 2}),
            "ep=8 does not divide tp × cp × dp = 4");
  EXPECT_EQ(msg({.world = 4, .tp = 0, .cp = 1, .ep = 1, .dp = 4}),
            "tp=0: parallel sizes must be at least 1");
  EXPECT_EQ(msg({.world = 4, .tp = 4, .cp = 1, .ep = 1, .dp = -1}),
            "dp=-1: parallel sizes must be at least 1");
  EXPECT_EQ(msg({.world = 0, .tp = 1, .cp = 1, .ep = 1, .dp = 1}),
            "world=0: parallel sizes must be at least 1");
}

}  // namespace
}  // namespace grove::parallel
