// LSH-compressed expert all-to-all vs the plain one (docs/lsh.md; docs/testing.md#benchmarks),
// layer level, ep = world.
// The same MoE layer (same weights, same tokens per rank) runs with the AllToAllDispatcher and
// with the LshDispatcher, steps interleaved so both see the same machine load; for each token
// distribution and each num_hashes:
//   bytes per step (all ranks, fwd + bwd), all-to-all ms and layer step ms (slowest rank, mean
//   over the timed steps), compression ratio (token rows / centroid rows, all ranks), relative
//   residual Σ‖x − c‖ / Σ‖x‖, and the output error of the compressed layer against the plain
//   layer's output: max-norm relative (§11), ‖Δ‖₂ / ‖out‖₂ and ‖Δ‖₂ / ‖x‖₂, over every rank's
//   tokens. The residual compensation adds x − c to the expert's result, so against a small
//   expert output (fresh init) the relative error is large; ‖Δ‖ / ‖x‖ is the scale it has in
//   the residual stream of a pre-norm block.
// Token distributions: "clustered" (K centres shared by all ranks, each token a centre plus
// Gaussian noise; hidden states of a trained model are strongly clustered) and "random" (i.i.d.
// N(0, 1): the worst case for LSH, nearly every token alone in its bucket at large L).
// Run: mpirun -np 4 bench_lsh [--hashes 1,2,3,4 --rotation-dim 8 --min-tokens 8 ...]
// JSON lines: name, config, value, unit, peer (the plain dispatcher, same run), peer_value,
// ratio = value / peer_value. Ranks share this machine's cores when oversubscribed: compare
// ratios, not ms.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "core/rng.h"
#include "kernels/blas/blas_kernel.h"
#include "parallel/grid.h"
#include "parallel/lsh_dispatcher.h"
#include "parallel/moe_layer.h"

