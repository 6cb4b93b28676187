// grove-worker: trains a model. Single process for now:
//   grove-worker train --config configs/demo.json [--set train.lr=1e-3 ...] [--resume]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "worker/trainer.h"

namespace {

int fail(const std::string& message) {
  std::fprintf(stderr, "grove-worker: error: %s\n", message.c_str());
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
  train->add_option("--config,-c", config_path, "JSON config file (defaults when omitted)");
  train->add_option("--set", overrides, "override a config key: section.key=value (repeatable)");
  train->add_flag("--resume", run.resume, "continue from the latest checkpoint in out_dir");
  train->add_option("--resume-from", run.resume_from, "continue from this checkpoint directory");
  train->add_option(
      "--stop-after", run.stop_after,
      "stop after this step (with a checkpoint); the schedule still uses train.steps");
  train->add_flag("--quiet,-q", run.quiet, "no progress lines");
  CLI11_PARSE(app, argc, argv);

  try {
    auto config = grove::LoadTrainConfig(config_path, overrides);
    if (!config.ok()) return fail(config.status().message());
    auto trainer = grove::Trainer::Create(config.value(), run);
    if (!trainer.ok()) return fail(trainer.status().message());
    grove::Status st = trainer.value()->Run();
    if (!st.ok()) return fail(st.message());
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  return 0;
}
