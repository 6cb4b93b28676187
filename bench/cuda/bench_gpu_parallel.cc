// bench_gpu_parallel: the parallel engine of the GPU model on ONE device, the ranks being threads
// of one process (the test-only thread transport, comm/thread_communicator.h: collectives are
// device-to-device copies between the ranks' buffers, every rank's kernels share the device).
// Each JSON line carries its peer measured in the same run, the repetitions' median, min, max and
// every sample, the device and the config (docs/gpu.md#what-the-gpu-check-prints):
//
//   train_attention   ms of causal attention forward + backward over the zigzag shards of a
//                     context-parallel group (parallel::ContextAttentionT on the CUDA backend, the
//                     bench/attention/bench_attention_cp.cc measurement on the device): tree, with
//                     ring as its peer (ratio = ring / tree; > 1: tree is faster), and the bytes
//                     each rank sends per call (parallel::CommStats).
//   moe_step_lsh      ms of a forward + backward step of an MoE model at ep (dp = ep), with the
//                     LSH-compressed all-to-all, peer the plain all-to-all on the same tokens and
//                     weights; bytes each rank sends to the others per step (MoeMetrics), their
//                     ratio, and the rows the experts ran.
//   layout_step       ms of a forward + backward step at tp (dense model, sequence parallel) and at
//                     ep (the MoE model, dp = ep), on the same global batch as one rank, peer the
//                     one-rank step (ratio = this / one rank; on one device every rank's work
//                     shares it, so 1.0 means the layout costs nothing beyond its share; this is
//                     not a scaling measurement).
//   decode_attention  ms per generated token of one layer's decode attention over a KV cache of
//                     --decode-context tokens sharded round-robin over cp ranks
//                     (parallel::DecodeAttentionT on the CUDA backend, fp32 whatever --precision
//                     says): tree (broadcast q, local partial, MAX + SUM all-reduce), with ring
//                     (the K/V shards travel the ring) as its peer (ratio = ring / tree; > 1: tree
//                     is faster), the bytes each rank sends per token, and the largest difference
//                     between the two outputs relative to their size.
// The timed region of every rank starts at a barrier and ends at cudaDeviceSynchronize + barrier,
// so it is the slowest rank's time.
// Links only the CUDA libraries (no MPI, no OpenBLAS): runs on a one-GPU machine.
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/thread_communicator.h"
#include "core/rng.h"
#include "kernels/cuda/check.h"
#include "model/cuda/cuda_generate.h"
#include "model/cuda/cuda_transformer.h"
#include "parallel/grid.h"

