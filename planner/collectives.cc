#include "planner/collectives.h"

#include <algorithm>
#include <cmath>

namespace grove::planner {

namespace {

double Log2Ceil(int n) {
  return n <= 1 ? 0.0 : std::ceil(std::log2(double(n)));
}

bool Spans(const ClusterSpec& c, const GroupSpan& g) {
  return g.nodes() > 1 && c.inter_topology == InterTopology::kRails;
}

double Alpha(const ClusterSpec& c, const GroupSpan& g) {
  return Spans(c, g) ? std::max(c.inter.latency, c.intra.latency) : c.intra.latency;
}

// The wait for the peers of one blocking call to be scheduled (time-shared CPUs; 0 otherwise).
double Sync(const ClusterSpec& c) {
  return c.intra.sync_latency;
}

// Seconds per byte of the group's bottleneck (1 / B_eff).
double InvBandwidth(const ClusterSpec& c, const GroupSpan& g) {
  const double intra = 1.0 / c.intra.bandwidth;
  if (!Spans(c, g)) return intra;
  const double inter = 1.0 / (double(g.per_node) * c.inter.bandwidth);
  return g.per_node > 1 ? std::max(intra, inter) : inter;
}

}  // namespace

GroupSpan SpanOf(int size, int stride, int devices_per_node) {
  GroupSpan g;
  g.size = std::max(1, size);
  const int span = stride * (g.size - 1) + 1;  // ranks from the first member to the last
  if (span <= devices_per_node)
    g.per_node = g.size;
  else
    g.per_node = std::clamp(devices_per_node / std::max(1, stride), 1, g.size);
  return g;
}

double AllReduceTime(const ClusterSpec& c, const GroupSpan& g, double bytes, AllReduceAlgo algo) {
  const int n = g.size;
  if (n <= 1 || bytes <= 0) return 0.0;
  const double inv_bw = InvBandwidth(c, g);
  if (algo == AllReduceAlgo::kRing)
    return Sync(c) + 2.0 * (n - 1) * Alpha(c, g) + 2.0 * (n - 1) / n * bytes * inv_bw;
  const double inter_alpha = Spans(c, g) ? c.inter.latency : 0.0;
  return Sync(c) +
         2.0 * (Log2Ceil(g.per_node) * c.intra.latency + Log2Ceil(g.nodes()) * inter_alpha) +
         2.0 * bytes * inv_bw;
}

double AllReduceTime(const ClusterSpec& c, const GroupSpan& g, double bytes) {
  return std::min(AllReduceTime(c, g, bytes, AllReduceAlgo::kRing),
                  AllReduceTime(c, g, bytes, AllReduceAlgo::kTree));
}

double AllGatherTime(const ClusterSpec& c, const GroupSpan& g, double gathered_bytes) {
  const int n = g.size;
  if (n <= 1 || gathered_bytes <= 0) return 0.0;
  return Sync(c) + (n - 1) * Alpha(c, g) + double(n - 1) / n * gathered_bytes * InvBandwidth(c, g);
}

double ReduceScatterTime(const ClusterSpec& c, const GroupSpan& g, double input_bytes) {
  return AllGatherTime(c, g, input_bytes);
}

double AllToAllTime(const ClusterSpec& c, const GroupSpan& g, double bytes_per_rank) {
  const int n = g.size;
  if (n <= 1 || bytes_per_rank <= 0) return 0.0;
  const int local = std::min(g.per_node, n);
  const double intra =
      double(local - 1) / n * bytes_per_rank / (c.intra.alltoall_efficiency * c.intra.bandwidth);
  double inter = 0.0;
  if (Spans(c, g))
    inter =
        double(n - local) / n * bytes_per_rank / (c.inter.alltoall_efficiency * c.inter.bandwidth);
  return Sync(c) + Log2Ceil(n) * Alpha(c, g) + std::max(intra, inter);
}

double PointToPointTime(const ClusterSpec& c, bool crosses_nodes, double bytes) {
  if (bytes <= 0) return 0.0;
  const LinkSpec& l =
      crosses_nodes && c.inter_topology == InterTopology::kRails ? c.inter : c.intra;
  return Sync(c) + l.latency + bytes / l.bandwidth;
}

}  // namespace grove::planner
