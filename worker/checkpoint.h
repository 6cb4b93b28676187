// Single-process checkpoints: a directory step_XXXXXXXX/ holding model.safetensors (parameters
// "model.*" and AdamW moments "adam_m.*", "adam_v.*", each with a CRC-32) and state.json (step,
// data-loader position, config). Written to a temporary directory, fsync'ed and renamed, so a
// crash mid-save leaves the previous checkpoint as the latest; `latest` names the newest one.
// Loading validates every tensor and the config before anything is copied into the model.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/status.h"
#include "model/weights.h"
#include "worker/optimizer.h"

namespace grove {

// Saves under `root` (created if needed) and keeps the newest `keep` checkpoints.
// Returns the checkpoint directory path.
StatusOr<std::string> SaveCheckpoint(const std::string& root, int step, const Weights& params,
                                     AdamW& opt, const nlohmann::json& state, int keep);

// The newest complete checkpoint under `root`, or "" when there is none.
std::string LatestCheckpoint(const std::string& root);

// Loads `dir` into params/opt and returns its state.json. On any error (missing file, truncated
// or corrupt shard, shape mismatch) nothing is modified and the message names the file and tensor.
StatusOr<nlohmann::json> LoadCheckpoint(const std::string& dir, Weights& params, AdamW& opt);

}  // namespace grove
