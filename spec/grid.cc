#include "spec/grid.h"

#include <sstream>

namespace grove::parallel {

std::string GridShape::str() const {
  std::ostringstream os;
  os << "world=" << world << " tp=" << tp << " cp=" << cp << " ep=" << ep << " dp=" << dp;
  return os.str();
}

Status validate(const GridShape& s) {
  const std::pair<const char*, int> sizes[] = {
      {"world", s.world}, {"tp", s.tp}, {"cp", s.cp}, {"ep", s.ep}, {"dp", s.dp}};
  for (const auto& [name, v] : sizes) {
    if (v < 1) {
      std::ostringstream os;
      os << name << "=" << v << ": parallel sizes must be at least 1";
      return Status::Error(os.str());
    }
  }
  const int64_t dense = int64_t{s.tp} * s.cp * s.dp;
  if (dense != s.world) {
    std::ostringstream os;
    os << "tp=" << s.tp << " × cp=" << s.cp << " × dp=" << s.dp << " ≠ world " << s.world;
    return Status::Error(os.str());
  }
  if (dense % s.ep != 0) {
    std::ostringstream os;
    os << "ep=" << s.ep << " does not divide tp × cp × dp = " << dense;
    return Status::Error(os.str());
  }
  return Status::Ok();
}

const char* group_name(Group g) {
  switch (g) {
    case Group::kTp:
      return "tp";
    case Group::kCp:
      return "cp";
    case Group::kDp:
      return "dp";
    case Group::kDpCp:
      return "dp_cp";
    case Group::kEp:
      return "ep";
    case Group::kEdp:
      return "edp";
  }
  return "?";
}

GridCoord grid_coord(const GridShape& s, int rank) {
  GROVE_CHECK(rank >= 0 && rank < s.world) << "rank " << rank << " outside " << s.str();
  GridCoord c;
  c.rank = rank;
  c.tp = rank % s.tp;
  c.cp = rank / s.tp % s.cp;
  c.dp = rank / (s.tp * s.cp);
  c.ep = rank % s.ep;
  c.edp = rank / s.ep;
  return c;
}

int dense_rank(const GridShape& s, int tp_rank, int cp_rank, int dp_rank) {
  return tp_rank + s.tp * (cp_rank + s.cp * dp_rank);
}

int expert_rank(const GridShape& s, int ep_rank, int edp_rank) {
  return ep_rank + s.ep * edp_rank;
}

int group_size(const GridShape& s, Group g) {
  switch (g) {
    case Group::kTp:
      return s.tp;
    case Group::kCp:
      return s.cp;
    case Group::kDp:
      return s.dp;
    case Group::kDpCp:
      return s.cp * s.dp;
    case Group::kEp:
      return s.ep;
    case Group::kEdp:
      return s.edp();
  }
  return 0;
}

std::vector<int> group_members(const GridShape& s, Group g, int rank) {
  const GridCoord c = grid_coord(s, rank);
  std::vector<int> m;
  const int n = group_size(s, g);
  for (int i = 0; i < n; ++i) {
    switch (g) {
      case Group::kTp:
        m.push_back(dense_rank(s, i, c.cp, c.dp));
        break;
      case Group::kCp:
        m.push_back(dense_rank(s, c.tp, i, c.dp));
        break;
      case Group::kDp:
        m.push_back(dense_rank(s, c.tp, c.cp, i));
        break;
      case Group::kDpCp:
        m.push_back(dense_rank(s, c.tp, i % s.cp, i / s.cp));
        break;
      case Group::kEp:
        m.push_back(expert_rank(s, i, c.edp));
        break;
      case Group::kEdp:
        m.push_back(expert_rank(s, c.ep, i));
        break;
    }
  }
  return m;
}

}  // namespace grove::parallel
