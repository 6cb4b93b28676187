// Checkpoints load at any layout: saved at tp = a (dp = world / a), loaded at tp = b, every
// parameter and AdamW moment shard equals the slice of the original full tensor bit for bit, for
// every pair a, b in {1, 2, 4} that divides the world. Also: a corrupt piece fails on every rank
// and changes nothing.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "comm/mpi_communicator.h"
#include "core/rng.h"
#include "parallel/grid.h"
#include "tests/comm/mpi_test_env.h"
#include "worker/checkpoint.h"

namespace grove {
namespace {

namespace fs = std::filesystem;

ModelConfig Config() {
  ModelConfig c;
  c.vocab_size = 64;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.max_seq_len = 16;
  return c;
}

// Deterministic "trained" full state: parameters and both moments differ.
struct FullState {
  Weights params, m, v;
};
FullState MakeFull(const ModelConfig& c) {
  FullState s{Weights::Init(c), Weights::Zeros(c), Weights::Zeros(c)};
  Rng rng(17);
  for (Weights* w : {&s.m, &s.v})
    for (NamedTensor& nt : w->named())
      for (int64_t i = 0; i < nt.tensor.numel(); ++i)
        nt.tensor.data<float>()[i] = float(rng.uniform());
  return s;
}

CheckpointRank RankFor(int tp, comm::Communicator& world, int ep = 1) {
  const parallel::GridShape shape{world.size(), tp, 1, ep, world.size() / tp};
  const parallel::GridCoord c = parallel::grid_coord(shape, world.rank());
  return CheckpointRank{c.tp, tp, c.dp == 0, c.rank, &world, c.ep, ep, c.edp == 0};
}

ModelConfig MoeConfig() {
  ModelConfig c = Config();
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.every = 2;
  c.moe.expert_ffn = 16;
  return c;
}

bool Equal(const Weights& a, const Weights& b) {
  auto na = a.named(), nb = b.named();
  for (size_t i = 0; i < na.size(); ++i)
    if (na[i].tensor.shape() != nb[i].tensor.shape() ||
        std::memcmp(na[i].tensor.raw(), nb[i].tensor.raw(), na[i].tensor.bytes()) != 0) {
      ADD_FAILURE() << "tensor " << na[i].name << " differs";
      return false;
    }
  return true;
}

std::string Root(comm::Communicator& world, const std::string& tag) {
  // Same directory on every rank (one machine): made by rank 0 before anyone writes.
  const std::string root = (fs::temp_directory_path() / ("grove_reshard_" + tag)).string();
  if (world.rank() == 0) fs::remove_all(root);
  world.barrier();
  return root;
}

void EveryLayoutPair(const ModelConfig& c, const std::string& tag) {
  comm::Communicator& world = test::world();
  const FullState full = MakeFull(c);
  for (int save_tp : {1, 2, 4}) {
    if (world.size() % save_tp) continue;
    const std::string root = Root(world, tag + std::to_string(save_tp));
    const int r = world.rank() % save_tp;
    Weights p = Weights::Shard(full.params, c, save_tp, r);
    AdamW opt(c, save_tp);
    opt.m() = Weights::Shard(full.m, c, save_tp, r);
    opt.v() = Weights::Shard(full.v, c, save_tp, r);
    opt.set_steps_taken(9);
    auto dir = SaveCheckpoint(root, 9, p, opt, {{"loss", 1.0}}, 1, RankFor(save_tp, world));
    ASSERT_TRUE(dir.ok()) << dir.status().message();
    for (int load_tp : {1, 2, 4}) {
      if (world.size() % load_tp) continue;
      SCOPED_TRACE("saved at tp=" + std::to_string(save_tp) +
                   ", loaded at tp=" + std::to_string(load_tp));
      const int lr = world.rank() % load_tp;
      Weights q = Weights::Zeros(c, load_tp);
      AdamW opt2(c, load_tp);
      auto st = LoadCheckpoint(dir.value(), q, opt2, RankFor(load_tp, world));
      ASSERT_TRUE(st.ok()) << st.status().message();
      EXPECT_EQ(opt2.steps_taken(), 9);
      EXPECT_TRUE(Equal(q, Weights::Shard(full.params, c, load_tp, lr)));
      EXPECT_TRUE(Equal(opt2.m(), Weights::Shard(full.m, c, load_tp, lr)));
      EXPECT_TRUE(Equal(opt2.v(), Weights::Shard(full.v, c, load_tp, lr)));
    }
    world.barrier();
    if (world.rank() == 0) fs::remove_all(root);
  }
}

TEST(Reshard, EveryLayoutPairIsBitExact) {
  EveryLayoutPair(Config(), "pair");
}

// Multi-head latent attention: head-split up-projections, replicated down-projections and
// latent norms (model.attention=mla with a query latent).
TEST(Reshard, MlaLayoutPairsAreBitExact) {
  ModelConfig c = Config();
  c.attention = Attention::kMla;
  c.mla = MlaOptions{16, 24, 8, 4, 8};
  EveryLayoutPair(c, "mla");
}

// MoE: experts placed by ep rank; saved at (tp, ep) and loaded at every other (tp, ep).
TEST(Reshard, MoeLayoutsAreBitExact) {
  comm::Communicator& world = test::world();
  const ModelConfig c = MoeConfig();
  const FullState full = MakeFull(c);
  const std::vector<std::pair<int, int>> layouts = {{1, 1}, {2, 2}, {1, 2}, {2, 1},
                                                    {4, 1}, {1, 4}, {2, 4}};
  for (auto [stp, sep] : layouts) {
    if (world.size() % stp || world.size() % sep) continue;
    const std::string root = Root(world, "moe" + std::to_string(stp) + std::to_string(sep));
    const CheckpointRank sr = RankFor(stp, world, sep);
    Weights p = Weights::Shard(full.params, c, stp, sr.tp_rank, sep, sr.ep_rank);
    AdamW opt(c, stp, sep);
    opt.m() = Weights::Shard(full.m, c, stp, sr.tp_rank, sep, sr.ep_rank);
    opt.v() = Weights::Shard(full.v, c, stp, sr.tp_rank, sep, sr.ep_rank);
    auto dir = SaveCheckpoint(root, 3, p, opt, {}, 1, sr);
    ASSERT_TRUE(dir.ok()) << dir.status().message();
    for (auto [ltp, lep] : layouts) {
      if (world.size() % ltp || world.size() % lep) continue;
      SCOPED_TRACE("saved at tp=" + std::to_string(stp) + " ep=" + std::to_string(sep) +
                   ", loaded at tp=" + std::to_string(ltp) + " ep=" + std::to_string(lep));
      const CheckpointRank lr = RankFor(ltp, world, lep);
      Weights q = Weights::Zeros(c, ltp, lep);
      AdamW opt2(c, ltp, lep);
      auto st = LoadCheckpoint(dir.value(), q, opt2, lr);
      ASSERT_TRUE(st.ok()) << st.status().message();
      EXPECT_TRUE(Equal(q, Weights::Shard(full.params, c, ltp, lr.tp_rank, lep, lr.ep_rank)));
      EXPECT_TRUE(Equal(opt2.m(), Weights::Shard(full.m, c, ltp, lr.tp_rank, lep, lr.ep_rank)));
      EXPECT_TRUE(Equal(opt2.v(), Weights::Shard(full.v, c, ltp, lr.tp_rank, lep, lr.ep_rank)));
    }
    world.barrier();
    if (world.rank() == 0) fs::remove_all(root);
  }
}

TEST(Reshard, CorruptPieceFailsEverywhereAndChangesNothing) {
  comm::Communicator& world = test::world();
  const ModelConfig c = Config();
  const int tp = world.size() % 2 == 0 ? 2 : 1;
  const std::string root = Root(world, "corrupt");
  Weights p = Weights::Init(c, tp, world.rank() % tp);
  AdamW opt(c, tp);
  auto dir = SaveCheckpoint(root, 1, p, opt, {}, 1, RankFor(tp, world));
  ASSERT_TRUE(dir.ok()) << dir.status().message();
  if (world.rank() == 0) {  // flip one byte in the last piece of shard file 0
    const std::string f = dir.value() + "/shard-00000.safetensors";
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(-5, std::ios::end);
    char ch;
    io.read(&ch, 1);
    ch ^= 0x40;
    io.seekp(-5, std::ios::end);
    io.write(&ch, 1);
  }
  world.barrier();
  Weights q = Weights::Zeros(c, tp);
  AdamW opt2(c, tp);
  auto st = LoadCheckpoint(dir.value(), q, opt2, RankFor(tp, world));
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(Equal(q, Weights::Zeros(c, tp))) << "a failed load modified the model";
  if (world.rank() == 0) {
    EXPECT_NE(st.status().message().find("checksum mismatch in tensor"), std::string::npos)
        << st.status().message();
  }
  world.barrier();
  if (world.rank() == 0) fs::remove_all(root);
}

}  // namespace
}  // namespace grove
