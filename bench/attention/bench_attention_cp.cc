// Context-parallel attention: tree attention against the ring baseline, measured in the same run.
// Run under mpirun (cp = all ranks):
//   mpirun --allow-run-as-root --oversubscribe -np 4 bench_attention_cp
//          [--contexts 4096,16384,65536,262144] [--heads 8] [--kv-heads 4] [--head-dim 32]
//          [--decode-steps 5] [--train-seq 2048] [--train-heads 4] [--train-reps 3] [--latent]
// --latent: the cache holds MLA's latent rows (docs/model.md): one buffer per layer is both the
// keys and the values (ShardedKvCache's values_are_keys), e.g. --kv-heads 1 --head-dim
// r_kv + d_r with --heads the model's query heads.
// One JSON line per measurement (name, config, value, unit, peer, ratio = peer / this):
//   decode_latency      us per token of one layer's attention over the CP-sharded KV cache
//                       (slowest rank, median over steps), with the bytes each rank sends per
//                       token and the dependent communication rounds (parallel::CommStats)
//   decode_peak_memory  bytes per rank: KV cache shard + the attention's largest buffers
//   train_attention     ms for forward + backward of causal attention over the zigzag shards
//   train_peak_memory   bytes per rank of the attention's workspace (the largest buffers it holds)
// The tree lines carry peer = "ring" and ratio = ring / tree (> 1: tree is faster or smaller).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "core/rng.h"
#include "kernels/blas/blas_kernel.h"
#include "parallel/cp_attention.h"
#include "parallel/kv_cache.h"

using namespace grove;

