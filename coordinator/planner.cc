#include "coordinator/planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "planner/search.h"

namespace grove::coordinator {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

Status Err(const std::string& m) {
  return Status::Error(m);
}

// Why `tp` cannot split this model (empty when it can). The sequence shard is checked whether
// or not the request asks for sequence parallelism.
std::string TpModelConflict(const TrainConfig& c, int tp, int cp) {
  return TensorParallelConflict(c.model, c.train.seq_len, tp, cp, /*sp=*/true);
}

// Bytes per rank at (tp, cp, ep) over `world` ranks: the rank's micro-batch is train.batch_size
// over dp = world / (tp · cp) (as the worker splits it), the experts are split over ep and the MoE
// layers' stash is counted (spec/memory.h; the cost model's PredictMemory at fp32 equals it).
MemoryEstimate Estimate(const TrainConfig& c, int world, int tp, int cp, int ep, Recompute r,
                        bool sp) {
  MemoryLayout l;
  l.batch = std::max(1, c.train.batch_size / std::max(1, world / (tp * cp)));
  l.seq = c.train.seq_len / cp;
  l.tp = tp;
  l.sp = sp && tp > 1;
  l.recompute = r;
  l.ep = ep;
  return EstimateMemory(c.model, l);
}

}  // namespace

std::string FormatGiB(int64_t bytes);

namespace {

// The request's cluster as the job sees it: ranks_per_host devices per node, enough nodes.
planner::ClusterSpec JobCluster(const PlanRequest& r, int per_host) {
  planner::ClusterSpec cluster = *r.cluster;
  cluster.devices_per_node = per_host;
  if (cluster.max_nodes > 0 && r.world_size > per_host * cluster.max_nodes)
    cluster.max_nodes = (r.world_size + per_host - 1) / per_host;  // the job's own hosts
  return cluster;
}

// The job's step as the cost model sees it. An LSH ratio is known only once the job ran: it is
// planned and predicted as if uncompressed (conservative).
planner::Workload JobWorkload(const TrainConfig& config, const planner::ClusterSpec& cluster) {
  planner::Workload w;
  w.model = config.model;
  w.seq_len = config.train.seq_len;
  w.precision = config.train.precision != Precision::kAuto ? config.train.precision
                : config.train.device == Device::kCUDA     ? Precision::kBf16
                                                           : Precision::kFp32;
  if (w.precision == Precision::kBf16 && cluster.device.peak_bf16 <= 0)
    w.precision = Precision::kFp32;
  w.cp_attention = config.parallel.cp_attention;
  return w;
}

// The fastest layout by the cost model among those the request leaves open (docs/planning.md).
StatusOr<Plan> PlanWithCostModel(const TrainConfig& config, const PlanRequest& r, int per_host) {
  const planner::ClusterSpec cluster = JobCluster(r, per_host);
  planner::SearchRequest s;
  s.workload = JobWorkload(config, cluster);
  s.world = r.world_size;
  s.global_micro_batch = config.train.batch_size;
  s.global_batch = config.train.batch_size * config.train.grad_accum;
  s.split = planner::BatchSplit::kFixedGlobalMicroBatch;
  s.tp = r.tp, s.cp = r.cp, s.ep = r.ep, s.dp = r.dp;
  if (config.train.device == Device::kCUDA) s.tp = s.cp = s.ep = 1;  // data parallel only
  if (config.model.moe.num_experts == 0 && s.ep == 0) s.ep = 1;
  if (!r.recompute.empty()) {
    auto fixed = parse_recompute(r.recompute, "parallel.recompute");
    if (!fixed.ok()) return fixed.status();
    s.recompute = fixed.value();
  }
  s.sp = r.sequence_parallel;
  s.memory_limit_bytes = r.device_memory_gib > 0 ? r.device_memory_gib * kGiB : 0;
  s.max_results = 1;
  auto found = planner::SearchLayouts(s, cluster);
  if (!found.ok()) return Err("parallel: " + found.status().message());
  const planner::Prediction& best = found.value().ranked.front();
  Plan p;
  p.world = r.world_size;
  p.tp = best.layout.tp;
  p.cp = best.layout.cp;
  p.ep = best.layout.ep;
  p.dp = best.layout.dp;
  p.recompute = best.layout.recompute;
  p.sp = best.layout.sp && p.tp > 1;
  p.memory.activations = int64_t(best.memory.activations + best.memory.moe_buffers);
  p.memory.parameters = int64_t(best.memory.parameters);
  p.memory.gradients = int64_t(best.memory.gradients);
  p.memory.optimizer = int64_t(best.memory.optimizer);
  p.memory.total = int64_t(best.memory.total);
  p.device_memory_bytes = r.device_memory_gib > 0 ? int64_t(r.device_memory_gib * kGiB) : 0;
  char buf[96];
  std::snprintf(buf, sizeof buf, "; predicted step %.3g s, MFU %.1f%% on %s", best.step_s,
                100 * best.mfu, cluster.name.c_str());
  p.explanation = "tp=" + std::to_string(p.tp) + " cp=" + std::to_string(p.cp) +
                  " ep=" + std::to_string(p.ep) + " dp=" + std::to_string(p.dp) + ", " +
                  recompute_name(p.recompute) + " recompute" + (p.sp ? ", sequence parallel" : "") +
                  ": " + FormatGiB(p.memory.total) + " per device" + buf + " (fastest of " +
                  std::to_string(found.value().considered - found.value().rejected_memory) +
                  " layouts that fit)";
  if (Status st = parallel::validate(p.shape()); !st.ok()) return Err("parallel: " + st.message());
  PredictPlan(config, cluster, &p);
  return p;
}

}  // namespace