namespace grove {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

struct Options {
  std::string precision = "bf16";
  std::string parts = "attention,lsh,layouts,decode";
  int warmup = 1, reps = 5;
  // Context-parallel attention.
  int cp = 4, attn_seq = 8192, attn_heads = 16, attn_kv_heads = 16, attn_head_dim = 128;
  // The models of the step measurements.
  int vocab = 32000, d_model = 1024, layers = 4, heads = 16, seq = 1024, batch = 8;
  int experts = 8, top_k = 2, expert_ffn = 0;
  int tp = 2, ep = 2;
  // Decoding: one layer's attention for one new token over the sharded KV cache.
  int decode_context = 65536, decode_heads = 32, decode_kv_heads = 8, decode_head_dim = 128;
  int decode_tokens = 16;  // forward calls per timed repetition
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds of fn() on the slowest rank: every rank starts together and the clock stops once the
// device is idle and every rank got there.
template <typename Fn>
double timed(comm::Communicator& w, Fn&& fn) {
  GROVE_CUDA_CHECK(cudaDeviceSynchronize());
  w.barrier();
  const double t0 = now();
  fn();
  GROVE_CUDA_CHECK(cudaDeviceSynchronize());
  w.barrier();
  return now() - t0;
}

json summary_ms(std::vector<double> seconds) {
  std::vector<double> ms;
  for (double s : seconds) ms.push_back(1e3 * s);
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  return {{"median", sorted[sorted.size() / 2]},
          {"min", sorted.front()},
          {"max", sorted.back()},
          {"samples", ms}};
}

void emit(json j, const std::string& device, const Options& o) {
  j["device"] = device;
  j["transport"] = "thread (ranks as threads on one device)";
  if (!j.contains("precision")) j["precision"] = o.precision;
  j["warmup"] = o.warmup;
  j["reps"] = o.reps;
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

// Runs fn on n thread ranks of one device.
void on_ranks(int n, const std::function<void(comm::Communicator&)>& fn) {
  comm::ThreadTransportOptions options;
  options.comm.timeout = 300s;
  comm::run_thread_ranks(n, fn, options);
}

// A device buffer of n values of T, uniform in [-1, 1).
template <typename T>
Tensor random_device(int64_t n, uint64_t seed) {
  using B = CudaBackend<T>;
  std::vector<float> h(static_cast<size_t>(n));
  Rng rng(seed);
  for (float& x : h) x = static_cast<float>(rng.uniform() * 2.0 - 1.0);
  Tensor f = Tensor::empty({n}, DType::kF32, Device::kCUDA);
  B::upload(f.raw(), h.data(), sizeof(float) * h.size());
  if constexpr (std::is_same_v<T, float>) return f;
  Tensor t = Tensor::empty({n}, B::kDType, Device::kCUDA);
  B::convert(t.data<T>(), f.data<float>(), n);
  return t;
}

// ---- Context-parallel attention: tree vs ring, forward + backward ------------------------------
template <typename T>
void bench_attention(const Options& o, const std::string& device) {
  using B = CudaBackend<T>;
  const CpAttention algos[2] = {CpAttention::kRing, CpAttention::kTree};
  const parallel::CpAttentionShape shape{o.attn_seq,      /*B=*/1,         o.attn_heads,
                                         o.attn_kv_heads, o.attn_head_dim, /*causal=*/true};
  std::vector<double> total[2], fwd[2];
  double bytes[2] = {0, 0};
  on_ranks(o.cp, [&](comm::Communicator& w) {
    const int r = w.rank();
    const int64_t rows = o.attn_seq / o.cp;
    const int64_t nq = rows * o.attn_heads * o.attn_head_dim;
    const int64_t nk = rows * o.attn_kv_heads * o.attn_head_dim;
    Tensor q = random_device<T>(nq, 1 + r), k = random_device<T>(nk, 2 + r),
           v = random_device<T>(nk, 3 + r), dout = random_device<T>(nq, 4 + r);
    Tensor out = Tensor::empty({nq}, B::kDType, Device::kCUDA);
    Tensor dq = Tensor::empty({nq}, B::kDType, Device::kCUDA);
    Tensor dk = Tensor::empty({nk}, B::kDType, Device::kCUDA);
    Tensor dv = Tensor::empty({nk}, B::kDType, Device::kCUDA);
    Tensor lse = Tensor::empty({int64_t(o.attn_heads) * rows}, DType::kF32, Device::kCUDA);
    for (int a = 0; a < 2; ++a) {
      parallel::ContextAttentionT<B> att(algos[a], &w, shape);
      for (int rep = 0; rep < o.warmup + o.reps; ++rep) {
        if (rep == o.warmup) att.reset_stats();
        B::zero(dq.raw(), dq.bytes());
        B::zero(dk.raw(), dk.bytes());
        B::zero(dv.raw(), dv.bytes());
        const double f = timed(w, [&] {
          att.forward(out.data<T>(), lse.data<float>(), q.data<T>(), k.data<T>(), v.data<T>());
        });
        const double b = timed(w, [&] {
          att.backward(dq.data<T>(), dk.data<T>(), dv.data<T>(), dout.data<T>(), q.data<T>(),
                       k.data<T>(), v.data<T>(), out.data<T>(), lse.data<float>());
        });
        if (r == 0 && rep >= o.warmup) {
          fwd[a].push_back(f);
          total[a].push_back(f + b);
        }
      }
      if (r == 0) bytes[a] = att.stats().bytes / o.reps;
    }
  });
  const json cfg = {{"cp", o.cp},
                    {"seq", o.attn_seq},
                    {"batch", 1},
                    {"heads", o.attn_heads},
                    {"kv_heads", o.attn_kv_heads},
                    {"head_dim", o.attn_head_dim},
                    {"causal", true},
                    {"layout", "zigzag"}};
  const json tree = summary_ms(total[1]), ring = summary_ms(total[0]);
  emit({{"name", "train_attention"},
        {"algo", "tree"},
        {"config", cfg},
        {"value", tree["median"]},
        {"unit", "ms fwd+bwd"},
        {"stats", tree},
        {"forward_ms", summary_ms(fwd[1])["median"]},
        {"bytes_per_rank", bytes[1]},
        {"peer", "ring"},
        {"peer_value", ring["median"]},
        {"peer_stats", ring},
        {"peer_forward_ms", summary_ms(fwd[0])["median"]},
        {"peer_bytes_per_rank", bytes[0]},
        {"ratio", ring["median"].get<double>() / tree["median"].get<double>()}},
       device, o);
}

// ---- Decoding: tree vs ring attention of one new token over the CP-sharded KV cache ------------
void bench_decode(const Options& o, const std::string& device) {
  using B = CudaBackend<float>;
  const CpAttention algos[2] = {CpAttention::kRing, CpAttention::kTree};
  const int L = o.decode_context, NH = o.decode_heads, NKV = o.decode_kv_heads;
  const int HD = o.decode_head_dim;
  std::vector<double> per_token[2];
  double bytes[2] = {0, 0}, diff = 0;
  on_ranks(o.cp, [&](comm::Communicator& w) {
    const int r = w.rank();
    parallel::CudaShardedKvCache cache(o.cp, r, /*layers=*/1, /*B=*/1, NKV, HD, L);
    cache.resize(L);  // every position cached: rank r holds positions r, r + cp, ...
    const int64_t nk = int64_t(cache.local_length()) * NKV * HD, nq = int64_t(NH) * HD;
    Tensor k = random_device<float>(std::max<int64_t>(nk, 1), 11 + r);
    B::copy(cache.k(0), k.raw(), sizeof(float) * nk);
    Tensor v = random_device<float>(std::max<int64_t>(nk, 1), 21 + r);
    B::copy(cache.v(0), v.raw(), sizeof(float) * nk);
    k = Tensor();
    v = Tensor();
    Tensor q = random_device<float>(nq, 31);
    Tensor out[2] = {Tensor::empty({nq}, DType::kF32, Device::kCUDA),
                     Tensor::empty({nq}, DType::kF32, Device::kCUDA)};
    for (int a = 0; a < 2; ++a) {
      parallel::CudaDecodeAttention att(algos[a], &w, cache, NH);
      for (int rep = 0; rep < o.warmup + o.reps; ++rep) {
        if (rep == o.warmup) att.reset_stats();
        const double t = timed(w, [&] {
          for (int i = 0; i < o.decode_tokens; ++i)
            att.forward(out[a].data<float>(), q.data<float>(), cache, 0);
        });
        if (r == 0 && rep >= o.warmup) per_token[a].push_back(t / o.decode_tokens);
      }
      if (r == 0) bytes[a] = att.stats().bytes / (double(o.reps) * o.decode_tokens);
    }
    if (r == 0) {  // the two algorithms compute the same attention
      std::vector<float> h[2] = {std::vector<float>(nq), std::vector<float>(nq)};
      double mx = 0, ref = 0;
      for (int a = 0; a < 2; ++a) B::download(h[a].data(), out[a].raw(), sizeof(float) * nq);
      for (int64_t i = 0; i < nq; ++i) {
        mx = std::max(mx, double(std::fabs(h[0][i] - h[1][i])));
        ref = std::max(ref, double(std::fabs(h[1][i])));
      }
      diff = mx / std::max(ref, 1e-30);
    }
  });
  const json cfg = {{"cp", o.cp},
                    {"context", L},
                    {"batch", 1},
                    {"heads", NH},
                    {"kv_heads", NKV},
                    {"head_dim", HD},
                    {"layers", 1},
                    {"tokens_per_rep", o.decode_tokens},
                    {"cache", "round-robin (token t on rank t % cp)"},
                    {"dtype", "fp32"}};
  const json tree = summary_ms(per_token[1]), ring = summary_ms(per_token[0]);
  emit({{"name", "decode_attention"},
        {"algo", "tree"},
        {"config", cfg},
        {"value", tree["median"]},
        {"unit", "ms per token (one layer)"},
        {"stats", tree},
        {"bytes_per_rank", bytes[1]},
        {"peer", "ring"},
        {"peer_value", ring["median"]},
        {"peer_stats", ring},
        {"peer_bytes_per_rank", bytes[0]},
        {"ratio", ring["median"].get<double>() / tree["median"].get<double>()},
        {"tree_vs_ring_max_rel_diff", diff},
        {"precision", "fp32"}},
       device, o);
}

// ---- Whole-model steps over a grid of thread ranks ---------------------------------------------
ModelConfig model_config(const Options& o, bool moe, bool lsh) {
  ModelConfig c;
  c.vocab_size = o.vocab;
  c.d_model = o.d_model;
  c.n_layers = o.layers;
  c.n_heads = o.heads;
  c.max_seq_len = o.seq;
  if (moe) {
    c.moe.num_experts = o.experts;
    c.moe.top_k = o.top_k;
    c.moe.every = 1;
    c.moe.expert_ffn = o.expert_ffn;
    c.moe.lsh.enabled = lsh;
    c.moe.lsh.warmup_steps = 0;  // compress from the first step
  }
  return c;
}

struct StepResult {
  std::vector<double> seconds;  // rank 0's view of the slowest rank
  double a2a_bytes = 0;         // per rank per step, mean over ranks
  int64_t experts_rows = 0;     // summed over MoE layers and ranks, last step
  int64_t assignments = 0;      // tokens · top_k, summed over ranks
};

// Forward + backward steps of `c` at the grid {world, tp, 1, ep, dp}; every rank its b = batch/dp
// columns of the same global batch.
template <typename T>
StepResult bench_step(const Options& o, const ModelConfig& c, int world, int tp, int ep, int dp) {
  using Model = TransformerT<CudaBackend<T>>;
  StepResult res;
  const int b = o.batch / dp;
  on_ranks(world, [&](comm::Communicator& w) {
    std::shared_ptr<comm::Communicator> wp(&w, [](comm::Communicator*) {});
    auto grid = parallel::ParallelGrid::create(wp, parallel::GridShape{world, tp, 1, ep, dp});
    if (!grid.ok()) throw Error(grid.status().message());
    const ModelParallel par{&grid.value(), /*sequence_parallel=*/tp > 1};
    if (Status st = Model::Supports(c, b, o.seq, par); !st.ok()) throw Error(st.message());
    Model model(c, b, o.seq, Recompute::kSelective, par);
    std::vector<int32_t> tokens(size_t(o.seq) * b), targets(tokens.size());
    Rng rng(7 + grid.value().coord().dp);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng.next_u64() % uint64_t(c.vocab_size));
    for (int32_t& t : targets) t = static_cast<int32_t>(rng.next_u64() % uint64_t(c.vocab_size));
    double bytes = 0, rows = 0;
    for (int rep = 0; rep < o.warmup + o.reps; ++rep) {
      const double s = timed(w, [&] {
        model.zero_grads();
        model.forward(tokens.data(), targets.data());
        model.backward();
      });
      if (rep < o.warmup) continue;
      if (w.rank() == 0) res.seconds.push_back(s);
      for (const parallel::MoeMetrics& m : model.moe_metrics()) bytes += double(m.a2a_bytes_sent);
    }
    for (int l = 0; l < c.n_layers; ++l)
      if (c.is_moe_layer(l)) rows += double(model.moe_layer(l)->experts_rows());
    double sums[2] = {bytes / o.reps, rows};
    comm::all_reduce_host_f64(&w, sums, 2);
    if (w.rank() == 0) {
      res.a2a_bytes = sums[0] / world;
      res.experts_rows = static_cast<int64_t>(sums[1]);
    }
  });
  res.assignments = c.moe.num_experts > 0 ? int64_t(o.batch) * o.seq * c.moe.top_k : 0;
  return res;
}

json step_config(const Options& o, const ModelConfig& c) {
  return {{"params", c.num_parameters()},
          {"d_model", c.d_model},
          {"layers", c.n_layers},
          {"heads", c.n_heads},
          {"vocab", c.vocab_size},
          {"experts", c.moe.num_experts},
          {"top_k", c.moe.num_experts > 0 ? c.moe.top_k : 0},
          {"seq", o.seq},
          {"global_batch", o.batch},
          {"recompute", "selective"}};
}

template <typename T>
void bench_lsh(const Options& o, const std::string& device) {
  const ModelConfig plain = model_config(o, true, false), lsh = model_config(o, true, true);
  const StepResult p = bench_step<T>(o, plain, o.ep, 1, o.ep, o.ep);
  const StepResult l = bench_step<T>(o, lsh, o.ep, 1, o.ep, o.ep);
  json cfg = step_config(o, lsh);
  cfg["ep"] = o.ep;
  cfg["dp"] = o.ep;
  cfg["lsh"] = {{"num_hashes", lsh.moe.lsh.num_hashes},
                {"rotation_dim", lsh.moe.lsh.rotation_dim},
                {"target_compression", lsh.moe.lsh.target_compression}};
  const json ls = summary_ms(l.seconds), ps = summary_ms(p.seconds);
  emit({{"name", "moe_step_lsh"},
        {"config", cfg},
        {"value", ls["median"]},
        {"unit", "ms fwd+bwd"},
        {"stats", ls},
        {"a2a_bytes_per_rank", l.a2a_bytes},
        {"experts_rows", l.experts_rows},
        {"peer", "plain all-to-all"},
        {"peer_value", ps["median"]},
        {"peer_stats", ps},
        {"peer_a2a_bytes_per_rank", p.a2a_bytes},
        {"peer_experts_rows", p.experts_rows},
        {"assignments", l.assignments},
        {"ratio", ps["median"].get<double>() / ls["median"].get<double>()},
        {"bytes_ratio", l.a2a_bytes > 0 ? p.a2a_bytes / l.a2a_bytes : 0.0}},
       device, o);
}

template <typename T>
void bench_layouts(const Options& o, const std::string& device) {
  const ModelConfig dense = model_config(o, false, false), moe = model_config(o, true, false);
  const StepResult d1 = bench_step<T>(o, dense, 1, 1, 1, 1);
  const StepResult dt = bench_step<T>(o, dense, o.tp, o.tp, 1, 1);
  const StepResult m1 = bench_step<T>(o, moe, 1, 1, 1, 1);
  const StepResult me = bench_step<T>(o, moe, o.ep, 1, o.ep, o.ep);
  auto line = [&](const char* layout, const ModelConfig& c, const StepResult& x,
                  const StepResult& one, json extra) {
    json cfg = step_config(o, c);
    cfg.update(extra);
    const json xs = summary_ms(x.seconds), os = summary_ms(one.seconds);
    emit({{"name", "layout_step"},
          {"layout", layout},
          {"config", cfg},
          {"value", xs["median"]},
          {"unit", "ms fwd+bwd"},
          {"stats", xs},
          {"peer", "one rank"},
          {"peer_value", os["median"]},
          {"peer_stats", os},
          {"ratio", xs["median"].get<double>() / os["median"].get<double>()}},
         device, o);
  };
  line(("tp=" + std::to_string(o.tp)).c_str(), dense, dt, d1,
       {{"tp", o.tp}, {"sequence_parallel", true}, {"dp", 1}});
  line(("ep=" + std::to_string(o.ep)).c_str(), moe, me, m1, {{"ep", o.ep}, {"dp", o.ep}});
}

template <typename T>
int run(const Options& o, const std::string& device) {
  auto has = [&](const char* part) { return o.parts.find(part) != std::string::npos; };
  auto part = [&](const char* name, const std::function<void()>& fn) {
    const double t0 = now();
    fn();
    std::fprintf(stderr, "bench_gpu_parallel: %s took %.1f s\n", name, now() - t0);
  };
  if (has("attention")) part("attention", [&] { bench_attention<T>(o, device); });
  if (has("lsh")) part("lsh", [&] { bench_lsh<T>(o, device); });
  if (has("layouts")) part("layouts", [&] { bench_layouts<T>(o, device); });
  if (has("decode")) part("decode", [&] { bench_decode(o, device); });
  return 0;
}

}  // namespace
}  // namespace grove