namespace {

void fill(float* x, int64_t n, uint64_t seed) {
  Rng rng(seed);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(rng.uniform() * 2.0 - 1.0);
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds of fn() on the slowest rank.
template <typename Fn>
double timed(comm::Communicator& w, Fn&& fn) {
  w.barrier();
  const double t0 = now();
  fn();
  double t = now() - t0;
  w.all_reduce(&t, 1, DType::kF64, comm::ReduceOp::kMax);
  return t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void emit(int rank, const nlohmann::json& j) {
  if (rank == 0) std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

struct Measure {
  double value = 0;         // us / token or ms
  double min = 0, max = 0;  // decode: spread over the timed steps (us / token)
  double bytes = 0;         // per rank per call
  int64_t rounds = 0;
  int64_t memory = 0;  // bytes
};

}  // namespace

int main(int argc, char** argv) {
  grove::blas::SelectBlasKernel(argv);  // before MPI and any GEMM (may re-execute)
  CLI::App app{"Tree vs ring attention over the context-parallel group"};
  std::vector<int> contexts = {4096, 16384, 65536, 262144};
  int heads = 8, kv_heads = 4, head_dim = 32, decode_steps = 5;
  int train_seq = 2048, train_heads = 4, train_reps = 3;
  bool latent = false;
  app.add_option("--contexts", contexts, "decode context lengths (tokens)")->delimiter(',');
  app.add_option("--heads", heads, "decode query heads");
  app.add_option("--kv-heads", kv_heads, "decode key/value heads");
  app.add_option("--head-dim", head_dim, "head dimension");
  app.add_option("--decode-steps", decode_steps, "timed decode steps per context");
  app.add_option("--train-seq", train_seq, "training sequence length (0: skip training)");
  app.add_option("--train-heads", train_heads, "training heads");
  app.add_option("--train-reps", train_reps, "timed training repetitions");
  app.add_flag("--latent", latent, "MLA latent cache: one buffer is both keys and values");
  CLI11_PARSE(app, argc, argv);

  comm::MpiSession mpi(&argc, &argv);
  std::unique_ptr<comm::Communicator> world = mpi.world();
  comm::Communicator& w = *world;
  const int p = w.size(), r = w.rank();
  const CpAttention algos[2] = {CpAttention::kRing, CpAttention::kTree};

  // ---- Decoding: one layer's attention for one new token over a prefilled sharded cache ----
  for (int ctx : contexts) {
    parallel::ShardedKvCache cache(p, r, /*layers=*/1, /*B=*/1, kv_heads, head_dim, ctx, latent);
    const int64_t local = int64_t(cache.local_capacity()) * kv_heads * head_dim;
    fill(cache.k(0), local, 11 + r);
    if (!latent) fill(cache.v(0), local, 23 + r);
    cache.resize(ctx);
    std::vector<float> q(int64_t(heads) * head_dim), out(q.size());
    Measure m[2];
    for (int a = 0; a < 2; ++a) {
      parallel::DecodeAttention att(algos[a], &w, cache, heads);
      std::vector<double> t;
      for (int s = 0; s <= decode_steps; ++s) {  // step 0 warms up
        fill(q.data(), int64_t(q.size()), 100 + s);
        const double dt = timed(w, [&] { att.forward(out.data(), q.data(), cache, 0); });
        if (s > 0) t.push_back(dt);
        if (s == 0) att.reset_stats();
      }
      m[a].value = 1e6 * median(t);
      m[a].min = 1e6 * *std::min_element(t.begin(), t.end());
      m[a].max = 1e6 * *std::max_element(t.begin(), t.end());
      m[a].bytes = att.stats().bytes / decode_steps;
      m[a].rounds = att.stats().rounds / decode_steps;
      m[a].memory = cache.bytes() + att.workspace_bytes();
    }
    const nlohmann::json cfg = {{"cp", p},         {"context", ctx},       {"batch", 1},
                                {"heads", heads},  {"kv_heads", kv_heads}, {"head_dim", head_dim},
                                {"latent", latent}};
    for (int a = 0; a < 2; ++a) {
      nlohmann::json lat = {{"name", "decode_latency"},
                            {"algo", cp_attention_name(algos[a])},
                            {"config", cfg},
                            {"value", m[a].value},
                            {"min", m[a].min},
                            {"max", m[a].max},
                            {"unit", "us/token"},
                            {"bytes_per_rank", m[a].bytes},
                            {"rounds", m[a].rounds}};
      nlohmann::json mem = {{"name", "decode_peak_memory"},
                            {"algo", cp_attention_name(algos[a])},
                            {"config", cfg},
                            {"value", m[a].memory},
                            {"unit", "bytes/rank"},
                            {"kv_cache_bytes", cache.bytes()}};
      if (algos[a] == CpAttention::kTree) {
        lat["peer"] = mem["peer"] = "ring";
        lat["ratio"] = m[0].value / m[1].value;
        lat["bytes_ratio"] = m[1].bytes > 0 ? m[0].bytes / m[1].bytes : 0.0;
        mem["ratio"] = double(m[0].memory) / double(m[1].memory);
      }
      emit(r, lat);
      emit(r, mem);
    }
  }

  // ---- Training: causal attention forward + backward over zigzag shards ---------------------
  if (train_seq > 0) {
    const parallel::CpAttentionShape shape{train_seq,      /*B=*/1,  train_heads,
                                           train_heads,    head_dim,
                                           /*causal=*/true};
    const int64_t n = int64_t(train_seq / p) * train_heads * head_dim;
    std::vector<float> q(n), k(n), v(n), dout(n), out(n), lse(int64_t(train_heads) * train_seq / p);
    std::vector<float> dq(n), dk(n), dv(n);
    fill(q.data(), n, 1 + r);
    fill(k.data(), n, 2 + r);
    fill(v.data(), n, 3 + r);
    fill(dout.data(), n, 4 + r);
    Measure fwd[2], tot[2];
    for (int a = 0; a < 2; ++a) {
      parallel::ContextAttention att(algos[a], &w, shape);
      std::vector<double> tf, tt;
      for (int rep = 0; rep <= train_reps; ++rep) {
        std::fill(dq.begin(), dq.end(), 0.f);
        std::fill(dk.begin(), dk.end(), 0.f);
        std::fill(dv.begin(), dv.end(), 0.f);
        if (rep == 1) att.reset_stats();
        const double f =
            timed(w, [&] { att.forward(out.data(), lse.data(), q.data(), k.data(), v.data()); });
        const double b = timed(w, [&] {
          att.backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                       out.data(), lse.data());
        });
        if (rep > 0) {
          tf.push_back(f);
          tt.push_back(f + b);
        }
      }
      fwd[a].value = 1e3 * median(tf);
      tot[a].value = 1e3 * median(tt);
      tot[a].bytes = att.stats().bytes / train_reps;
      tot[a].rounds = att.stats().rounds / train_reps;
      tot[a].memory = att.workspace_bytes();
    }
    const nlohmann::json cfg = {{"cp", p},
                                {"seq", train_seq},
                                {"batch", 1},
                                {"heads", train_heads},
                                {"head_dim", head_dim},
                                {"causal", true}};
    for (int a = 0; a < 2; ++a) {
      nlohmann::json t = {{"name", "train_attention"},
                          {"algo", cp_attention_name(algos[a])},
                          {"config", cfg},
                          {"value", tot[a].value},
                          {"unit", "ms fwd+bwd"},
                          {"forward_ms", fwd[a].value},
                          {"bytes_per_rank", tot[a].bytes},
                          {"rounds", tot[a].rounds}};
      nlohmann::json mem = {{"name", "train_peak_memory"},
                            {"algo", cp_attention_name(algos[a])},
                            {"config", cfg},
                            {"value", tot[a].memory},
                            {"unit", "bytes/rank (workspace)"}};
      if (algos[a] == CpAttention::kTree) {
        t["peer"] = mem["peer"] = "ring";
        t["ratio"] = tot[0].value / tot[1].value;
        mem["ratio"] = double(tot[0].memory) / double(tot[1].memory);
      }
      emit(r, t);
      emit(r, mem);
    }
  }
  return 0;
}
