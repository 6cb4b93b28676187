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

std::string shard_file(const CheckpointRank& r) {
  if (r.shards == 1) return "model.safetensors";
  return "model-tp" + std::to_string(r.shard) + "-of-" + std::to_string(r.shards) + ".safetensors";
}

void add_prefixed(std::vector<NamedTensor>* out, const Weights& w, const std::string& prefix) {
  for (const NamedTensor& nt : w.named()) out->push_back({prefix + nt.name, nt.tensor});
}

// Every rank learns whether any rank failed; the failing rank keeps its own message.
Status agree(const CheckpointRank& r, Status local, const std::string& what) {
  if (r.world == nullptr || r.world->size() == 1) return local;
  int32_t failed = local.ok() ? 0 : 1;
  r.world->all_reduce(&failed, 1, DType::kI32, comm::ReduceOp::kMax);
  if (!local.ok()) return local;
  if (failed) return Status::Error(what + " failed on another rank (see its error)");
  return Status::Ok();
}

Status write_shard(const fs::path& dir, const CheckpointRank& r, const Weights& params,
                   AdamW& opt) {
  std::vector<NamedTensor> tensors;
  add_prefixed(&tensors, params, "model.");
  add_prefixed(&tensors, opt.m(), "adam_m.");
  add_prefixed(&tensors, opt.v(), "adam_v.");
  return WriteSafetensors((dir / shard_file(r)).string(), tensors,
                          {{"format", "grove-checkpoint-v1"},
                           {"tp_rank", std::to_string(r.shard)},
                           {"tp", std::to_string(r.shards)}});
}

StatusOr<std::string> publish(const std::string& root, const fs::path& tmp_dir,
                              const fs::path& final_dir, const std::string& name, int keep) {
  std::error_code ec;
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

}  // namespace

StatusOr<std::string> SaveCheckpoint(const std::string& root, int step, const Weights& params,
                                     AdamW& opt, const nlohmann::json& state, int keep,
                                     const CheckpointRank& r) {
  const std::string name = step_dir_name(step);
  const fs::path final_dir = fs::path(root) / name;
  const fs::path tmp_dir = fs::path(root) / (name + ".tmp");

  // 1. The leader prepares an empty temporary directory.
  Status st;
  if (r.leader) {
    std::error_code ec;
    fs::create_directories(root, ec);
    if (!ec) fs::remove_all(tmp_dir, ec);
    if (!ec) fs::create_directories(tmp_dir, ec);
    if (ec)
      st = Status::Error("cannot create checkpoint directory " + tmp_dir.string() + ": " +
                         ec.message());
  }
  GROVE_RETURN_IF_ERROR(agree(r, st, "creating checkpoint " + tmp_dir.string()));

  // 2. Every writer writes and fsyncs its shard.
  st = r.writer ? write_shard(tmp_dir, r, params, opt) : Status::Ok();
  GROVE_RETURN_IF_ERROR(agree(r, st, "writing checkpoint shards"));

  // 3. The leader writes state.json and publishes the directory by rename.
  StatusOr<std::string> published = Status::Error("not published");
  if (r.leader) {
    nlohmann::json s = state;
    s["step"] = step;
    s["adam_steps"] = opt.steps_taken();
    s["layout"] = {{"tp", r.shards}};
    st = WriteFileAtomic((tmp_dir / "state.json").string(), s.dump(2));
    if (st.ok()) st = FsyncDir(tmp_dir.string());
    if (st.ok()) {
      published = publish(root, tmp_dir, final_dir, name, keep);
      if (!published.ok()) st = published.status();
    }
  }
  GROVE_RETURN_IF_ERROR(agree(r, st, "publishing checkpoint " + final_dir.string()));
  return final_dir.string();
}

std::string LatestCheckpoint(const std::string& root) {
  std::ifstream in(fs::path(root) / "latest");
  std::string name;
  if (!(in >> name)) return "";
  const fs::path dir = fs::path(root) / name;
  return fs::exists(dir / "state.json") ? dir.string() : "";
}

namespace {

StatusOr<nlohmann::json> load_local(const std::string& dir, Weights& params, AdamW& opt,
                                    const CheckpointRank& r) {
  const fs::path state_path = fs::path(dir) / "state.json";
  const fs::path model_path = fs::path(dir) / shard_file(r);
  if (!fs::exists(dir)) return Status::Error("checkpoint " + dir + " does not exist");
  std::ifstream in(state_path);
  if (!in) return Status::Error("checkpoint " + dir + " has no readable state.json");
  nlohmann::json state = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (state.is_discarded() || !state.is_object() || !state.contains("step") ||
      !state.contains("adam_steps"))
    return Status::Error(state_path.string() + " is corrupt or incomplete (no step)");
  const int written_tp = state.contains("layout") ? state["layout"].value("tp", 1) : 1;
  if (written_tp != r.shards)
    return Status::Error("checkpoint " + dir +
                         " was written with tp=" + std::to_string(written_tp) +
                         " but this run has tp=" + std::to_string(r.shards) +
                         "; resume with parallel.tp=" + std::to_string(written_tp));
  auto file = ReadSafetensors(model_path.string());
  if (!file.ok()) return file.status();
  const auto& tensors = file.value().tensors;
  // Validate all three groups before copying any, so a bad file changes nothing.
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

}  // namespace

StatusOr<nlohmann::json> LoadCheckpoint(const std::string& dir, Weights& params, AdamW& opt,
                                        const CheckpointRank& r) {
  // Read into copies first: the model changes only if every rank read its shard successfully.
  Weights p_new = params.clone();
  AdamW o_new = opt.clone();
  auto state = load_local(dir, p_new, o_new, r);
  GROVE_RETURN_IF_ERROR(
      agree(r, state.ok() ? Status::Ok() : state.status(), "loading checkpoint " + dir));
  params = std::move(p_new);
  opt = std::move(o_new);
  return state;
}

}  // namespace grove