void PredictPlan(const TrainConfig& config, const planner::ClusterSpec& cluster, Plan* plan) {
  plan->predicted_step_s = 0;
  const planner::Workload w = JobWorkload(config, cluster);
  planner::Layout l;
  l.tp = plan->tp, l.cp = plan->cp, l.ep = plan->ep, l.dp = plan->dp;
  l.recompute = plan->recompute;
  l.sp = plan->sp;
  l.grad_accum = config.train.grad_accum;
  if (config.train.batch_size % plan->dp != 0) {
    plan->prediction_note =
        "no prediction: train.batch_size=" + std::to_string(config.train.batch_size) +
        " is not a multiple of dp=" + std::to_string(plan->dp) +
        " (the cost model sizes equal micro-batches)";
    return;
  }
  l.micro_batch = config.train.batch_size / plan->dp;
  if (Status s = planner::CheckLayout(w, l, cluster); !s.ok()) {
    plan->prediction_note = "no prediction on " + cluster.name + ": " + s.message();
    return;
  }
  const planner::Prediction p = planner::Predict(w, l, cluster);
  plan->predicted_step_s = p.step_s;
  char buf[160];
  std::snprintf(buf, sizeof buf, "cost model on %s, %s, %s: MFU %.3g%%", cluster.name.c_str(),
                w.precision == Precision::kBf16 ? "bf16" : "fp32", l.str().c_str(), 100 * p.mfu);
  plan->prediction_note = buf;
  if (config.model.moe.num_experts > 0 && config.model.moe.lsh.enabled)
    plan->prediction_note +=
        "; LSH predicted uncompressed (the compression ratio is known once the run reports it)";
}

std::string FormatGiB(int64_t bytes) {
  char buf[32];
  const double g = double(bytes) / kGiB;
  std::snprintf(buf, sizeof buf, g < 10 ? "%.2f GiB" : "%.1f GiB", g);
  return buf;
}

