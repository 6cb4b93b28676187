// Distributed checkpoints that load at any parallel layout (in the spirit of Megatron's
// dist-ckpt and torchtitan's DCP).
//
// On disk, one directory per checkpoint:
//   shard-00003.safetensors   one per writing rank: the pieces of global tensors that rank holds,
//                             with a CRC-32 per piece; plain safetensors, readable without Grove
//   index.json                every tensor's global shape and dtype, and for each piece: file,
//                             offset in the global tensor (per dimension), shape, CRC
//   state.json                step, data-loader position, config, layout, loss
// A checkpoint is written into NAME.tmp/, fsync'ed, then renamed to NAME/ and named in `latest`;
// a crash mid-write leaves the previous checkpoint as the latest. Replicated pieces (data-parallel
// copies, norm weights on every TP rank) are written once.
//
// Loading: each rank lists the pieces it needs for ITS layout (name, global shape, offset, local
// shape); the loader reads the stored pieces that intersect each one (whole pieces, so their CRC
// is verified) and copies the intersection. Any error — a missing piece, a region not covered, a
// CRC mismatch, a truncated file — is reported naming the file and tensor, on every rank, and
// nothing is copied into the caller's tensors.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace grove::ckpt {

// One rank's piece of a global tensor.
struct Piece {
  std::string name;
  Tensor local;                 // host tensor (written from / loaded into)
  Shape global_shape;           // shape of the whole tensor
  std::vector<int64_t> offset;  // where `local` starts in the global tensor, per dimension
  bool write = true;            // false when an identical piece is written by another rank
};

// All ranks' agreement: called collectively with this rank's status, returns an error on every
// rank when any rank failed. Single process: the identity.
using Agree = std::function<Status(Status local)>;

struct RankInfo {
  int rank = 0;        // world rank (names the shard file)
  bool leader = true;  // writes index.json and state.json, publishes, prunes
  Agree agree = [](Status s) { return s; };
};

// Saves `pieces` of this rank into ROOT/step_XXXXXXXX/ (all ranks call it together).
// `state` is written to state.json by the leader; `keep` newest checkpoints are kept.
StatusOr<std::string> Save(const std::string& root, int step, const std::vector<Piece>& pieces,
                           const nlohmann::json& state, int keep, const RankInfo& rank);

// The newest complete checkpoint under `root`, or "".
std::string Latest(const std::string& root);

// Whether `dir` is a complete checkpoint, without reading tensor data: index.json and state.json
// parse, and every shard file the index names exists and is long enough for its pieces. The error
// names the missing or damaged file. (Piece checksums are verified by Load.)
Status Verify(const std::string& dir);

// The checkpoint directories under `root` (step_XXXXXXXX, complete or not; unfinished *.tmp saves
// excluded), newest step first.
std::vector<std::string> List(const std::string& root);

// Loads every piece's region from the checkpoint `dir` into piece.local (all ranks together).
// Returns state.json. On any error on any rank nothing is modified on any rank.
StatusOr<nlohmann::json> Load(const std::string& dir, std::vector<Piece>& pieces,
                              const RankInfo& rank);

// The index of `dir`, for inspection.
StatusOr<nlohmann::json> ReadIndex(const std::string& dir);
// A human-readable table: tensors, global shapes, pieces, and the layout, step and loss.
StatusOr<std::string> Inspect(const std::string& dir);

}  // namespace grove::ckpt
