// Small value types shared by the communicator, its backends and the watchdog.
//
// GroupInfo names a group of ranks for error messages: which group, which member, which world
// ranks belong to it. OpRecord describes one in-flight operation for the watchdog.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace grove::comm {

enum class ReduceOp : uint8_t { kSum, kMax };
const char* reduce_op_name(ReduceOp op);

enum class OpKind : uint8_t {
  kAllReduce,
  kAllGather,
  kReduceScatter,
  kAllToAll,
  kAllToAllV,
  kBroadcast,
  kSend,
  kRecv,
  kBarrier,
  kSplit,  // creating a sub-communicator (collective over the parent)
  kInit,   // creating a communicator (collective over its members)
};
const char* op_kind_name(OpKind kind);

// A group of ranks. world_ranks lists the members in group-rank order (world_ranks[r] is the
// world rank of group rank r), so world_ranks.size() is the group size.
struct GroupInfo {
  std::string name;
  int rank = 0;
  std::vector<int> world_ranks;

  int size() const { return static_cast<int>(world_ranks.size()); }
  int world_rank() const { return world_ranks.at(rank); }
  // "group 'tp' (rank 1 of 2, world rank 3; members 2,3)"
  std::string describe() const;
};

// One operation as the watchdog reports it.
struct OpRecord {
  OpKind kind = OpKind::kBarrier;
  int64_t count = 0;  // elements (per rank for all_gather / reduce_scatter / all_to_all)
  DType dtype = DType::kU8;
  ReduceOp op = ReduceOp::kSum;  // all_reduce / reduce_scatter only
  int peer = -1;                 // root (broadcast), destination (send) or source (recv)
  std::shared_ptr<const GroupInfo> group;

  // "all_reduce(sum, 1024 x f32) on group 'tp' (rank 1 of 2, world rank 3; members 2,3)"
  std::string describe() const;
};

}  // namespace grove::comm
