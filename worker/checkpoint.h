// Checkpoints: a directory step_XXXXXXXX/ holding one safetensors file per tensor-parallel shard
// (model.safetensors at tp = 1, model-tp{r}-of-{t}.safetensors otherwise: parameters "model.*"
// and AdamW moments "adam_m.*", "adam_v.*", each with a CRC-32) and state.json (step,
// data-loader position, config, layout). Data-parallel replicas hold identical shards, so only
// dp rank 0 of each TP shard writes. Loading needs the same tp as the writer (resharding to
// another layout belongs to distributed checkpoints). Written to a temporary directory, fsync'ed
// and renamed, so a crash mid-save leaves the previous checkpoint as the latest; `latest` names the
// newest one. Loading validates every tensor and the config before anything is copied into the
// model.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "comm/communicator.h"
#include "core/status.h"
#include "model/weights.h"
#include "worker/optimizer.h"

namespace grove {

// This rank's part in a checkpoint. Every rank of `world` calls Save/Load together; a failure on
// any rank makes the call fail on all of them (no rank waits forever, nothing half-loads).
struct CheckpointRank {
  int shard = 0;                        // tensor-parallel rank
  int shards = 1;                       // tensor-parallel size
  bool writer = true;                   // writes its shard (data-parallel rank 0)
  bool leader = true;                   // writes state.json, publishes, prunes (world rank 0)
  comm::Communicator* world = nullptr;  // null: single process
};

// Saves under `root` (created if needed) and keeps the newest `keep` checkpoints.
// Returns the checkpoint directory path.
StatusOr<std::string> SaveCheckpoint(const std::string& root, int step, const Weights& params,
                                     AdamW& opt, const nlohmann::json& state, int keep,
                                     const CheckpointRank& rank = {});

// The newest complete checkpoint under `root`, or "" when there is none.
std::string LatestCheckpoint(const std::string& root);

// Loads `dir` into params/opt and returns its state.json. On any error (missing file, truncated
// or corrupt shard, shape mismatch) nothing is modified and the message names the file and tensor.
StatusOr<nlohmann::json> LoadCheckpoint(const std::string& dir, Weights& params, AdamW& opt,
                                        const CheckpointRank& rank = {});

}  // namespace grove
