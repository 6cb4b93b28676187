#include "planner/cluster.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace grove::planner {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

Status Err(const std::string& m) {
  return Status::Error("cluster: " + m);
}

// Unknown keys are errors naming the key and the known ones.
Status CheckKeys(const nlohmann::json& j, const std::string& where,
                 const std::set<std::string>& known) {
  if (!j.is_object()) return Err(where + " must be a JSON object");
  for (const auto& [k, v] : j.items())
    if (!known.count(k)) {
      std::string list;
      for (const auto& n : known) list += (list.empty() ? "" : ", ") + n;
      return Err("unknown key '" + (where.empty() ? k : where + "." + k) + "' (known: " + list +
                 ")");
    }
  return Status::Ok();
}

// Reads a number at key `k` (optional: keeps *out when absent).
Status Num(const nlohmann::json& j, const std::string& where, const char* k, double scale,
           double* out) {
  if (!j.contains(k)) return Status::Ok();
  const auto& v = j.at(k);
  if (!v.is_number()) return Err(where + "." + k + " must be a number (got " + v.dump() + ")");
  *out = v.get<double>() * scale;
  return Status::Ok();
}

Status Str(const nlohmann::json& j, const char* k, std::string* out) {
  if (!j.contains(k)) return Status::Ok();
  if (!j.at(k).is_string()) return Err(std::string(k) + " must be a string");
  *out = j.at(k).get<std::string>();
  return Status::Ok();
}

Status ReadLink(const nlohmann::json& j, const std::string& where, LinkSpec* l,
                std::string* topology) {
  if (Status s = CheckKeys(
          j, where,
          {"bandwidth_gbps", "latency_us", "sync_latency_us", "topology", "alltoall_efficiency"});
      !s.ok())
    return s;
  if (Status s = Num(j, where, "bandwidth_gbps", 1e9, &l->bandwidth); !s.ok()) return s;
  if (Status s = Num(j, where, "latency_us", 1e-6, &l->latency); !s.ok()) return s;
  if (Status s = Num(j, where, "sync_latency_us", 1e-6, &l->sync_latency); !s.ok()) return s;
  if (Status s = Num(j, where, "alltoall_efficiency", 1.0, &l->alltoall_efficiency); !s.ok())
    return s;
  if (j.contains("topology")) {
    if (!j.at("topology").is_string()) return Err(where + ".topology must be a string");
    *topology = j.at("topology").get<std::string>();
  }
  return Status::Ok();
}

nlohmann::json LinkJson(const LinkSpec& l, const char* topology) {
  nlohmann::json j = {{"bandwidth_gbps", l.bandwidth / 1e9},
                      {"latency_us", l.latency * 1e6},
                      {"alltoall_efficiency", l.alltoall_efficiency},
                      {"topology", topology}};
  if (l.sync_latency > 0) j["sync_latency_us"] = l.sync_latency * 1e6;
  return j;
}

}  // namespace

const char* intra_topology_name(IntraTopology t) {
  return t == IntraTopology::kSwitch ? "switch" : "shared";
}
const char* inter_topology_name(InterTopology t) {
  return t == InterTopology::kRails ? "rails" : "none";
}

