#include "worker/checkpoint.h"

#include <filesystem>
#include <fstream>

#include "checkpoint/sharded_checkpoint.h"

namespace grove {

namespace {

void add_pieces(std::vector<ckpt::Piece>* out, const Weights& w, const std::string& prefix,
                const CheckpointRank& r) {
  for (const NamedTensor& nt : w.named()) {
    PiecePlacement pl = PlacementOf(nt.name, nt.tensor, r);
    out->push_back({prefix + nt.name, nt.tensor, pl.global_shape, pl.offset, pl.owner});
  }
}

std::vector<ckpt::Piece> pieces_of(const Weights& params, AdamW& opt, const CheckpointRank& r) {
  std::vector<ckpt::Piece> pieces;
  add_pieces(&pieces, params, "model.", r);
  add_pieces(&pieces, opt.m(), "adam_m.", r);
  add_pieces(&pieces, opt.v(), "adam_v.", r);
  return pieces;
}

ckpt::RankInfo rank_info(const CheckpointRank& r) {
  ckpt::RankInfo info;
  info.rank = r.world_rank;
  info.leader = r.world_rank == 0;
  if (r.world != nullptr && r.world->size() > 1) {
    comm::Communicator* world = r.world;
    // Every rank learns the lowest failing rank's error, so whichever rank prints or reports it
    // names the file (a damaged shard may be read by one rank only).
    info.agree = [world](Status local) {
      // MAX of (size - rank) over the failing ranks picks the lowest one; 0: none failed.
      int32_t vote = local.ok() ? 0 : world->size() - world->rank();
      world->all_reduce(&vote, 1, DType::kI32, comm::ReduceOp::kMax);
      if (vote == 0) return Status::Ok();
      const int first = world->size() - vote;
      std::string message = first == world->rank() ? local.message() : std::string();
      int64_t length = static_cast<int64_t>(message.size());
      world->broadcast(&length, 1, DType::kI64, first);
      message.resize(static_cast<size_t>(length));
      if (length > 0) world->broadcast(message.data(), length, DType::kU8, first);
      if (!local.ok()) return local;
      return Status::Error("checkpoint I/O failed on rank " + std::to_string(first) + ": " +
                           message);
    };
  }
  return info;
}

}  // namespace

// Where this rank's shard of each tensor sits in the global tensor (model/weights.h shard_dim).
PiecePlacement PlacementOf(const std::string& name, const Tensor& local, const CheckpointRank& r) {
  PiecePlacement p{local.shape(), std::vector<int64_t>(local.ndim(), 0), r.replica_writer};
  switch (shard_dim(name)) {
    case ShardDim::kReplicated:
      p.owner = p.owner && r.tp_rank == 0;
      break;
    case ShardDim::kRows:
      p.global_shape[0] *= r.tp;
      p.offset[0] = r.tp_rank * local.dim(0);
      break;
    case ShardDim::kCols:
      p.global_shape[1] *= r.tp;
      p.offset[1] = r.tp_rank * local.dim(1);
      break;
    case ShardDim::kExperts:
      p.global_shape[0] *= r.ep;
      p.offset[0] = r.ep_rank * local.dim(0);
      p.owner = r.expert_writer;
      break;
  }
  return p;
}

StatusOr<std::string> SaveCheckpoint(const std::string& root, int step, const Weights& params,
                                     AdamW& opt, const nlohmann::json& state, int keep,
                                     const CheckpointRank& r) {
  nlohmann::json s = state;
  s["adam_steps"] = opt.steps_taken();
  s["layout"]["tp"] = r.tp;
  s["layout"]["ep"] = r.ep;
  return ckpt::Save(root, step, pieces_of(params, opt, r), s, keep, rank_info(r));
}

std::string LatestCheckpoint(const std::string& root) {
  return ckpt::Latest(root);
}

namespace {

// "DIR (step N), DIR (step M)" for the complete checkpoints under root, or "".
std::string complete_checkpoints(const std::string& root, const std::string& except) {
  std::string out;
  for (const std::string& dir : ckpt::List(root)) {
    if (dir == except || !ckpt::Verify(dir).ok()) continue;
    out += (out.empty() ? "" : ", ") + dir;
  }
  return out;
}

// The error for a checkpoint that cannot be resumed: what is wrong, and what is left.
Status cannot_resume(const std::string& root, const std::string& what, const std::string& except) {
  const std::string left = complete_checkpoints(root, except);
  return Status::Error("cannot resume: " + what + "; " +
                       (left.empty() ? "there is no complete checkpoint in " + root +
                                           " (start afresh in another out_dir)"
                                     : "complete checkpoints still there (newest first): " + left +
                                           "; continue from one with --resume-from DIR"));
}

}  // namespace

std::string CheckpointRoot(const std::string& out_dir) {
  return out_dir + "/checkpoints";
}

StatusOr<std::string> ResolveStart(const std::string& out_dir, bool resume,
                                   const std::string& resume_from) {
  namespace fs = std::filesystem;
  const std::string root = CheckpointRoot(out_dir);
  std::error_code ec;
  const fs::path latest_file = fs::path(root) / "latest";
  const bool has_latest = fs::exists(latest_file, ec);
  const std::vector<std::string> dirs = ckpt::List(root);
  if (!resume_from.empty()) {
    if (Status st = ckpt::Verify(resume_from); !st.ok())
      return cannot_resume(root, "--resume-from " + resume_from + ": " + st.message(), resume_from);
    return resume_from;
  }
  if (!resume) {
    if (!has_latest && dirs.empty()) return std::string();
    return Status::Error(
        "out_dir '" + out_dir + "' already holds checkpoints (" +
        (has_latest ? latest_file.string() + " names " + ckpt::Latest(root) : dirs.front()) +
        "); pass --resume to continue it, --resume-from DIR to pick one, or "
        "choose another out_dir");
  }
  if (!has_latest) {
    if (dirs.empty()) return std::string();  // nothing saved yet: a restart before the first save
    return cannot_resume(root,
                         latest_file.string() +
                             " is missing (it names the checkpoint to "
                             "continue from)",
                         "");
  }
  std::ifstream in(latest_file);
  std::string name;
  if (!(in >> name) || name.find('/') != std::string::npos || !name.starts_with("step_"))
    return cannot_resume(root, latest_file.string() + " is empty or damaged", "");
  const std::string dir = (fs::path(root) / name).string();
  if (Status st = ckpt::Verify(dir); !st.ok())
    return cannot_resume(root, "the latest checkpoint is damaged: " + st.message(), dir);
  return dir;
}

StatusOr<nlohmann::json> LoadCheckpoint(const std::string& dir, Weights& params, AdamW& opt,
                                        const CheckpointRank& r) {
  std::vector<ckpt::Piece> pieces = pieces_of(params, opt, r);
  auto state = ckpt::Load(dir, pieces, rank_info(r));
  if (!state.ok()) {
    const std::string root = std::filesystem::path(dir).parent_path().string();
    const std::string left = complete_checkpoints(root, dir);
    return Status::Error(state.status().message() +
                         (left.empty() ? ""
                                       : "; other complete checkpoints (newest first): " + left +
                                             "; continue from one with --resume-from DIR"));
  }
  if (!state.value().contains("adam_steps"))
    return Status::Error(dir + "/state.json is corrupt or incomplete (no adam_steps)");
  opt.set_steps_taken(state.value()["adam_steps"].get<int>());
  return state;
}

}  // namespace grove
