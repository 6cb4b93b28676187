// grove-worker: trains a model, on one process or on every rank of an MPI job:
//   grove-worker train --config configs/demo.json [--set train.lr=1e-3 ...] [--resume]
//   mpirun -np 4 grove-worker train --config configs/demo.json --tp 2 --dp 2
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "parallel/grid.h"
#include "worker/trainer.h"

namespace {

// Errors that every rank sees identically (config, files) are printed once, by rank 0.
int fail(int rank, const std::string& message) {
  if (rank == 0) std::fprintf(stderr, "grove-worker: error: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Grove worker: trains a decoder-only (MoE) transformer"};
  app.require_subcommand(1);
  CLI::App* train = app.add_subcommand("train", "train a model from a JSON config");
  std::string config_path;
  std::vector<std::string> overrides;
  grove::RunOptions run;
  int tp = 0, cp = 0, ep = 0, dp = -1;
  bool no_sp = false;
  train->add_option("--config,-c", config_path, "JSON config file (defaults when omitted)");
  train->add_option("--set", overrides, "override a config key: section.key=value (repeatable)");
  train->add_option("--tp", tp, "tensor-parallel size (parallel.tp)");
  train->add_option("--cp", cp, "context-parallel size (parallel.cp)");
  train->add_option("--ep", ep, "expert-parallel size (parallel.ep)");
  train->add_option("--dp", dp, "data-parallel size (parallel.dp; 0 = ranks / (tp*cp))");
  train->add_flag("--no-sequence-parallel", no_sp, "plain TP: replicate norms and residuals");
  train->add_flag("--resume", run.resume, "continue from the latest checkpoint in out_dir");
  train->add_option("--resume-from", run.resume_from, "continue from this checkpoint directory");
  train->add_option(
      "--stop-after", run.stop_after,
      "stop after this step (with a checkpoint); the schedule still uses train.steps");
  train->add_flag("--quiet,-q", run.quiet, "no progress lines");
  CLI11_PARSE(app, argc, argv);

  if (tp > 0) overrides.push_back("parallel.tp=" + std::to_string(tp));
  if (cp > 0) overrides.push_back("parallel.cp=" + std::to_string(cp));
  if (ep > 0) overrides.push_back("parallel.ep=" + std::to_string(ep));
  if (dp >= 0) overrides.push_back("parallel.dp=" + std::to_string(dp));
  if (no_sp) overrides.push_back("parallel.sequence_parallel=false");

  grove::comm::MpiSession mpi(&argc, &argv);
  const int rank = mpi.world_rank();
  try {
    auto config = grove::LoadTrainConfig(config_path, overrides);
    if (!config.ok()) return fail(rank, config.status().message());
    grove::Status st = config.value().ResolveLayout(mpi.world_size());
    if (!st.ok()) return fail(rank, st.message());
    const grove::ParallelOptions& p = config.value().parallel;

    std::unique_ptr<grove::parallel::ParallelGrid> grid;
    if (mpi.world_size() > 1) {
      auto g = grove::parallel::ParallelGrid::create(
          std::shared_ptr<grove::comm::Communicator>(mpi.world()),
          {mpi.world_size(), p.tp, p.cp, p.ep, p.dp});
      if (!g.ok()) return fail(rank, g.status().message());
      grid = std::make_unique<grove::parallel::ParallelGrid>(std::move(g).value());
    }
    auto trainer = grove::Trainer::Create(config.value(), run, grid.get());
    if (!trainer.ok()) return fail(rank, trainer.status().message());
    st = trainer.value()->Run();
    if (!st.ok()) return fail(rank, st.message());
  } catch (const std::exception& e) {
    // Unexpected: may be one rank only, so every rank reports, tagged.
    std::fprintf(stderr, "grove-worker: error on rank %d: %s\n", rank, e.what());
    return 3;
  }
  return 0;
}