Status ClusterSpec::Validate() const {
  auto positive = [](double v) { return v > 0 && std::isfinite(v); };
  if (devices_per_node < 1)
    return Err("devices_per_node must be >= 1 (devices in one node), got " +
               std::to_string(devices_per_node));
  if (max_nodes < 0) return Err("max_nodes must be >= 0 (0 = no limit)");
  if (!(shared_cores >= 0) || !std::isfinite(shared_cores))
    return Err("shared_cores must be >= 0 (0 = devices_per_node)");
  if (!positive(device.peak_fp32))
    return Err("device.peak_tflops.fp32 must be a positive number (dense fp32 matrix TFLOP/s)");
  if (!(device.peak_bf16 >= 0) || !std::isfinite(device.peak_bf16))
    return Err("device.peak_tflops.bf16 must be >= 0 (0 = no bf16)");
  if (!positive(device.memory_bytes))
    return Err("device.memory_gib must be a positive number (memory per device in GiB)");
  if (!positive(device.memory_bandwidth))
    return Err("device.memory_bandwidth_gbps must be a positive number (GB/s)");
  const KernelEfficiency& e = device.efficiency;
  for (auto [name, v] : {std::pair<const char*, double>{"gemm_max", e.gemm_max},
                         {"attention", e.attention},
                         {"memory", e.memory}})
    if (!(v > 0 && v <= 1))
      return Err(std::string("device.efficiency.") + name + " must lie in (0, 1], got " +
                 std::to_string(v));
  if (!(e.gemm_half_flops >= 0) || !std::isfinite(e.gemm_half_flops))
    return Err("device.efficiency.gemm_half_gflop must be >= 0");
  if (!positive(intra.bandwidth))
    return Err("intra_node.bandwidth_gbps must be a positive number (GB/s per device)");
  if (!(intra.latency >= 0)) return Err("intra_node.latency_us must be >= 0");
  if (!(intra.sync_latency >= 0) || !std::isfinite(intra.sync_latency))
    return Err("intra_node.sync_latency_us must be >= 0");
  if (!(intra.alltoall_efficiency > 0 && intra.alltoall_efficiency <= 1))
    return Err("intra_node.alltoall_efficiency must lie in (0, 1]");
  if (inter_topology == InterTopology::kRails) {
    if (!positive(inter.bandwidth))
      return Err(
          "inter_node.bandwidth_gbps must be a positive number (GB/s per device), or set "
          "inter_node.topology to \"none\" for a single-node machine");
    if (!(inter.latency >= 0)) return Err("inter_node.latency_us must be >= 0");
    if (!(inter.alltoall_efficiency > 0 && inter.alltoall_efficiency <= 1))
      return Err("inter_node.alltoall_efficiency must lie in (0, 1]");
  } else if (max_nodes != 1) {
    return Err("inter_node.topology \"none\" needs max_nodes = 1 (a single node)");
  }
  return Status::Ok();
}

StatusOr<ClusterSpec> ClusterFromJson(const nlohmann::json& j) {
  ClusterSpec c;
  if (Status s = CheckKeys(j, "",
                           {"name", "description", "devices_per_node", "max_nodes", "device",
                            "intra_node", "inter_node", "overlap_collectives", "shared_cores"});
      !s.ok())
    return s;
  if (Status s = Str(j, "name", &c.name); !s.ok()) return s;
  if (Status s = Str(j, "description", &c.description); !s.ok()) return s;
  for (auto [k, out] : {std::pair<const char*, int*>{"devices_per_node", &c.devices_per_node},
                        {"max_nodes", &c.max_nodes}})
    if (j.contains(k)) {
      if (!j.at(k).is_number_integer())
        return Err(std::string(k) + " must be an integer (got " + j.at(k).dump() + ")");
      *out = j.at(k).get<int>();
    }
  if (j.contains("shared_cores")) {
    if (!j.at("shared_cores").is_number())
      return Err("shared_cores must be a number of cores (got " + j.at("shared_cores").dump() +
                 ")");
    c.shared_cores = j.at("shared_cores").get<double>();
  }
  if (j.contains("overlap_collectives")) {
    if (!j.at("overlap_collectives").is_boolean())
      return Err("overlap_collectives must be true or false");
    c.overlap_collectives = j.at("overlap_collectives").get<bool>();
  }
  if (!j.contains("device")) return Err("device is missing (the accelerator's description)");
  const auto& d = j.at("device");
  if (Status s =
          CheckKeys(d, "device",
                    {"name", "peak_tflops", "memory_gib", "memory_bandwidth_gbps", "efficiency"});
      !s.ok())
    return s;
  if (d.contains("name")) {
    if (!d.at("name").is_string()) return Err("device.name must be a string");
    c.device.name = d.at("name").get<std::string>();
  }
  if (!d.contains("peak_tflops"))
    return Err("device.peak_tflops is missing (e.g. {\"fp32\": 67, \"bf16\": 989})");
  const auto& pk = d.at("peak_tflops");
  if (Status s = CheckKeys(pk, "device.peak_tflops", {"fp32", "bf16"}); !s.ok()) return s;
  if (Status s = Num(pk, "device.peak_tflops", "fp32", 1e12, &c.device.peak_fp32); !s.ok())
    return s;
  if (Status s = Num(pk, "device.peak_tflops", "bf16", 1e12, &c.device.peak_bf16); !s.ok())
    return s;
  if (Status s = Num(d, "device", "memory_gib", kGiB, &c.device.memory_bytes); !s.ok()) return s;
  if (Status s = Num(d, "device", "memory_bandwidth_gbps", 1e9, &c.device.memory_bandwidth);
      !s.ok())
    return s;
  if (d.contains("efficiency")) {
    const auto& e = d.at("efficiency");
    if (Status s = CheckKeys(e, "device.efficiency",
                             {"gemm_max", "gemm_half_gflop", "attention", "memory"});
        !s.ok())
      return s;
    KernelEfficiency& k = c.device.efficiency;
    for (auto [name, scale, out] :
         {std::tuple<const char*, double, double*>{"gemm_max", 1.0, &k.gemm_max},
          {"gemm_half_gflop", 1e9, &k.gemm_half_flops},
          {"attention", 1.0, &k.attention},
          {"memory", 1.0, &k.memory}})
      if (Status s = Num(e, "device.efficiency", name, scale, out); !s.ok()) return s;
  }
  std::string intra_topo = "switch", inter_topo = "rails";
  if (!j.contains("intra_node")) return Err("intra_node is missing (links inside a node)");
  if (Status s = ReadLink(j.at("intra_node"), "intra_node", &c.intra, &intra_topo); !s.ok())
    return s;
  if (intra_topo == "switch")
    c.intra_topology = IntraTopology::kSwitch;
  else if (intra_topo == "shared")
    c.intra_topology = IntraTopology::kShared;
  else
    return Err("intra_node.topology must be switch or shared (got '" + intra_topo + "')");
  if (j.contains("inter_node")) {
    if (Status s = ReadLink(j.at("inter_node"), "inter_node", &c.inter, &inter_topo); !s.ok())
      return s;
  } else {
    inter_topo = "none";
  }
  if (inter_topo == "rails")
    c.inter_topology = InterTopology::kRails;
  else if (inter_topo == "none")
    c.inter_topology = InterTopology::kNone;
  else
    return Err("inter_node.topology must be rails or none (got '" + inter_topo + "')");
  if (c.inter_topology == InterTopology::kNone && !j.contains("max_nodes")) c.max_nodes = 1;
  if (Status s = c.Validate(); !s.ok()) return s;
  return c;
}

