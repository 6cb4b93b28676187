#include "worker/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/safetensors.h"

namespace grove {

namespace fs = std::filesystem;

namespace {

std::string step_dir_name(int step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step_%08d", step);
  return buf;
}

void add_prefixed(std::vector<NamedTensor>* out, const Weights& w, const std::string& prefix) {
  for (const NamedTensor& nt : w.named()) out->push_back({prefix + nt.name, nt.tensor});
}

}  // namespace

StatusOr<std::string> SaveCheckpoint(const std::string& root, int step, const Weights& params,
                                     AdamW& opt, const nlohmann::json& state, int keep) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return Status::Error("cannot create checkpoint directory " + root + ": " + ec.message());
  const std::string name = step_dir_name(step);
  const fs::path final_dir = fs::path(root) / name;
  const fs::path tmp_dir = fs::path(root) / (name + ".tmp");
  fs::remove_all(tmp_dir, ec);
  fs::create_directories(tmp_dir, ec);
  if (ec) return Status::Error("cannot create " + tmp_dir.string() + ": " + ec.message());

  std::vector<NamedTensor> tensors;
  add_prefixed(&tensors, params, "model.");
  add_prefixed(&tensors, opt.m(), "adam_m.");
  add_prefixed(&tensors, opt.v(), "adam_v.");
  nlohmann::json st = state;
  st["step"] = step;
  st["adam_steps"] = opt.steps_taken();
  GROVE_RETURN_IF_ERROR(WriteSafetensors((tmp_dir / "model.safetensors").string(), tensors,
                                         {{"format", "grove-checkpoint-v1"}}));
  GROVE_RETURN_IF_ERROR(WriteFileAtomic((tmp_dir / "state.json").string(), st.dump(2)));
  GROVE_RETURN_IF_ERROR(FsyncDir(tmp_dir.string()));

  // Replace an existing checkpoint of the same step (e.g. a re-run) only after the new one is
  // complete on disk.
  if (fs::exists(final_dir)) fs::remove_all(final_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) return Status::Error("cannot rename " + tmp_dir.string() + ": " + ec.message());
  GROVE_RETURN_IF_ERROR(FsyncDir(root));
  GROVE_RETURN_IF_ERROR(WriteFileAtomic((fs::path(root) / "latest").string(), name + "\n"));

  // Retention: keep the newest `keep` complete checkpoints.
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.starts_with("step_") && n.find(".tmp") == std::string::npos)
      steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + keep < steps.size(); ++i) fs::remove_all(fs::path(root) / steps[i], ec);
  return final_dir.string();
}

std::string LatestCheckpoint(const std::string& root) {
  std::ifstream in(fs::path(root) / "latest");
  std::string name;
  if (!(in >> name)) return "";
  const fs::path dir = fs::path(root) / name;
  return fs::exists(dir / "state.json") ? dir.string() : "";
}

StatusOr<nlohmann::json> LoadCheckpoint(const std::string& dir, Weights& params, AdamW& opt) {
  const fs::path state_path = fs::path(dir) / "state.json";
  const fs::path model_path = fs::path(dir) / "model.safetensors";
  if (!fs::exists(dir)) return Status::Error("checkpoint " + dir + " does not exist");
  std::ifstream in(state_path);
  if (!in) return Status::Error("checkpoint " + dir + " has no readable state.json");
  nlohmann::json state = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (state.is_discarded() || !state.is_object() || !state.contains("step") ||
      !state.contains("adam_steps"))
    return Status::Error(state_path.string() + " is corrupt or incomplete (no step)");
  auto file = ReadSafetensors(model_path.string());
  if (!file.ok()) return file.status();
  const auto& tensors = file.value().tensors;
  // Validate all three groups before copying any (CopyFrom validates its own group first).
  Weights m_check = opt.m(), v_check = opt.v();
  for (auto [w, prefix] : {std::pair<Weights*, const char*>{&params, "model."},
                           {&m_check, "adam_m."},
                           {&v_check, "adam_v."}}) {
    for (const NamedTensor& nt : w->named()) {
      auto it = tensors.find(prefix + nt.name);
      if (it == tensors.end())
        return Status::Error(model_path.string() + ": missing tensor '" + prefix + nt.name + "'");
      if (it->second.shape() != nt.tensor.shape())
        return Status::Error(model_path.string() + ": tensor '" + prefix + nt.name +
                             "' has shape " + shape_str(it->second.shape()) +
                             ", the model expects " + shape_str(nt.tensor.shape()) +
                             " (was it written with another model config?)");
    }
  }
  GROVE_RETURN_IF_ERROR(params.CopyFrom(tensors, model_path.string(), "model."));
  GROVE_RETURN_IF_ERROR(opt.m().CopyFrom(tensors, model_path.string(), "adam_m."));
  GROVE_RETURN_IF_ERROR(opt.v().CopyFrom(tensors, model_path.string(), "adam_v."));
  opt.set_steps_taken(state["adam_steps"].get<int>());
  return state;
}

}  // namespace grove
