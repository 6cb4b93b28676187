// Checkpoints of a training run, in the distributed format of checkpoint/sharded_checkpoint.h:
// parameters ("model.<name>") and AdamW moments ("adam_m.<name>", "adam_v.<name>") are saved as
// pieces of their global tensors, each rank writing the pieces it alone holds (tensor-parallel
// shards; replicated norm weights and data-parallel copies once), plus index.json and state.json
// (step, optimizer step count, data-loader position, config, layout). A checkpoint written at
// one layout loads at any other: each rank reads the pieces covering its own shards.
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
  int tp_rank = 0;                      // tensor-parallel rank
  int tp = 1;                           // tensor-parallel size
  bool replica_writer = true;           // first data-parallel replica: writes its dense shards
  int world_rank = 0;                   // names the shard file; rank 0 leads
  comm::Communicator* world = nullptr;  // null: single process
  int ep_rank = 0;                      // expert-parallel rank and size (experts split on dim 0)
  int ep = 1;
  bool expert_writer = true;  // first expert replica (edp rank 0): writes its experts
};

// Which rank holds the one copy of each piece that gets written (and counted once in a global
// gradient norm): this rank's pieces of `w` with their placement in the global tensors.
struct PiecePlacement {
  Shape global_shape;
  std::vector<int64_t> offset;
  bool owner;  // this rank writes it / counts it
};
PiecePlacement PlacementOf(const std::string& name, const Tensor& local, const CheckpointRank& r);

// Saves under `root` (created if needed) and keeps the newest `keep` checkpoints.
// Returns the checkpoint directory path.
StatusOr<std::string> SaveCheckpoint(const std::string& root, int step, const Weights& params,
                                     AdamW& opt, const nlohmann::json& state, int keep,
                                     const CheckpointRank& rank = {});

// The newest complete checkpoint under `root`, or "" when there is none.
std::string LatestCheckpoint(const std::string& root);

// Where a run keeps its checkpoints: OUT_DIR/checkpoints.
std::string CheckpointRoot(const std::string& out_dir);

// Where a run in `out_dir` starts, refusing whatever would start over by accident or overwrite
// work. Returns the checkpoint directory to load, or "" for a fresh start:
//   resume_from set: that directory, which must be a complete checkpoint;
//   resume:          the checkpoint `latest` names; "" only when the root holds no checkpoint at
//                    all (e.g. a restart before the first save);
//   neither:         "", refused when the root holds any checkpoint or a `latest` file.
// A missing or damaged `latest`, step directory, index.json, state.json or shard file is an error
// naming it and listing the complete checkpoints still there with the flag to pick one
// (--resume-from DIR). Reads only; nothing is modified.
StatusOr<std::string> ResolveStart(const std::string& out_dir, bool resume,
                                   const std::string& resume_from);

// Loads `dir` into params/opt and returns its state.json. On any error (missing file, truncated
// or corrupt shard, shape mismatch) nothing is modified and the message names the file and tensor.
StatusOr<nlohmann::json> LoadCheckpoint(const std::string& dir, Weights& params, AdamW& opt,
                                        const CheckpointRank& rank = {});

}  // namespace grove