nlohmann::json ClusterToJson(const ClusterSpec& c) {
  const KernelEfficiency& e = c.device.efficiency;
  nlohmann::json j = {
      {"name", c.name},
      {"description", c.description},
      {"devices_per_node", c.devices_per_node},
      {"max_nodes", c.max_nodes},
      {"overlap_collectives", c.overlap_collectives},
      {"device",
       {{"name", c.device.name},
        {"peak_tflops", {{"fp32", c.device.peak_fp32 / 1e12}, {"bf16", c.device.peak_bf16 / 1e12}}},
        {"memory_gib", c.device.memory_bytes / kGiB},
        {"memory_bandwidth_gbps", c.device.memory_bandwidth / 1e9},
        {"efficiency",
         {{"gemm_max", e.gemm_max},
          {"gemm_half_gflop", e.gemm_half_flops / 1e9},
          {"attention", e.attention},
          {"memory", e.memory}}}}},
      {"intra_node", LinkJson(c.intra, intra_topology_name(c.intra_topology))},
  };
  if (c.shared_cores > 0) j["shared_cores"] = c.shared_cores;
  if (c.inter_topology == InterTopology::kRails)
    j["inter_node"] = LinkJson(c.inter, inter_topology_name(c.inter_topology));
  else
    j["inter_node"] = {{"topology", "none"}};
  return j;
}

StatusOr<ClusterSpec> LoadCluster(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::Error("cannot read cluster file " + path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in, nullptr, true, /*ignore_comments=*/true);
  } catch (const nlohmann::json::parse_error& e) {
    return Status::Error("cluster file " + path + " is not valid JSON: " + e.what());
  }
  auto c = ClusterFromJson(j);
  if (!c.ok()) return Status::Error(path + ": " + c.status().message());
  return c;
}

StatusOr<ClusterSpec> LoadClusterOrPreset(const std::string& name_or_path,
                                          const std::string& preset_dir) {
  namespace fs = std::filesystem;
  if (fs::exists(name_or_path)) return LoadCluster(name_or_path);
  const fs::path preset = fs::path(preset_dir) / (name_or_path + ".json");
  if (!preset_dir.empty() && fs::exists(preset)) return LoadCluster(preset.string());
  std::string names;
  std::error_code ec;
  if (!preset_dir.empty())
    for (const auto& f : fs::directory_iterator(preset_dir, ec))
      if (f.path().extension() == ".json")
        names += (names.empty() ? "" : ", ") + f.path().stem().string();
  return Status::Error("--cluster " + name_or_path + " is neither a file nor a preset" +
                       (names.empty() ? std::string(" (no presets found in '") + preset_dir + "')"
                                      : " (presets: " + names + ")"));
}

}  // namespace grove::planner
