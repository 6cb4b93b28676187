// MoE layer step-time breakdown under expert parallelism (docs/moe.md), one config:
//   router, dispatch all-to-all, experts, combine all-to-all, backward (and its all-to-all),
//   and the all-to-all share of the layer's forward + backward time, for ep = world.
// Peer, measured in the same run: the same layer with ep = 1 (every rank holds all experts and
// routes its own tokens locally, no all-to-all) on the same tokens per rank.
// Run: mpirun -np {1,2,4} bench_moe [--tokens T --hidden h --ffn f --experts E --top-k k]
// Each field is the mean over the timed steps of the slowest rank's value (MAX over ranks).
// Ranks share this machine's cores when oversubscribed: compare ratios and shares, not ms.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "comm/mpi_communicator.h"
#include "core/rng.h"
#include "kernels/blas/blas_kernel.h"
#include "parallel/grid.h"
#include "parallel/moe_layer.h"

namespace {

using grove::MoeOptions;
using grove::parallel::MoeLayer;
using grove::parallel::MoeMetrics;
using json = nlohmann::json;

struct Breakdown {
  double router = 0, dispatch_a2a = 0, experts = 0, combine_a2a = 0, forward = 0;
  double backward_a2a = 0, backward = 0, bytes = 0;
  double a2a() const { return dispatch_a2a + combine_a2a + backward_a2a; }
  double total() const { return forward + backward; }
};

Breakdown time_layer(const MoeOptions& cfg, int h, int f, int T, grove::comm::Communicator* ep,
                     grove::comm::Communicator* stats, grove::comm::Communicator& world, int warmup,
                     int steps) {
  MoeLayer layer(cfg, h, f, T, ep, stats);
  layer.init(1234, 0.02, 0.01);
  std::vector<float> x(size_t(T) * h), dout(x.size()), out(x.size()), din(x.size());
  grove::Rng rng(99 + world.rank());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = float(rng.normal());
    dout[i] = float(rng.normal()) * 1e-3f;
  }
  Breakdown b;
  for (int s = 0; s < warmup + steps; ++s) {
    world.barrier();
    layer.zero_grads();
    layer.forward(out.data(), x.data(), T);
    std::fill(din.begin(), din.end(), 0.0f);
    layer.backward(din.data(), dout.data(), 1.0f);
    if (s < warmup) continue;
    const MoeMetrics m = layer.metrics();
    double v[8] = {m.router_ms,  m.dispatch_a2a_ms, m.experts_ms,  m.combine_a2a_ms,
                   m.forward_ms, m.backward_a2a_ms, m.backward_ms, double(m.a2a_bytes_sent)};
    world.all_reduce(v, 8, grove::DType::kF64, grove::comm::ReduceOp::kMax);
    b.router += v[0] / steps;
    b.dispatch_a2a += v[1] / steps;
    b.experts += v[2] / steps;
    b.combine_a2a += v[3] / steps;
    b.forward += v[4] / steps;
    b.backward_a2a += v[5] / steps;
    b.backward += v[6] / steps;
    b.bytes += v[7] / steps;
  }
  return b;
}

void print(const json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  grove::blas::SelectBlasKernel(argv);  // before MPI and any GEMM (may re-execute)
  CLI::App app{"MoE layer step-time breakdown under expert parallelism"};
  int T = 1024, h = 256, f = 512, E = 8, k = 2, steps = 5, warmup = 2;
  float cf = 0.0f;
  app.add_option("--tokens", T, "tokens per rank");
  app.add_option("--hidden", h);
  app.add_option("--ffn", f, "expert hidden size");
  app.add_option("--experts", E);
  app.add_option("--top-k", k);
  app.add_option("--capacity-factor", cf, "0 = dropless");
  app.add_option("--steps", steps);
  app.add_option("--warmup", warmup);
  CLI11_PARSE(app, argc, argv);

  grove::comm::MpiSession mpi(&argc, &argv);
  const int world = mpi.world_size(), rank = mpi.world_rank();
  MoeOptions cfg;
  cfg.num_experts = E;
  cfg.top_k = k;
  cfg.capacity_factor = cf;
  if (grove::Status st = cfg.Validate(world); !st.ok()) {
    if (rank == 0) std::fprintf(stderr, "%s\n", st.message().c_str());
    return 2;
  }
  auto grid = grove::parallel::ParallelGrid::create(
      std::shared_ptr<grove::comm::Communicator>(mpi.world()), {world, 1, 1, world, world});
  if (!grid.ok()) {
    if (rank == 0) std::fprintf(stderr, "%s\n", grid.status().message().c_str());
    return 2;
  }
  grove::parallel::ParallelGrid& g = grid.value();
  const Breakdown base = time_layer(cfg, h, f, T, nullptr, &g.dp(), g.world(), warmup, steps);
  const Breakdown ep = time_layer(cfg, h, f, T, &g.ep(), &g.dp(), g.world(), warmup, steps);
  if (rank != 0) return 0;

  const json config = {{"tokens_per_rank", T}, {"hidden", h},
                       {"expert_ffn", f},      {"experts", E},
                       {"top_k", k},           {"capacity_factor", cf},
                       {"ep", world},          {"world", world},
                       {"steps", steps},       {"threads", omp_get_max_threads()}};
  auto line = [&](const char* name, double value, const char* unit, const char* peer,
                  double peer_value) {
    print({{"name", name},
           {"config", config},
           {"value", value},
           {"unit", unit},
           {"peer", peer},
           {"peer_value", peer_value},
           {"ratio", peer_value != 0 ? value / peer_value : 0.0}});
  };
  const double total = ep.total();
  line("moe_router_ms", ep.router, "ms", "moe_layer_step_ms", total);
  line("moe_dispatch_a2a_ms", ep.dispatch_a2a, "ms", "moe_layer_step_ms", total);
  line("moe_experts_ms", ep.experts, "ms", "moe_layer_step_ms", total);
  line("moe_combine_a2a_ms", ep.combine_a2a, "ms", "moe_layer_step_ms", total);
  line("moe_forward_ms", ep.forward, "ms", "moe_layer_step_ms", total);
  line("moe_backward_ms", ep.backward, "ms", "moe_layer_step_ms", total);
  line("moe_backward_a2a_ms", ep.backward_a2a, "ms", "moe_layer_step_ms", total);
  line("moe_a2a_share", ep.a2a() / total, "fraction", "lsh_moe_paper_gpu_share", 0.45);
  // Peer: the bytes if every (token, slot) row left the rank in all four row exchanges; the
  // ratio is the fraction that did (about (ep - 1) / ep for balanced routing).
  line("moe_a2a_bytes_per_step", ep.bytes, "bytes", "all_rows_bytes_per_step",
       4.0 * T * k * h * sizeof(float));
  line("moe_layer_step_ms", total, "ms", "ep1_local_experts_step_ms", base.total());
  return 0;
}
