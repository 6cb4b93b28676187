// ClusterSpec: what a cluster offers a training job, as data (docs/planning.md): nodes of
// `devices_per_node` identical devices, each with a peak FLOP/s per precision, a memory size, a
// memory bandwidth and calibrated efficiencies per kernel class; the links inside a node and
// between nodes (bandwidth per device, latency, topology). JSON in and out, validated in one
// place with messages that name the field and the fix; presets live in configs/clusters/.
//
// Units in the JSON: TFLOP/s, GiB, GB/s (1e9 bytes/s), microseconds. In the struct: FLOP/s,
// bytes, bytes/s, seconds.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>

#include "core/status.h"
#include "spec/enums.h"

namespace grove::planner {

// How the devices of a node are connected: every pair at full bandwidth through a switch
// (NVSwitch), or a shared medium (the host's memory for CPU ranks; PCIe), whose bandwidth the
// node's devices share when they communicate at once.
enum class IntraTopology { kSwitch, kShared };
// Between nodes: one NIC per device on its own rail of a non-blocking fabric (InfiniBand/RoCE,
// rail-optimised), or none (a single-node machine).
enum class InterTopology { kRails, kNone };

const char* intra_topology_name(IntraTopology t);  // "switch", "shared"
const char* inter_topology_name(InterTopology t);  // "rails", "none"

struct LinkSpec {
  double bandwidth = 0;  // bytes/s per device, one direction
  double latency = 0;    // seconds per message step (alpha)
  // Achieved share of `bandwidth` for the expert all-to-all (many small messages, incast);
  // 1 for a switch inside a node, lower across a fabric.
  double alltoall_efficiency = 1.0;
  // Seconds every blocking collective call waits for its peers to reach it, once per call (not
  // per message step): on a time-shared CPU the peers are descheduled part of the time, which
  // back-to-back benchmark calls (the ranks spinning together) do not show. 0 on dedicated
  // devices. Only the intra-node link's is used.
  double sync_latency = 0;
};

// Efficiency (achieved / peak) of one kernel class. GEMM efficiency depends on the size:
//   eff(flops) = gemm_max · flops / (flops + gemm_half_flops)
// (a saturating curve: small tensor-parallel shards run below the large-GEMM efficiency).
struct KernelEfficiency {
  double gemm_max = 0.7;
  double gemm_half_flops = 1e9;  // the GEMM size (FLOPs) at which half of gemm_max is reached
  double attention = 0.5;        // fused attention, forward and backward, of the matmul peak
  double memory = 0.7;           // memory-bound passes, of memory_bandwidth
};

struct DeviceSpec {
  std::string name;
  double peak_fp32 = 0;  // FLOP/s of dense matrix math in fp32 (TF32 tensor cores where used)
  double peak_bf16 = 0;  // FLOP/s of dense bf16 matrix math; 0 = not supported
  double memory_bytes = 0;
  double memory_bandwidth = 0;  // bytes/s of the device's memory
  KernelEfficiency efficiency;

  // Peak of the precision the step computes in: bf16 or fp32 (kAuto is the caller's to resolve).
  double peak(Precision p) const { return p == Precision::kBf16 ? peak_bf16 : peak_fp32; }
};

struct ClusterSpec {
  std::string name;
  std::string description;
  int devices_per_node = 1;
  int max_nodes = 0;  // 0 = no limit
  DeviceSpec device;
  LinkSpec intra;
  LinkSpec inter;
  IntraTopology intra_topology = IntraTopology::kSwitch;
  InterTopology inter_topology = InterTopology::kRails;
  // Whether a non-blocking collective proceeds while the device computes (NCCL on its own
  // stream: true). MPI progresses only inside MPI calls, so on CPU ranks the data-parallel
  // reductions Grove starts during the backward mostly run at the final wait: false.
  bool overlap_collectives = true;
  // Compute capacity, in cores, that the ranks of one node actually share (fractional: measured
  // as the summed throughput of concurrent single-thread GEMMs over one's alone); more ranks per
  // node than this slow compute (and memory passes) by ranks / shared_cores. 0 = devices_per_node
  // (one rank per device).
  double shared_cores = 0;

  Status Validate() const;
};

StatusOr<ClusterSpec> ClusterFromJson(const nlohmann::json& j);
nlohmann::json ClusterToJson(const ClusterSpec& c);
// Reads a cluster file; errors name the file and the field.
StatusOr<ClusterSpec> LoadCluster(const std::string& path);
// `name_or_path`: a file, or the name of a preset in `preset_dir` (NAME.json).
StatusOr<ClusterSpec> LoadClusterOrPreset(const std::string& name_or_path,
                                          const std::string& preset_dir);

}  // namespace grove::planner
