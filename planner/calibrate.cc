#include "planner/calibrate.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

namespace grove::planner {

namespace {

double Log2Ceil(int n) {
  return n <= 1 ? 0.0 : std::ceil(std::log2(double(n)));
}

// Weighted least squares for y ≈ a·x1 + b·x2 with x1, x2 >= 0 (a coordinate clamped to zero
// is refitted alone). Rows are (x1, x2, y, weight).
struct Row {
  double a, b, y, w;
};
std::pair<double, double> FitTwo(const std::vector<Row>& rows) {
  double saa = 0, sab = 0, sbb = 0, say = 0, sby = 0;
  for (const Row& r : rows) {
    const double w2 = r.w * r.w;
    saa += w2 * r.a * r.a, sab += w2 * r.a * r.b, sbb += w2 * r.b * r.b;
    say += w2 * r.a * r.y, sby += w2 * r.b * r.y;
  }
  const double det = saa * sbb - sab * sab;
  double x1 = det != 0 ? (say * sbb - sby * sab) / det : 0;
  double x2 = det != 0 ? (saa * sby - sab * say) / det : 0;
  if (x1 < 0) x1 = 0, x2 = sbb > 0 ? sby / sbb : 0;
  if (x2 < 0) x2 = 0, x1 = saa > 0 ? say / saa : 0;
  return {x1, x2};
}

}  // namespace

StatusOr<BenchSamples> ParseBenchLines(const std::string& text) {
  BenchSamples s;
  std::istringstream in(text);
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line[0] != '{') continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      return Status::Error("benchmark output line " + std::to_string(number) +
                           " is not a JSON object: " + line.substr(0, 80));
    const std::string name = j.value("name", "");
    if (!j.contains("config") || !j["config"].is_object()) continue;
    const auto& c = j["config"];
    try {
      if (name == "sgemm") {
        const double M = c.at("M").get<double>(), N = c.at("N").get<double>(),
                     K = c.at("K").get<double>();
        s.gemm.push_back({2 * M * N * K, j.at("value").get<double>()});
      } else if (name == "attention_forward" || name == "attention_backward") {
        const double SQ = c.at("SQ").get<double>(), B = c.at("B").get<double>(),
                     NH = c.at("NH").get<double>(), HD = c.at("HD").get<double>();
        const bool causal = c.value("causal", true);
        double flops = 4.0 * SQ * SQ * HD * NH * B * (causal ? 0.5 : 1.0);
        if (name == "attention_backward") flops *= 2.5;
        s.attention.push_back({flops, j.at("value").get<double>() / 1e3});
      } else if (name.rfind("comm/", 0) == 0) {
        CollectiveSample cs;
        cs.collective = name.substr(5);
        cs.ranks = c.at("np").get<int>();
        cs.bytes = c.at("bytes").get<double>();
        cs.seconds = j.at("time_us").get<double>() / 1e6;
        s.collectives.push_back(cs);
      }
    } catch (const nlohmann::json::exception& e) {
      return Status::Error("benchmark output line " + std::to_string(number) + " (" + name +
                           ") lacks a field: " + e.what());
    }
  }
  return s;
}

StatusOr<GemmFit> FitGemm(const std::vector<GemmSample>& samples) {
  if (samples.size() < 2)
    return Status::Error("the GEMM fit needs at least two sgemm shapes (bench_sgemm's output)");
  // 1/g = 1/P + (H/P) · (1/F): a line in x = 1/F, relative error weights.
  std::vector<Row> rows;
  for (const GemmSample& g : samples) {
    if (!(g.gflops > 0) || !(g.flops > 0))
      return Status::Error("an sgemm sample has no positive GFLOP/s");
    const double y = 1.0 / (g.gflops * 1e9);
    rows.push_back({1.0, 1.0 / g.flops, y, 1.0 / y});
  }
  auto [inv_p, h_over_p] = FitTwo(rows);
  if (!(inv_p > 0)) return Status::Error("the GEMM fit found no finite large-GEMM throughput");
  return GemmFit{1.0 / inv_p, h_over_p / inv_p};
}

StatusOr<LinkFit> FitSharedLink(const std::vector<CollectiveSample>& samples) {
  std::vector<Row> rows;
  for (const CollectiveSample& s : samples) {
    const int n = s.ranks;
    if (n < 2 || !(s.seconds > 0)) continue;
    double a = 0, b = 0;
    if (s.collective == "all_reduce") {
      a = 2.0 * (n - 1), b = 2.0 * (n - 1) / n * s.bytes;
    } else if (s.collective == "all_gather" || s.collective == "reduce_scatter") {
      a = n - 1.0, b = (n - 1.0) / n * s.bytes;
    } else if (s.collective == "all_to_all_v") {
      a = Log2Ceil(n), b = (n - 1.0) / n * s.bytes;
    } else {
      continue;
    }
    // The node's bandwidth is shared by its n ranks: per-rank bandwidth = B_node / n.
    rows.push_back({a, b * n, s.seconds, 1.0 / s.seconds});
  }
  if (rows.size() < 2)
    return Status::Error("the link fit needs comm_bench lines of at least two sizes");
  auto [alpha, inv_bw] = FitTwo(rows);
  if (!(inv_bw > 0)) return Status::Error("the link fit found no finite bandwidth");
  return LinkFit{alpha, 1.0 / inv_bw};
}