StatusOr<Plan> PlanLayout(const TrainConfig& config, const PlanRequest& r) {
  if (r.world_size < 1)
    return Err("parallel.world_size must be >= 1 (the number of MPI ranks), got " +
               std::to_string(r.world_size));
  if (r.world_size > 65536)
    return Err("parallel.world_size=" + std::to_string(r.world_size) + " is too large (max 65536)");
  for (auto [name, v] : {std::pair<const char*, int>{"tp", r.tp},
                         {"cp", r.cp},
                         {"ep", r.ep},
                         {"dp", r.dp},
                         {"ranks_per_host", r.ranks_per_host}})
    if (v < 0)
      return Err(std::string("parallel.") + name + " must be >= 0 (0 = choose), got " +
                 std::to_string(v));
  if (!(r.device_memory_gib >= 0) || std::isinf(r.device_memory_gib))
    return Err("parallel.device_memory_gib must be a finite number >= 0 (0 = no limit)");
  const int world = r.world_size;
  const int per_host = r.ranks_per_host > 0 ? r.ranks_per_host : world;
  if (world % per_host != 0 && per_host < world)
    return Err("parallel.ranks_per_host=" + std::to_string(per_host) +
               " does not divide parallel.world_size=" + std::to_string(world));
  const int cp = r.cp > 0 ? r.cp : 1;
  if (world % cp != 0)
    return Err("parallel.cp=" + std::to_string(cp) +
               " does not divide parallel.world_size=" + std::to_string(world));
  if (config.train.seq_len % cp != 0)
    return Err("parallel.cp=" + std::to_string(cp) +
               " does not divide train.seq_len=" + std::to_string(config.train.seq_len));
  const int ep = r.ep > 0 ? r.ep : 1;
  if (world % ep != 0)
    return Err("parallel.ep=" + std::to_string(ep) +
               " does not divide parallel.world_size=" + std::to_string(world));

  // Candidate tp values.
  std::vector<int> tps;
  if (r.tp > 0) {
    if (world % (r.tp * cp) != 0)
      return Err("parallel.tp=" + std::to_string(r.tp) + " x parallel.cp=" + std::to_string(cp) +
                 " does not divide parallel.world_size=" + std::to_string(world));
    if (std::string why = TpModelConflict(config, r.tp, cp); !why.empty())
      return Err("parallel.tp: " + why);
    if (per_host % r.tp != 0)
      return Err("parallel.tp=" + std::to_string(r.tp) +
                 " does not divide parallel.ranks_per_host=" + std::to_string(per_host) +
                 " (a TP group must lie on one host)");
    tps.push_back(r.tp);
  }
  if (r.dp > 0) {
    if (world % (r.dp * cp) != 0)
      return Err("parallel.dp=" + std::to_string(r.dp) + " x parallel.cp=" + std::to_string(cp) +
                 " does not divide parallel.world_size=" + std::to_string(world));
    const int tp = world / (r.dp * cp);
    if (r.tp > 0 && r.tp != tp)
      return Err("parallel: tp=" + std::to_string(r.tp) + " x cp=" + std::to_string(cp) +
                 " x dp=" + std::to_string(r.dp) + " != world_size=" + std::to_string(world));
    if (r.tp == 0) {
      if (std::string why = TpModelConflict(config, tp, cp); !why.empty())
        return Err("parallel.dp=" + std::to_string(r.dp) + " implies " + why);
      if (per_host % tp != 0)
        return Err("parallel.dp=" + std::to_string(r.dp) + " implies tp=" + std::to_string(tp) +
                   ", which does not divide parallel.ranks_per_host=" + std::to_string(per_host));
      tps.push_back(tp);
    }
  }
  if (tps.empty()) {
    for (int tp = 1; tp <= world / cp; ++tp)
      if ((world / cp) % tp == 0 && per_host % tp == 0 && TpModelConflict(config, tp, cp).empty())
        tps.push_back(tp);
    if (tps.empty())  // tp=1 always splits the model; only cp can make this empty
      return Err("no tensor-parallel size fits parallel.world_size=" + std::to_string(world) +
                 " with parallel.cp=" + std::to_string(cp));
  }

  // The worker splits train.batch_size over dp = world / (tp · cp): only a tp whose dp divides
  // it can run.
  {
    std::vector<int> even;
    for (int tp : tps)
      if (config.train.batch_size % (world / (tp * cp)) == 0) even.push_back(tp);
    if (even.empty())
      return Err("train.batch_size=" + std::to_string(config.train.batch_size) +
                 " is not a multiple of dp=" + std::to_string(world / (tps.front() * cp)) +
                 " (parallel.world_size / (tp x cp)): the worker splits the micro-batch over the "
                 "data-parallel ranks; use a multiple of dp or a larger tp / cp");
    tps = even;
  }

  // A cluster and an open layout: the fastest that fits by the cost model.
  if (r.cluster != nullptr &&
      ((r.tp == 0 && r.dp == 0) || r.cp == 0 || r.ep == 0 || r.recompute.empty()))
    return PlanWithCostModel(config, r, per_host);
  // Every other plan is predicted on the cluster when there is one.
  auto predicted = [&](Plan p) {
    if (r.cluster != nullptr)
      PredictPlan(config, JobCluster(r, per_host), &p);
    else
      p.prediction_note =
          "no prediction: the coordinator has no cluster description (grove-coordinator "
          "--cluster FILE, docs/planning.md)";
    return p;
  };

  std::vector<Recompute> light, heavy;
  if (!r.recompute.empty()) {
    auto fixed = parse_recompute(r.recompute, "parallel.recompute");
    if (!fixed.ok()) return fixed.status();
    light.push_back(fixed.value());
  } else if (r.device_memory_gib == 0) {
    // No memory limit given: keep the configured mode (selective by default).
    light.push_back(config.train.recompute);
  } else {
    light = {Recompute::kNone, Recompute::kSelective};
    heavy = {Recompute::kFull};
  }

  const int64_t device_bytes = int64_t(r.device_memory_gib * kGiB);
  const int64_t usable = int64_t(double(device_bytes) * kUsableMemoryFraction);
  auto make = [&](int tp, Recompute rc, const MemoryEstimate& m) {
    Plan p;
    p.world = world;
    p.tp = tp;
    p.cp = cp;
    p.ep = ep;
    p.dp = world / (tp * cp);
    p.recompute = rc;
    p.sp = r.sequence_parallel && tp > 1;
    p.memory = m;
    p.device_memory_bytes = device_bytes;
    p.explanation = "tp=" + std::to_string(tp) + " cp=" + std::to_string(cp) +
                    " ep=" + std::to_string(ep) + " dp=" + std::to_string(p.dp) + ", " +
                    recompute_name(rc) + " recompute" + (p.sp ? ", sequence parallel" : "") + ": " +
                    FormatGiB(m.total) + " per device";
    if (device_bytes > 0)
      p.explanation += " of " + FormatGiB(device_bytes) + " (" + FormatGiB(usable) + " usable)";
    return p;
  };
  for (const auto* modes : {&light, &heavy})
    for (int tp : tps)
      for (Recompute rc : *modes) {
        MemoryEstimate m = Estimate(config, world, tp, cp, ep, rc, r.sequence_parallel);
        if (device_bytes != 0 && m.total > usable) continue;
        Plan plan = make(tp, rc, m);
        // The candidates are built to satisfy it; the grid's own check has the last word.
        if (Status s = parallel::validate(plan.shape()); !s.ok())
          return Err("parallel: " + s.message());
        return predicted(plan);
      }

  // Nothing fits: say what the smallest candidate needs, and which tp would fit.
  const Recompute best = heavy.empty() ? light.back() : heavy.back();
  const int tp0 = tps.front();
  const MemoryEstimate need = Estimate(config, world, tp0, cp, ep, best, r.sequence_parallel);
  std::string msg = "parallel: needs " + FormatGiB(need.total) +
                    " per device at tp=" + std::to_string(tp0) +
                    (heavy.empty() ? " with " : " even with ") + recompute_name(best) +
                    " recompute (parallel.device_memory_gib gives " + FormatGiB(device_bytes) +
                    ", " + FormatGiB(usable) + " usable)";
  int fit_tp = 0;
  for (int tp = tp0 + 1; tp <= 1024 && fit_tp == 0; ++tp)
    if (TpModelConflict(config, tp, cp).empty() &&
        Estimate(config, world, tp, cp, ep, best, r.sequence_parallel).total <= usable)
      fit_tp = tp;
  if (fit_tp > 0) {
    msg += "; try tp=" + std::to_string(fit_tp);
    if ((world / cp) % fit_tp != 0 || per_host % fit_tp != 0)
      msg += " (needs parallel.world_size and parallel.ranks_per_host to be multiples of " +
             std::to_string(fit_tp) + ")";
  } else {
    msg +=
        "; no tensor-parallel size fits: lower train.batch_size or train.seq_len, or use a "
        "smaller model";
  }
  return Err(msg);
}

Coords RankCoords(const Plan& p, int rank) {
  return parallel::grid_coord(p.shape(), rank);
}

}  // namespace grove::coordinator
