// Calibration: a ClusterSpec for a machine from measurements of its own kernels and collectives
// (docs/planning.md#calibration). The measurements are the JSON lines of Grove's benchmarks:
//   bench_sgemm      {"name":"sgemm","config":{"M":..,"N":..,"K":..},"value":GFLOP/s}
//   bench_attention  {"name":"attention_forward"|"attention_backward","config":{SQ,SK,B,NH,HD,
//                     causal},"value":ms}
//   comm_bench       {"name":"comm/all_reduce"|..,"config":{"np":n,"bytes":S},"time_us":t}
// and the step time of one single-rank training run (the memory-bound passes' bandwidth is what
// that step leaves after the GEMMs and the attention).
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "planner/cluster.h"
#include "planner/cost_model.h"

namespace grove::planner {

struct GemmSample {
  double flops = 0;   // 2·M·N·K
  double gflops = 0;  // measured
};
struct CollectiveSample {
  std::string collective;  // all_reduce, all_gather, reduce_scatter, all_to_all_v
  int ranks = 2;
  double bytes = 0;  // comm_bench's message size S
  double seconds = 0;
};
struct AttentionSample {
  double flops = 0;  // causal forward 2·S²·d·heads·batch, backward 2.5× that
  double seconds = 0;
};

struct BenchSamples {
  std::vector<GemmSample> gemm;
  std::vector<AttentionSample> attention;
  std::vector<CollectiveSample> collectives;
};

// Parses benchmark JSON lines; unknown lines are skipped, malformed ones are errors naming the
// line number.
StatusOr<BenchSamples> ParseBenchLines(const std::string& text);

// Least-squares fit of time = (flops + half) / P over the GEMM samples (1/g linear in 1/flops):
// P the large-GEMM throughput, half the size at which half of it is reached.
struct GemmFit {
  double throughput = 0;  // FLOP/s
  double half_flops = 0;
};
StatusOr<GemmFit> FitGemm(const std::vector<GemmSample>& samples);

// Least-squares fit (relative error) of alpha and the node's shared bandwidth from collectives
// measured inside one node with the formulas of planner/collectives.h, the bandwidth shared by
// the `ranks` of the node (IntraTopology::kShared).
struct LinkFit {
  double latency = 0;         // seconds
  double node_bandwidth = 0;  // bytes/s, shared by the node's ranks
};
StatusOr<LinkFit> FitSharedLink(const std::vector<CollectiveSample>& samples);

// The cluster description of this machine: the fits above, the attention efficiency, and the
// memory-bound bandwidth that makes the predicted single-rank step of `workload` at `layout`
// equal `measured_step_s`. `cores`: the cores the ranks share. `step_latency_s` > 0: the time one
// blocking collective of 2 ranks takes between the compute phases of a training step (a
// multi-rank run's all-to-all time per call); what it exceeds the fitted alpha by is the link's
// sync_latency (on a time-shared CPU a collective waits for its peers to be scheduled, which
// back-to-back comm_bench calls, the ranks spinning together, do not show).
StatusOr<ClusterSpec> CalibrateCpuCluster(const BenchSamples& samples, const Workload& workload,
                                          const Layout& layout, double measured_step_s,
                                          double cores, double memory_gib, std::string name,
                                          double step_latency_s = 0);

}  // namespace grove::planner