namespace {

using grove::LshOptions;
using grove::MoeOptions;
using grove::parallel::LshDispatcher;
using grove::parallel::LshMetrics;
using grove::parallel::MoeLayer;
using grove::parallel::MoeMetrics;
using json = nlohmann::json;
namespace comm = grove::comm;

struct Sums {
  double a2a_ms = 0, step_ms = 0, bytes = 0;
  double assignments = 0, centroids = 0, residual = 0, token_norm = 0;
};

void print(const json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

// Tokens of this rank: clustered (K centres shared by every rank) or i.i.d. normal.
std::vector<float> make_tokens(const std::string& data, int T, int h, int K, float noise,
                               int rank) {
  std::vector<float> x(size_t(T) * h);
  grove::Rng rng(grove::derive_seed(7, uint64_t(rank)));
  if (data == "random") {
    for (float& v : x) v = float(rng.normal());
    return x;
  }
  grove::Rng crng(12345);
  std::vector<float> centres(size_t(K) * h);
  for (float& v : centres) v = float(crng.normal());
  for (int t = 0; t < T; ++t) {
    const size_t c = size_t(rng.next_u64() % uint64_t(K));
    for (int j = 0; j < h; ++j)
      x[size_t(t) * h + j] = centres[c * h + j] + noise * float(rng.normal());
  }
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  grove::blas::SelectBlasKernel(argv);  // before MPI and any GEMM (may re-execute)
  CLI::App app{"LSH-compressed vs plain expert all-to-all, layer level"};
  int T = 1024, h = 256, f = 512, E = 8, k = 2, steps = 5, warmup = 1;
  int rotation_dim = 8, min_tokens = 8, clusters = 32;
  float noise = 0.3f;
  bool center = LshOptions{}.center, compensate = LshOptions{}.compensate;
  double target = LshOptions{}.target_compression;
  std::vector<int> hashes = {1, 2, 3, 4};
  std::vector<std::string> datas = {"clustered", "random"};
  app.add_option("--tokens", T, "tokens per rank");
  app.add_option("--hidden", h);
  app.add_option("--ffn", f, "expert hidden size");
  app.add_option("--experts", E);
  app.add_option("--top-k", k);
  app.add_option("--hashes", hashes, "num_hashes values to sweep")->delimiter(',');
  app.add_option("--rotation-dim", rotation_dim);
  app.add_option("--min-tokens", min_tokens);
  app.add_option("--center", center, "hash x - group mean (moe.lsh.center)");
  app.add_option("--target-compression", target, "moe.lsh.target_compression (0: all codes)");
  app.add_option("--compensate", compensate, "add x - c (moe.lsh.compensate)");
  app.add_option("--data", datas, "clustered and/or random")->delimiter(',');
  app.add_option("--clusters", clusters, "centres of the clustered tokens");
  app.add_option("--noise", noise, "std of the clustered tokens around their centre");
  app.add_option("--steps", steps);
  app.add_option("--warmup", warmup);
  CLI11_PARSE(app, argc, argv);

  comm::MpiSession mpi(&argc, &argv);
  const int world = mpi.world_size(), rank = mpi.world_rank();
  MoeOptions cfg;
  cfg.num_experts = E;
  cfg.top_k = k;
  if (grove::Status st = cfg.Validate(world); !st.ok()) {
    if (rank == 0) std::fprintf(stderr, "%s\n", st.message().c_str());
    return 2;
  }
  auto grid = grove::parallel::ParallelGrid::create(
      std::shared_ptr<comm::Communicator>(mpi.world()), {world, 1, 1, world, world});
  if (!grid.ok()) {
    if (rank == 0) std::fprintf(stderr, "%s\n", grid.status().message().c_str());
    return 2;
  }
  grove::parallel::ParallelGrid& g = grid.value();
  comm::Communicator& w = g.world();

  for (const std::string& data : datas) {
    const std::vector<float> x = make_tokens(data, T, h, clusters, noise, rank);
    std::vector<float> dout(x.size());
    grove::Rng drng(grove::derive_seed(99, uint64_t(rank)));
    for (float& v : dout) v = float(drng.normal()) * 1e-3f;
    for (int L : hashes) {
      LshOptions lcfg;
      lcfg.enabled = true;
      lcfg.num_hashes = L;
      lcfg.rotation_dim = rotation_dim;
      lcfg.min_tokens = min_tokens;
      lcfg.center = center;
      lcfg.target_compression = target;
      lcfg.compensate = compensate;
      lcfg.warmup_steps = 0;  // a layer benchmark: compress from the first step
      if (grove::Status st = lcfg.Validate(h); !st.ok()) {
        if (rank == 0) std::fprintf(stderr, "%s\n", st.message().c_str());
        return 2;
      }
      MoeLayer plain(cfg, h, f, T, &g.ep(), &g.dp()), lsh(cfg, h, f, T, &g.ep(), &g.dp());
      plain.init(1234, 0.02, 0.01);
      lsh.init(1234, 0.02, 0.01);
      lsh.set_dispatcher(std::make_unique<LshDispatcher>(E, h, &g.ep(), lcfg));
      const auto& ld = static_cast<const LshDispatcher&>(lsh.dispatcher());
      std::vector<float> out_p(x.size()), out_l(x.size()), din(x.size());
      Sums sp, sl;
      for (int s = 0; s < warmup + steps; ++s) {
        for (int which = 0; which < 2; ++which) {
          MoeLayer& layer = which == 0 ? plain : lsh;
          w.barrier();
          layer.zero_grads();
          layer.forward(which == 0 ? out_p.data() : out_l.data(), x.data(), T);
          std::fill(din.begin(), din.end(), 0.0f);
          layer.backward(din.data(), dout.data(), 1.0f);
          if (s < warmup) continue;
          const MoeMetrics m = layer.metrics();
          double mx[2] = {m.a2a_ms(), m.total_ms()};
          w.all_reduce(mx, 2, grove::DType::kF64, comm::ReduceOp::kMax);
          double sum[5] = {double(m.a2a_bytes_sent), 0, 0, 0, 0};
          if (which == 1) {
            const LshMetrics& lm = ld.metrics();
            sum[1] = double(lm.assignments);
            sum[2] = double(lm.centroids);
            sum[3] = lm.residual_norm_sum;
            sum[4] = lm.token_norm_sum;
          }
          w.all_reduce(sum, 5, grove::DType::kF64, comm::ReduceOp::kSum);
          Sums& acc = which == 0 ? sp : sl;
          acc.a2a_ms += mx[0] / steps;
          acc.step_ms += mx[1] / steps;
          acc.bytes += sum[0] / steps;
          acc.assignments += sum[1] / steps;
          acc.centroids += sum[2] / steps;
          acc.residual += sum[3] / steps;
          acc.token_norm += sum[4] / steps;
        }
      }
      // Output error of the last step, over every rank's tokens.
      double err[5] = {0, 0, 0, 0, 0};  // max|Δ|, max|out|, Σ Δ², Σ out², Σ x²
      for (size_t i = 0; i < x.size(); ++i) {
        const double d = double(out_l[i]) - out_p[i];
        err[0] = std::max(err[0], std::fabs(d));
        err[1] = std::max(err[1], std::fabs(double(out_p[i])));
        err[2] += d * d;
        err[3] += double(out_p[i]) * out_p[i];
        err[4] += double(x[i]) * x[i];
      }
      w.all_reduce(err, 2, grove::DType::kF64, comm::ReduceOp::kMax);
      w.all_reduce(err + 2, 3, grove::DType::kF64, comm::ReduceOp::kSum);
      if (rank != 0) continue;
      const json config = {{"data", data},
                           {"num_hashes", L},
                           {"rotation_dim", rotation_dim},
                           {"min_tokens", min_tokens},
                           {"clusters", data == "clustered" ? clusters : 0},
                           {"noise", data == "clustered" ? noise : 0.0f},
                           {"tokens_per_rank", T},
                           {"hidden", h},
                           {"expert_ffn", f},
                           {"experts", E},
                           {"top_k", k},
                           {"ep", world},
                           {"steps", steps},
                           {"threads", omp_get_max_threads()}};
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
      line("lsh_a2a_bytes_per_step", sl.bytes, "bytes", "plain_a2a_bytes_per_step", sp.bytes);
      line("lsh_a2a_ms", sl.a2a_ms, "ms", "plain_a2a_ms", sp.a2a_ms);
      line("lsh_layer_step_ms", sl.step_ms, "ms", "plain_layer_step_ms", sp.step_ms);
      line("lsh_compression_ratio", sl.centroids > 0 ? sl.assignments / sl.centroids : 1.0,
           "token_rows_per_centroid", "plain", 1.0);
      line("lsh_relative_residual", sl.token_norm > 0 ? sl.residual / sl.token_norm : 0.0,
           "fraction", "plain", 0.0);
      line("lsh_output_max_rel_error", err[0] / std::max(err[1], 1e-30), "fraction", "plain", 0.0);
      line("lsh_output_l2_rel_error", std::sqrt(err[2] / std::max(err[3], 1e-300)), "fraction",
           "plain", 0.0);
      // The same error against the layer's input: in a pre-norm block the output is added to
      // the residual stream, whose scale is the input's, not the (small at init) expert output's.
      line("lsh_output_error_vs_input", std::sqrt(err[2] / std::max(err[4], 1e-300)), "fraction",
           "plain", 0.0);
    }
  }
  return 0;
}