int main(int argc, char** argv) {
  using namespace grove;
  Options o;
  CLI::App app{"The parallel engine of the GPU model on one device (thread ranks)"};
  app.add_option("--precision", o.precision, "bf16 or fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  app.add_option("--parts", o.parts, "comma-separated: attention, lsh, layouts, decode");
  app.add_option("--warmup", o.warmup, "untimed repetitions")->check(CLI::NonNegativeNumber);
  app.add_option("--reps", o.reps, "timed repetitions")->check(CLI::PositiveNumber);
  app.add_option("--cp", o.cp, "context-parallel ranks of the attention")
      ->check(CLI::PositiveNumber);
  app.add_option("--attn-seq", o.attn_seq, "attention: global sequence length (multiple of 2·cp)");
  app.add_option("--attn-heads", o.attn_heads, "attention: query heads");
  app.add_option("--attn-kv-heads", o.attn_kv_heads, "attention: key/value heads");
  app.add_option("--attn-head-dim", o.attn_head_dim, "attention: head dimension");
  app.add_option("--vocab", o.vocab, "models: vocabulary");
  app.add_option("--d-model", o.d_model, "models: d_model");
  app.add_option("--layers", o.layers, "models: blocks");
  app.add_option("--heads", o.heads, "models: heads");
  app.add_option("--seq", o.seq, "models: sequence length");
  app.add_option("--batch", o.batch, "models: global batch (sequences)");
  app.add_option("--experts", o.experts, "MoE model: experts (every block)");
  app.add_option("--top-k", o.top_k, "MoE model: experts per token");
  app.add_option("--expert-ffn", o.expert_ffn, "MoE model: expert hidden size (0: the model's)");
  app.add_option("--tp", o.tp, "layout_step: tensor-parallel ranks")->check(CLI::PositiveNumber);
  app.add_option("--ep", o.ep, "moe_step_lsh, layout_step: expert-parallel ranks")
      ->check(CLI::PositiveNumber);
  app.add_option("--decode-context", o.decode_context, "decoding: cached tokens (the context)")
      ->check(CLI::PositiveNumber);
  app.add_option("--decode-heads", o.decode_heads, "decoding: query heads")
      ->check(CLI::PositiveNumber);
  app.add_option("--decode-kv-heads", o.decode_kv_heads, "decoding: key/value heads")
      ->check(CLI::PositiveNumber);
  app.add_option("--decode-head-dim", o.decode_head_dim, "decoding: head dimension (<= 256)")
      ->check(CLI::Range(1, 256));
  app.add_option("--decode-tokens", o.decode_tokens, "decoding: forward calls per repetition")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (o.decode_heads % o.decode_kv_heads != 0) {
    std::fprintf(stderr, "bench_gpu_parallel: --decode-kv-heads=%d must divide --decode-heads=%d\n",
                 o.decode_kv_heads, o.decode_heads);
    return 2;
  }
  if (o.attn_seq % (2 * o.cp) != 0) {
    std::fprintf(stderr, "bench_gpu_parallel: --attn-seq=%d must be a multiple of 2·cp=%d\n",
                 o.attn_seq, 2 * o.cp);
    return 2;
  }
  if (o.batch % o.ep != 0) {
    std::fprintf(stderr, "bench_gpu_parallel: --batch=%d must be a multiple of --ep=%d\n", o.batch,
                 o.ep);
    return 2;
  }
  if (!cuda_device_available()) {
    std::printf("{\"name\":\"bench_gpu_parallel\",\"skipped\":\"no CUDA device\"}\n");
    const char* req = std::getenv("GROVE_REQUIRE_GPU");
    return req != nullptr && std::string(req) == "1" ? 1 : 0;
  }
  try {
    const std::string device = current_device_name();
    return o.precision == "bf16" ? run<cuda::bf16>(o, device) : run<float>(o, device);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_parallel: %s\n", e.what());
    return 1;
  }
}