StatusOr<ClusterSpec> CalibrateCpuCluster(const BenchSamples& samples, const Workload& workload,
                                          const Layout& layout, double measured_step_s,
                                          double cores, double memory_gib, std::string name,
                                          double step_latency_s) {
  if (!(cores > 0) || !std::isfinite(cores))
    return Status::Error("cores (the compute capacity the ranks share) must be > 0");
  if (step_latency_s < 0) return Status::Error("the in-step collective latency must be >= 0");
  if (!(measured_step_s > 0)) return Status::Error("the measured step time must be positive");
  auto gemm = FitGemm(samples.gemm);
  if (!gemm.ok()) return gemm.status();
  auto link = FitSharedLink(samples.collectives);
  if (!link.ok()) return link.status();
  if (samples.attention.empty())
    return Status::Error("no attention samples (bench_attention's output)");

  ClusterSpec c;
  c.name = std::move(name);
  c.description = "calibrated from bench_sgemm, bench_attention, comm_bench and a 1-rank step";
  c.devices_per_node = 64;  // ranks the node may run; compute is shared by `cores`
  c.max_nodes = 1;
  c.shared_cores = cores;
  c.overlap_collectives = false;  // MPI progresses only inside MPI calls
  c.intra_topology = IntraTopology::kShared;
  c.inter_topology = InterTopology::kNone;
  c.intra.latency = link.value().latency;
  // A collective inside a step costs its alpha-beta time plus the wait for its peers; the
  // measured per-call time holds both (one all-to-all of 2 ranks: one alpha, bytes negligible).
  c.intra.sync_latency = std::max(0.0, step_latency_s - link.value().latency);
  c.intra.bandwidth = link.value().node_bandwidth;
  c.device.name = "CPU core (OpenBLAS sgemm, 1 thread)";
  double best = 0;
  for (const GemmSample& g : samples.gemm) best = std::max(best, g.gflops * 1e9);
  c.device.peak_fp32 = std::max(best, gemm.value().throughput);
  c.device.peak_bf16 = 0;
  c.device.memory_bytes = memory_gib * 1024.0 * 1024.0 * 1024.0;
  KernelEfficiency& e = c.device.efficiency;
  e.gemm_max = std::min(1.0, gemm.value().throughput / c.device.peak_fp32);
  // (flops + half) / (peak · gemm_max) reproduces the fit: half = H, peak · gemm_max = P.
  e.gemm_half_flops = gemm.value().half_flops;
  std::vector<double> att;
  for (const AttentionSample& a : samples.attention) att.push_back(a.flops / a.seconds);
  std::sort(att.begin(), att.end());
  e.attention = std::clamp(att[att.size() / 2] / c.device.peak_fp32, 1e-4, 1.0);
  e.memory = 1.0;

  // The memory-bound bandwidth: the step is linear in 1/bandwidth; solve from two evaluations.
  auto step_at = [&](double bw) {
    ClusterSpec t = c;
    t.device.memory_bandwidth = bw;
    return Predict(workload, layout, t).step_s;
  };
  if (Status s = CheckLayout(workload, layout,
                             [&] {
                               ClusterSpec t = c;
                               t.device.memory_bandwidth = 1e9;
                               return t;
                             }());
      !s.ok())
    return Status::Error("calibration layout: " + s.message());
  const double bw1 = 1e9, bw2 = 2e9;
  const double t1 = step_at(bw1), t2 = step_at(bw2);
  const double mem_at_bw1 = 2.0 * (t1 - t2);  // M/bw1, since t(bw) = other + M/bw
  const double other = t1 - mem_at_bw1;
  if (!(measured_step_s > other))
    return Status::Error("the measured step (" + std::to_string(measured_step_s * 1e3) +
                         " ms) is shorter than the predicted GEMMs, attention and collectives "
                         "alone (" +
                         std::to_string(other * 1e3) +
                         " ms): re-run the benchmarks when the machine is quieter");
  c.device.memory_bandwidth = bw1 * mem_at_bw1 / (measured_step_s - other);
  if (Status s = c.Validate(); !s.ok()) return s;
  return c;
}

}  // namespace grove::planner
