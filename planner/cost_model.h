// The cost model: predicted step time, MFU and memory per device of one training step of a Grove
// model at one layout on one cluster (docs/planning.md has the formulas and their sources).
//
// Per micro-batch and per rank it adds, layer by layer, what Grove's step does
// (model/transformer_impl.h):
//  - compute: every GEMM at its size-dependent efficiency (KernelEfficiency), attention at the
//    attention efficiency (causal work; the backward re-forms P unless recompute = none keeps
//    it), memory-bound passes (norms, RoPE, SwiGLU, residuals, cross-entropy, permutations,
//    AdamW) at the memory bandwidth; full recompute re-runs every block's forward;
//  - tensor + sequence parallel all-gathers / reduce-scatters (or all-reduces without SP), the
//    vocabulary-parallel head's reductions and the replicated weights' gradient sums; blocking;
//  - context parallel tree attention (all-gather Q, MAX all-reduce of lse, reduce-scatter of the
//    partials; the backward's gathers and dQ reduce-scatter) or ring attention (K/V passes
//    overlapped with the blocks' compute); blocking otherwise;
//  - the expert all-to-alls (counts, dispatch, combine, both backward ones; blocking, not
//    overlapped), with LSH the rows of the experts' GEMMs and the all-to-all bytes divided by
//    the compression ratio;
//  - the data-parallel gradient sums, one per layer range (dense over dp×cp, experts over edp),
//    started as each block's backward ends on the last micro-batch: overlapped with the rest of
//    the backward when the cluster's collectives progress in the background
//    (ClusterSpec::overlap_collectives), else exposed whole;
//  - a pipeline (pp > 1) is modelled only to reproduce published configurations (1F1B with v
//    virtual stages: bubble (pp − 1)/v micro-batches); Grove itself trains with pp = 1.
// Memory: spec/memory.h's activation formula (scaled to the activation precision) plus the MoE
// layers' stash, parameters, gradients and AdamW state of the rank's shard.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "planner/cluster.h"
#include "spec/enums.h"
#include "spec/model_config.h"

namespace grove::planner {

struct Layout {
  int tp = 1, cp = 1, ep = 1, dp = 1;
  int pp = 1;          // pipeline stages (published configurations only; Grove runs pp = 1)
  int pp_virtual = 1;  // interleaved virtual stages per device (pp > 1)
  Recompute recompute = Recompute::kSelective;
  bool sp = true;       // sequence parallelism when tp > 1
  int micro_batch = 1;  // sequences per data-parallel rank per micro-batch
  int grad_accum = 1;   // micro-batches per optimizer step
  int world() const { return tp * cp * dp * pp; }
  std::string str() const;  // "tp2 cp1 ep2 dp2 selective mb4x1"
};

struct Workload {
  ModelConfig model;
  int seq_len = 128;
  Precision precision = Precision::kFp32;  // compute precision (kAuto is not accepted)
  CpAttention cp_attention = CpAttention::kTree;
  // LSH compression of the expert all-to-all: (token, slot) rows per centroid sent (1 = off).
  // docs/lsh.md: the experts compute on the centroids, so their GEMM rows shrink by it too.
  double lsh_ratio = 1.0;
  // Most loaded expert-parallel rank's rows over the mean (1 = balanced routing).
  double expert_imbalance = 1.0;
  // Optimizer state: whether the AdamW state and fp32 master weights are sharded over the
  // data-parallel group (a distributed optimizer; Grove: false).
  bool shard_optimizer = false;
};

// One named share of the step, in seconds (the parts sum to the step time).
struct StepPart {
  std::string name;
  double seconds = 0;
};

struct MemoryPerDevice {
  double activations = 0, parameters = 0, gradients = 0, optimizer = 0, moe_buffers = 0;
  double total = 0;
};

struct Prediction {
  Layout layout;
  double step_s = 0;
  double tokens_per_s = 0;
  double model_flops = 0;           // per step, all ranks (ModelConfig::training_flops)
  double mfu = 0;                   // model_flops / (step_s · world · peak)
  std::vector<StepPart> parts;      // compute, recompute, each collective (exposed), bubble
  double dp_reduction_total_s = 0;  // the data-parallel sums before overlap
  MemoryPerDevice memory;
  double device_memory = 0;                    // bytes per device of the cluster
  bool fits = true;                            // memory.total <= usable share of device_memory
  double part(const std::string& name) const;  // 0 when absent
};

// Share of device memory a plan may fill (the rest: workspaces, fragmentation, the runtime).
inline constexpr double kUsableMemoryFraction = 0.9;

// OK, or why `layout` cannot run `workload` (divisibility, ranks, cluster size), naming the
// field: e.g. "tp=3 does not divide model.n_heads=8".
Status CheckLayout(const Workload& w, const Layout& l, const ClusterSpec& c);

// The prediction; `layout` must pass CheckLayout.
Prediction Predict(const Workload& w, const Layout& l, const ClusterSpec& c);

// Memory per device of the layout (part of Predict).
MemoryPerDevice PredictMemory(const Workload& w, const Layout& l);

// The cluster as one rank of `ranks_per_node` sees it: more ranks than shared cores divide the
// compute, and a shared intra-node medium divides its bandwidth among the node's ranks.
ClusterSpec EffectiveCluster(const ClusterSpec& c, int ranks_per_node);

}  // namespace grove::planner
