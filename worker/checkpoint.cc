#include "worker/checkpoint.h"

#include "checkpoint/sharded_checkpoint.h"

namespace grove {

namespace {

// Where this rank's shard of each tensor sits in the global tensor (model/weights.h shard_dim).
void add_pieces(std::vector<ckpt::Piece>* out, const Weights& w, const std::string& prefix,
                const CheckpointRank& r) {
  for (const NamedTensor& nt : w.named()) {
    ckpt::Piece p;
    p.name = prefix + nt.name;
    p.local = nt.tensor;
    p.global_shape = nt.tensor.shape();
    p.offset.assign(nt.tensor.ndim(), 0);
    p.write = r.replica_writer;
    switch (shard_dim(nt.name)) {
      case ShardDim::kReplicated:
        p.write = p.write && r.tp_rank == 0;
        break;
      case ShardDim::kRows:
        p.global_shape[0] *= r.tp;
        p.offset[0] = r.tp_rank * nt.tensor.dim(0);
        break;
      case ShardDim::kCols:
        p.global_shape[1] *= r.tp;
        p.offset[1] = r.tp_rank * nt.tensor.dim(1);
        break;
    }
    out->push_back(std::move(p));
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

StatusOr<std::string> SaveCheckpoint(const std::string& root, int step, const Weights& params,
                                     AdamW& opt, const nlohmann::json& state, int keep,
                                     const CheckpointRank& r) {
  nlohmann::json s = state;
  s["adam_steps"] = opt.steps_taken();
  s["layout"]["tp"] = r.tp;
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
