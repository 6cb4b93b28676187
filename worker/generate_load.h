// Loading a training checkpoint for generation: the model config from state.json's config.model
// and the full (tp = 1) parameters, on the calling process alone (every rank of a generation job
// loads its own copy; the files are only read). Reads the distributed format of
// worker/checkpoint.h (index.json + shards, any training layout) and the earlier single-file
// format (model.safetensors holding "model.<name>" tensors, written at tp = 1).
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/status.h"
#include "spec/model_config.h"
#include "model/weights.h"
#include "worker/checkpoint.h"
#include "worker/optimizer.h"

namespace grove {

// The checkpoint directory named by --checkpoint, or the latest one of the run directory --run.
inline StatusOr<std::string> ResolveCheckpointDir(const std::string& checkpoint,
                                                  const std::string& run_dir) {
  if (!checkpoint.empty()) return checkpoint;
  if (run_dir.empty()) return Status::Error("give --checkpoint DIR or --run OUT_DIR");
  const std::string root = run_dir + "/checkpoints";
  std::string latest = LatestCheckpoint(root);
  if (!latest.empty()) return latest;
  // The single-file format: `latest` names a directory with model.safetensors.
  std::ifstream in(root + "/latest");
  std::string name;
  if (in >> name && std::filesystem::exists(root + "/" + name + "/model.safetensors"))
    return root + "/" + name;
  return Status::Error("no complete checkpoint under " + root);
}

inline Status LoadForGeneration(const std::string& dir, ModelConfig* config, Weights* weights) {
  std::ifstream in(dir + "/state.json");
  if (!in) return Status::Error(dir + "/state.json: cannot open (is this a checkpoint directory?)");
  nlohmann::json state = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (state.is_discarded() || !state.contains("config") || !state["config"].contains("model"))
    return Status::Error(dir + "/state.json: no config.model");
  GROVE_RETURN_IF_ERROR(ModelConfigFromJson(state["config"]["model"], config));
  GROVE_RETURN_IF_ERROR(config->Validate());
  *weights = Weights::Zeros(*config);
  const std::string single = dir + "/model.safetensors";
  if (std::filesystem::exists(single) && !std::filesystem::exists(dir + "/index.json")) {
    StatusOr<SafetensorsFile> file = ReadSafetensors(single);
    if (!file.ok()) return file.status();
    return weights->CopyFrom(file.value().tensors, single, "model.");
  }
  AdamW moments(*config);  // loaded alongside, unused
  StatusOr<nlohmann::json> loaded = LoadCheckpoint(dir, *weights, moments);
  return loaded.ok() ? Status::Ok() : loaded.status();
}

}  // namespace grove
