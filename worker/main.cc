// grove-worker: trains a model, on one process or on every rank of an MPI job:
//   grove-worker train --config configs/demo.json [--set train.lr=1e-3 ...] [--resume]
//   mpirun -np 4 grove-worker train --config configs/demo.json --tp 2 --cp 1 --dp 2
//   mpirun -np 4 grove-worker train --coordinator 127.0.0.1:7070 --job job-000001
// With --coordinator, every rank registers with grove-coordinator, trains with the config and
// layout it assigns, heartbeats, stops or checkpoints when told, and reports its exit.
// SIGTERM/SIGUSR1 (preemption) and SIGINT/SIGUSR2 (cancel) stop every rank at the same step with
// a checkpoint (worker/stop_signals.h); the exit says which, so the job can be resumed.
#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/host_allocator.h"
#include "comm/mpi_communicator.h"
#include "kernels/blas/blas_kernel.h"
#include "parallel/grid.h"
#include "worker/coordinator_link.h"
#include "worker/stop_signals.h"
#include "worker/trainer.h"

namespace {

// Errors that every rank sees identically (config, files) are printed once, by rank 0.
int fail(int rank, const std::string& message) {
  if (rank == 0) std::fprintf(stderr, "grove-worker: error: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Before MPI, threads and any GEMM: may execute the program again on the right BLAS kernel.
  const grove::blas::BlasKernel& blas = grove::blas::SelectBlasKernel(argv);
  // Before MPI and threads allocate: the step's large host buffers are reused, not re-faulted.
  const grove::comm::HostAllocatorPolicy allocator = grove::comm::KeepFreedHostMemory();
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
  double stop_grace_s = std::chrono::duration<double>(grove::StopSignals::kDefaultGrace).count();
  train
      ->add_option("--stop-grace", stop_grace_s,
                   "seconds after SIGTERM/SIGINT within which the checkpoint must be written; "
                   "past it the worker exits without one")
      ->check(CLI::Range(0.1, 3600.0));
  grove::CoordinatorLinkOptions link_options;
  std::string token_file;
  train->add_option("--coordinator", link_options.client.address,
                    "grove-coordinator host:port: take the config and layout of --job from it");
  train->add_option("--job", link_options.job_id, "the coordinator's job id to join");
  train->add_option("--token-file", token_file,
                    "coordinator bearer token file (or GROVE_TOKEN / GROVE_TOKEN_FILE); the worker "
                    "credential in GROVE_WORKER_TOKEN / GROVE_WORKER_TOKEN_FILE replaces it");
  train->add_option("--tls-ca", link_options.client.tls_ca_file,
                    "PEM CA of the coordinator's certificate (enables TLS)");
  train->add_option("--tls-server-name", link_options.client.tls_server_name,
                    "name to check in the coordinator's certificate");
  train->add_option("--tls-cert", link_options.client.tls_cert_file,
                    "PEM client certificate, for a coordinator that requires one (mutual TLS)");
  train->add_option("--tls-key", link_options.client.tls_key_file, "PEM private key of --tls-cert");
  CLI11_PARSE(app, argc, argv);
  const bool coordinated = train->count("--coordinator") > 0;
  if (coordinated && (!config_path.empty() || !overrides.empty() || tp > 0 || cp > 0 || ep > 0 ||
                      dp >= 0 || no_sp)) {
    std::fprintf(stderr,
                 "grove-worker: error: with --coordinator the config and layout come from the "
                 "job; drop --config/--set/--tp/--cp/--ep/--dp/--no-sequence-parallel\n");
    return 2;
  }
  if (coordinated && link_options.job_id.empty()) {
    std::fprintf(stderr, "grove-worker: error: --coordinator needs --job JOB_ID\n");
    return 2;
  }

  if (tp > 0) overrides.push_back("parallel.tp=" + std::to_string(tp));
  if (cp > 0) overrides.push_back("parallel.cp=" + std::to_string(cp));
  if (ep > 0) overrides.push_back("parallel.ep=" + std::to_string(ep));
  if (dp >= 0) overrides.push_back("parallel.dp=" + std::to_string(dp));
  if (no_sp) overrides.push_back("parallel.sequence_parallel=false");

  // Declared before the MPI session so that it stands the grace timer down only once the
  // process is past MPI_Finalize.
  struct GraceTimerOff {
    ~GraceTimerOff() { grove::StopSignals::Finished(); }
  } grace_timer_off;
  grove::comm::MpiSession mpi(&argc, &argv);
  grove::StopSignals::Install(std::chrono::milliseconds(static_cast<int64_t>(stop_grace_s * 1000)));
  const int rank = mpi.world_rank();
  if (!allocator.applied && rank == 0)
    std::fprintf(stderr, "grove-worker: note: %s\n", allocator.reason.c_str());
  std::unique_ptr<grove::CoordinatorLink> link;
  // The grace hook uses `link`: it is removed (waiting for a running hook) before link goes.
  struct GraceHookOff {
    ~GraceHookOff() { grove::StopSignals::OnGraceExpired({}); }
  } grace_hook_off;
  // With a coordinator every exit is reported to it (code and message) before returning.
  auto finish = [&](int code, const std::string& message, int stop_signal = 0) {
    if (code != 0 && (link == nullptr || rank == 0 || code == 3))
      std::fprintf(stderr, "grove-worker: error%s: %s\n",
                   code == 3 ? (" on rank " + std::to_string(rank)).c_str() : "", message.c_str());
    if (link != nullptr) {
      auto state = link->ReportExit(code, message, stop_signal);
      if (!state.ok()) std::fprintf(stderr, "grove-worker: %s\n", state.status().message().c_str());
    }
    return code;
  };
  std::shared_ptr<grove::comm::Communicator> world;
  try {
    grove::StatusOr<grove::TrainConfig> config = grove::Status::Error("no config");
    if (coordinated) {
      auto token = grove::rpc::ResolveToken("", token_file);
      if (!token.ok()) return fail(rank, token.status().message());
      link_options.client.token = token.value();
      link_options.rank = rank;
      link_options.devices = "cpu (BLAS: " + blas.Describe() + ")";
      link_options.world_size = mpi.world_size();
      auto registered = grove::CoordinatorLink::Register(link_options);
      // Every rank must have joined before any of them starts collectives.
      world = std::shared_ptr<grove::comm::Communicator>(mpi.world());
      int32_t refused = registered.ok() ? 0 : 1;
      world->all_reduce(&refused, 1, grove::DType::kI32, grove::comm::ReduceOp::kMax);
      if (!registered.ok()) {
        std::fprintf(stderr, "grove-worker: error on rank %d: %s\n", rank,
                     registered.status().message().c_str());
        return 2;
      }
      link = std::move(registered).value();
      if (refused != 0) return finish(2, "another rank could not register with the coordinator");
      const auto& a = link->assignment();
      if (a.resume()) run.resume = true;  // a restart continues from the last checkpoint
      config = grove::TrainConfigFromJson(nlohmann::json::parse(a.config_json()));
      if (!config.ok())
        return finish(2, "config from the coordinator: " + config.status().message());
      link->Start();
      // A rank that cannot save within the stop grace still tells the coordinator why it ends,
      // so the job is PREEMPTED (or CANCELLED) rather than failed by the launcher's report.
      grove::StopSignals::OnGraceExpired(
          [l = link.get()](int sig) { l->ReportGraceExpired(sig, std::chrono::seconds(3)); });
    } else {
      config = grove::LoadTrainConfig(config_path, overrides);
    }
    if (!config.ok()) return fail(rank, config.status().message());
    grove::Status st = config.value().ResolveLayout(mpi.world_size());
    if (!st.ok()) return link ? finish(2, st.message()) : fail(rank, st.message());
    const grove::ParallelOptions& p = config.value().parallel;

    std::unique_ptr<grove::parallel::ParallelGrid> grid;
    if (mpi.world_size() > 1) {
      auto g = grove::parallel::ParallelGrid::create(
          world ? world : std::shared_ptr<grove::comm::Communicator>(mpi.world()),
          {mpi.world_size(), p.tp, p.cp, p.ep, p.dp});
      if (!g.ok()) return link ? finish(2, g.status().message()) : fail(rank, g.status().message());
      grid = std::make_unique<grove::parallel::ParallelGrid>(std::move(g).value());
    }
    // After every step: the coordinator's decision (if any) and the stop signals' vote, each
    // one collective over the world, so every rank acts alike at the same step.
    grove::comm::Communicator* world_comm = grid ? &grid->world() : nullptr;
    std::function<grove::StepControl(const grove::StepMetrics&)> link_hook;
    grove::StopCause stop_cause = grove::StopCause::kNone;
    if (link) {
      link_hook = link->StepHook(world_comm);
      run.on_checkpoint = [l = link.get()](int step, const std::string& path) {
        l->RecordCheckpoint(step, path);
      };
    }
    run.on_step = [&](const grove::StepMetrics& m) {
      const grove::StepControl control = link_hook ? link_hook(m) : grove::StepControl::kContinue;
      stop_cause = grove::StopSignals::Agree(world_comm);
      return stop_cause != grove::StopCause::kNone ? grove::StepControl::kStop : control;
    };
    auto trainer = grove::Trainer::Create(config.value(), run, grid.get());
    if (!trainer.ok())
      return link ? finish(2, trainer.status().message()) : fail(rank, trainer.status().message());
    if (link) link->SetResumedStep(trainer.value()->step());
    st = trainer.value()->Run();
    if (!st.ok()) return link ? finish(2, st.message()) : fail(rank, st.message());
    const std::string at = "at step " + std::to_string(trainer.value()->step());
    if (link && link->abort_requested())
      return finish(grove::CoordinatorLink::kAbortExitCode,
                    "stopped " + at + ": " + link->stop_reason());
    if (stop_cause != grove::StopCause::kNone) {
      // This rank's own signal, or the one its peers received (the same cause).
      int sig = grove::StopSignals::signal();
      if (grove::StopSignals::cause() != stop_cause)
        sig = stop_cause == grove::StopCause::kPreempted ? SIGTERM : SIGINT;
      const std::string message = std::string(grove::StopCauseName(stop_cause)) + " (SIG" +
                                  sigabbrev_np(sig) + "): stopped " + at + " after a checkpoint";
      if (rank == 0) std::fprintf(stderr, "grove-worker: %s\n", message.c_str());
      // With a coordinator the job's state tells the story and mpirun must not cut the other
      // ranks' reports short: exit 0. Alone, 128 + signal, as a shell reports a signal.
      return link ? finish(0, message, sig) : 128 + sig;
    }
    if (link) {
      return finish(0, link->stop_requested()
                           ? "stopped " + at + " after a checkpoint: " + link->stop_reason()
                           : "finished " + at);
    }
  } catch (const std::exception& e) {
    if (link) return finish(3, e.what());
    // Unexpected: may be one rank only, so every rank reports, tagged.
    std::fprintf(stderr, "grove-worker: error on rank %d: %s\n", rank, e.what());
    return 3;
  }
  return 0;
}
