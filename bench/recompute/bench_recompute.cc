// Selective activation recomputation and sequence parallelism (docs/memory.md), measured:
//   1. activation bytes per layer for none / selective / full, TP-only vs TP+SP, at t = 4 on a
//      long-sequence config (from spec/memory.h, which tests/model proves equal to the stash);
//   2. step time (forward + backward) for none / selective / full on this machine, same run;
//   3. under mpirun -np t: step time of TP-only vs TP+SP at tp = t.
// One JSON line per measurement, each with its peer (none, or TP-only) and the ratio.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "comm/mpi_communicator.h"
#include "core/rng.h"
#include "kernels/blas/blas_kernel.h"
#include "model/transformer.h"
#include "parallel/grid.h"
#include "spec/memory.h"

namespace {

using grove::MemoryLayout;
using grove::ModelConfig;
using grove::Recompute;
using json = nlohmann::json;

constexpr Recompute kModes[] = {Recompute::kNone, Recompute::kSelective, Recompute::kFull};

double time_steps(const ModelConfig& c, int b, int s, Recompute mode, grove::ModelParallel par,
                  int warmup, int steps) {
  grove::Transformer model(c, b, s, mode, par);
  std::vector<int32_t> tokens(size_t(b) * s), targets(tokens.size());
  grove::Rng rng(3);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = int32_t(rng.next_u64() % c.vocab_size);
    targets[i] = int32_t(rng.next_u64() % c.vocab_size);
  }
  auto step = [&] {
    model.zero_grads();
    model.forward(tokens.data(), targets.data());
    model.backward();
  };
  for (int i = 0; i < warmup; ++i) step();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
         steps;
}

json model_json(const ModelConfig& c, int b, int s, int t) {
  return {{"d_model", c.d_model},
          {"heads", c.n_heads},
          {"layers", c.n_layers},
          {"ffn", c.ffn()},
          {"vocab", c.vocab_size},
          {"seq", s},
          {"batch", b},
          {"tp", t},
          {"a_s_over_h", double(c.n_heads) * s / c.d_model}};
}

void print(const json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  grove::blas::SelectBlasKernel(argv);  // before MPI and any GEMM (may re-execute)
  CLI::App app{"Activation memory and step time per recompute mode, TP-only vs TP+SP"};
  int steps = 3, warmup = 1;
  int mem_t = 4, mem_seq = 4096;
  int time_seq = 256, time_batch = 8;
  app.add_option("--steps", steps);
  app.add_option("--warmup", warmup);
  app.add_option("--mem-tp", mem_t, "t for the memory table");
  app.add_option("--mem-seq", mem_seq, "sequence length for the memory table");
  app.add_option("--time-seq", time_seq);
  app.add_option("--time-batch", time_batch);
  CLI11_PARSE(app, argc, argv);

  grove::comm::MpiSession mpi(&argc, &argv);
  const int world = mpi.world_size(), rank = mpi.world_rank();

  ModelConfig c;
  c.vocab_size = 8192;
  c.d_model = 512;
  c.n_layers = 4;
  c.n_heads = 8;
  c.max_seq_len = std::max(mem_seq, time_seq);

  // 1. Memory per layer (bytes), t = mem_t, b = 1.
  if (rank == 0) {
    const int64_t tp_only =
        grove::ActivationBytesPerLayer(c, MemoryLayout{1, mem_seq, mem_t, false, Recompute::kNone});
    for (bool sp : {false, true}) {
      for (Recompute mode : kModes) {
        const int64_t bytes =
            grove::ActivationBytesPerLayer(c, MemoryLayout{1, mem_seq, mem_t, sp, mode});
        print({{"name", "activation_bytes_per_layer"},
               {"config", model_json(c, 1, mem_seq, mem_t)},
               {"recompute", grove::recompute_name(mode)},
               {"sequence_parallel", sp},
               {"value", bytes},
               {"unit", "bytes"},
               {"peer", "tp_only_no_recompute"},
               {"peer_value", tp_only},
               {"ratio", double(tp_only) / double(bytes)},
               {"source", "spec/memory.h (equal to the stash, tests/model)"}});
      }
    }
  }

  // 2. Step time per recompute mode, single process on this rank's threads.
  if (world == 1) {
    double none_ms = 0;
    for (Recompute mode : kModes) {
      const double ms = time_steps(c, time_batch, time_seq, mode, {}, warmup, steps);
      if (mode == Recompute::kNone) none_ms = ms;
      print({{"name", "step_ms"},
             {"config", model_json(c, time_batch, time_seq, 1)},
             {"recompute", grove::recompute_name(mode)},
             {"threads", omp_get_max_threads()},
             {"value", ms},
             {"unit", "ms"},
             {"peer", "recompute_none"},
             {"peer_value", none_ms},
             {"ratio", ms / none_ms}});
    }
    return 0;
  }

  // 3. Under mpirun -np t: TP-only vs TP+SP at tp = world (selective recompute).
  auto grid = grove::parallel::ParallelGrid::create(
      std::shared_ptr<grove::comm::Communicator>(mpi.world()), {world, world, 1, 1, 1});
  if (!grid.ok()) {
    if (rank == 0) std::fprintf(stderr, "%s\n", grid.status().message().c_str());
    return 2;
  }
  const double tp_ms = time_steps(c, time_batch, time_seq, Recompute::kSelective,
                                  {&grid.value(), false}, warmup, steps);
  const double sp_ms = time_steps(c, time_batch, time_seq, Recompute::kSelective,
                                  {&grid.value(), true}, warmup, steps);
  if (rank == 0)
    print({{"name", "step_ms_tp_sp"},
           {"config", model_json(c, time_batch, time_seq, world)},
           {"recompute", "selective"},
           {"value", sp_ms},
           {"unit", "ms"},
           {"peer", "tp_only"},
           {"peer_value", tp_ms},
           {"ratio", sp_ms / tp_ms},
           {"note", "ranks share this machine's cores: compare the ratio only"}});
  return 0;
}
