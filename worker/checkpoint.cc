#include "worker/checkpoint.h"

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
    info.agree = [world](Status local) {
      int32_t failed = local.ok() ? 0 : 1;
      world->all_reduce(&failed, 1, DType::kI32, comm::ReduceOp::kMax);
      if (!local.ok()) return local;
      return failed ? Status::Error("checkpoint I/O failed on another rank (see its error)")
                    : Status::Ok();
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

StatusOr<nlohmann::json> LoadCheckpoint(const std::string& dir, Weights& params, AdamW& opt,
                                        const CheckpointRank& r) {
  std::vector<ckpt::Piece> pieces = pieces_of(params, opt, r);
  auto state = ckpt::Load(dir, pieces, rank_info(r));
  if (!state.ok()) return state.status();
  if (!state.value().contains("adam_steps"))
    return Status::Error(dir + "/state.json is corrupt or incomplete (no adam_steps)");
  opt.set_steps_taken(state.value()["adam_steps"].get<int>());
  return state;
}

}  // namespace grove
