// Time of one collective on a ClusterSpec, from the latency-bandwidth (alpha-beta) formulas of
// the algorithms NCCL and MPI use (docs/planning.md#collectives):
//
//   n ranks, g of them per node, m = n / g nodes, S bytes, alpha latency, B bandwidth per device
//   B_eff = B_intra inside one node; across nodes the rails give each node g NICs, so
//           1/B_eff = max(1/B_intra, 1/(g · B_inter))   (g = 1: the rank's own NIC)
//   all-reduce, ring:  2(n−1)·alpha + 2(n−1)/n · S / B_eff
//   all-reduce, tree:  2(⌈log2 g⌉·alpha_intra + ⌈log2 m⌉·alpha_inter) + 2 · S / B_eff
//                      (NCCL takes the faster of the two)
//   all-gather / reduce-scatter (ring), S the gathered size: (n−1)·alpha + (n−1)/n · S / B_eff
//   all-to-all(v), S the bytes one rank sends (balanced): ⌈log2 n⌉·alpha +
//       max((g−1)/n · S / (e_intra·B_intra), (n−g)/n · S / (e_inter·B_inter))
//   point-to-point: alpha + S / B of the link it crosses
// alpha is the inter-node latency as soon as the group spans nodes.
#pragma once

#include <cstdint>

#include "planner/cluster.h"

namespace grove::planner {

// A communication group: its size and how many of its ranks share a node (1 <= per_node <=
// size; per_node = size: the whole group in one node).
struct GroupSpan {
  int size = 1;
  int per_node = 1;
  int nodes() const { return (size + per_node - 1) / per_node; }
};

// The span of a group of `size` ranks whose members are `stride` ranks apart, with ranks placed
// on nodes of `devices_per_node` in rank order (Grove's grid, spec/grid.h).
GroupSpan SpanOf(int size, int stride, int devices_per_node);

enum class AllReduceAlgo { kRing, kTree };

double AllReduceTime(const ClusterSpec& c, const GroupSpan& g, double bytes, AllReduceAlgo algo);
double AllReduceTime(const ClusterSpec& c, const GroupSpan& g, double bytes);  // the faster
double AllGatherTime(const ClusterSpec& c, const GroupSpan& g, double gathered_bytes);
double ReduceScatterTime(const ClusterSpec& c, const GroupSpan& g, double input_bytes);
double AllToAllTime(const ClusterSpec& c, const GroupSpan& g, double bytes_per_rank);
double PointToPointTime(const ClusterSpec& c, bool crosses_nodes, double bytes);

}  // namespace grove::planner
