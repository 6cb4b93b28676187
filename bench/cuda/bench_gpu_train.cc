// bench_gpu_train: training throughput and MFU of the GPU model (model/cuda) on one device, next to
// PyTorch training the same model in the same run (bench/cuda/torch_train_peer.py;
// docs/testing.md#benchmarks).
//
// One step = zero grads, `accum` x (forward, backward), global-norm clip, AdamW, refresh of the
// bf16 weights: everything the trainer does per optimizer step except reading data (synthetic
// tokens, fixed seed). MFU = model FLOPs per step (6·matmul params·tokens + attention, as the CPU
// model's flops_per_step counts them) / step time / the device's dense bf16 peak. The peak is the
// data sheet's (989.4 TFLOP/s for H100/H200 SXM) unless --peak-tflops says otherwise; the achieved
// TFLOP/s are also given as a fraction of a large cuBLAS bf16 GEMM measured in the same run.
//
// MoE models with --experts (FLOPs count the active parameters: top_k experts per token).
// Output: JSON lines. Default model: ~1B parameters (d 2048, 16 layers, 16 heads, vocab 32000,
// seq 1024, micro-batch 8, 4 micro-batches per step: 32k tokens per optimizer step, so the
// optimizer's pass over the 16 bytes of state per parameter is amortised as in real training).
// Links only the CUDA libraries (no MPI, no OpenBLAS).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "core/rng.h"
#include "kernels/cuda/check.h"
#include "model/cuda/cuda_transformer.h"
#include "model/flat_adamw.h"

namespace grove {
namespace {

struct Options {
  int vocab = 32000, d_model = 2048, layers = 16, heads = 16, kv_heads = 0, ffn = 0;
  int experts = 0, top_k = 2, moe_every = 1, expert_ffn = 0;  // experts > 0: an MoE model
  int seq = 1024, batch = 8, accum = 4, warmup = 2, steps = 6;
  std::string precision = "bf16", recompute = "selective";
  std::string peer = "bench/cuda/torch_train_peer.py";  // "" or "none": no PyTorch peer
  std::string python = "python3";
  bool peer_compile = false;
  double peak_tflops = 0;  // 0: from the device name
};

double cublas_bf16_tflops() {
  const int n = 8192;
  void *a, *b, *c;
  GROVE_CUDA_CHECK(cudaMalloc(&a, size_t{2} * n * n));
  GROVE_CUDA_CHECK(cudaMalloc(&b, size_t{2} * n * n));
  GROVE_CUDA_CHECK(cudaMalloc(&c, size_t{2} * n * n));
  GROVE_CUDA_CHECK(cudaMemset(a, 0, size_t{2} * n * n));
  GROVE_CUDA_CHECK(cudaMemset(b, 0, size_t{2} * n * n));
  cublasHandle_t h;
  GROVE_CUBLAS_CHECK(cublasCreate(&h));
  const float alpha = 1, beta = 0;
  auto run = [&] {
    GROVE_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n,
                                    b, CUDA_R_16BF, n, &beta, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
  };
  for (int i = 0; i < 3; ++i) run();
  GROVE_CUDA_CHECK(cudaDeviceSynchronize());
  const int reps = 10;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) run();
  GROVE_CUDA_CHECK(cudaDeviceSynchronize());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  cublasDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 2.0 * n * n * double(n) * reps / s / 1e12;
}

// Runs the PyTorch peer; returns its JSON line, or null (the reason on stderr).
nlohmann::json run_peer(const Options& o) {
  if (o.peer.empty() || o.peer == "none") return nullptr;
  char cmd[1024];
  std::snprintf(cmd, sizeof(cmd),
                "%s %s --vocab %d --d-model %d --layers %d --heads %d --kv-heads %d --ffn %d "
                "--seq %d --batch %d --accum %d --warmup %d --steps %d --precision %s "
                "--experts %d --top-k %d --moe-every %d --expert-ffn %d%s",
                o.python.c_str(), o.peer.c_str(), o.vocab, o.d_model, o.layers, o.heads, o.kv_heads,
                o.ffn, o.seq, o.batch, o.accum, o.warmup, o.steps, o.precision.c_str(), o.experts,
                o.top_k, o.moe_every, o.expert_ffn, o.peer_compile ? " --compile" : "");
  std::fprintf(stderr, "peer: %s\n", cmd);
  FILE* f = popen(cmd, "r");
  if (!f) return nullptr;
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), f)) out += buf;
  const int rc = pclose(f);
  if (rc != 0) {
    std::fprintf(stderr, "peer exited with status %d; output:\n%s\n", rc, out.c_str());
    return nullptr;
  }
  const size_t at = out.rfind("{\"name\"");
  if (at == std::string::npos) return nullptr;
  try {
    return nlohmann::json::parse(out.substr(at, out.find('\n', at) - at));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "peer output is not JSON (%s): %s\n", e.what(), out.c_str());
    return nullptr;
  }
}

template <typename T>
int run(const Options& o, const ModelConfig& c, Recompute recompute, const std::string& device,
        const nlohmann::json& peer, double gemm_tflops);

int Main(const Options& o) {
  if (!cuda_device_available()) {
    std::printf("{\"name\":\"bench_gpu_train\",\"skipped\":\"no CUDA device\"}\n");
    const char* req = std::getenv("GROVE_REQUIRE_GPU");
    return req != nullptr && std::string(req) == "1" ? 1 : 0;
  }
  cudaDeviceProp prop{};
  GROVE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const std::string device = prop.name;

  ModelConfig c;
  c.vocab_size = o.vocab;
  c.d_model = o.d_model;
  c.n_layers = o.layers;
  c.n_heads = o.heads;
  c.n_kv_heads = o.kv_heads;
  c.ffn_hidden = o.ffn;
  c.moe.num_experts = o.experts;
  c.moe.top_k = o.top_k;
  c.moe.every = o.moe_every;
  c.moe.expert_ffn = o.expert_ffn;
  c.max_seq_len = o.seq;
  if (o.precision != "fp32" && o.precision != "bf16") {
    std::fprintf(stderr, "bench_gpu_train: --precision %s is not one of fp32, bf16\n",
                 o.precision.c_str());
    return 2;
  }
  const bool bf16 = o.precision == "bf16";
  auto recompute = parse_recompute(o.recompute);
  if (!recompute.ok()) {
    std::fprintf(stderr, "bench_gpu_train: %s\n", recompute.status().message().c_str());
    return 2;
  }
  if (Status st = c.Validate(); !st.ok()) {
    std::fprintf(stderr, "bench_gpu_train: %s\n", st.message().c_str());
    return 2;
  }
  // The peer first, so that the two never hold device memory at the same time.
  const nlohmann::json peer = run_peer(o);
  const double gemm_tflops = cublas_bf16_tflops();

  return bf16 ? run<cuda::bf16>(o, c, recompute.value(), device, peer, gemm_tflops)
              : run<float>(o, c, recompute.value(), device, peer, gemm_tflops);
}

// The timed part for one compute type: the transformer on the CUDA backend and a flat AdamW.
template <typename T>
int run(const Options& o, const ModelConfig& c, Recompute recompute, const std::string& device,
        const nlohmann::json& peer, double gemm_tflops) {
  using B = CudaBackend<T>;
  if (Status st = TransformerT<B>::Supports(c, o.batch, o.seq, {}); !st.ok()) {
    std::fprintf(stderr, "bench_gpu_train: %s\n", st.message().c_str());
    return 2;
  }
  TransformerT<B> model(c, o.batch, o.seq, recompute);
  const ParamLayout& layout = model.layout();
  Tensor m = Tensor::zeros({layout.size}, DType::kF32, Device::kCUDA);
  Tensor v = Tensor::zeros({layout.size}, DType::kF32, Device::kCUDA);
  int adam_step = 0;
  const bool bf16 = std::is_same_v<T, cuda::bf16>;
  const int N = o.batch * o.seq;
  std::vector<int32_t> tokens(N + o.batch);
  Rng rng(7);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng.next_u64() % uint64_t(o.vocab));
  const int32_t* inputs = tokens.data();
  const int32_t* targets = tokens.data() + o.batch;  // next token: row + b in [s, b] layout

  float loss = 0, first_loss = 0;
  auto step = [&] {
    model.zero_grads();
    for (int a = 0; a < o.accum; ++a) {
      loss = model.forward(inputs, targets);
      model.backward(1.0f / static_cast<float>(o.accum), /*finalize=*/a + 1 == o.accum);
    }
    const double norm = std::sqrt(B::sum_squares(model.flat_grads(), layout.size));
    if (norm > 1.0) B::scale_inplace(model.flat_grads(), float(1.0 / (norm + 1e-6)), layout.size);
    flat_adamw_step<B>(layout, model.flat_params(), model.flat_grads(), m.data<float>(),
                       v.data<float>(), ++adam_step, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f);
    model.sync_compute_weights();
  };
  for (int i = 0; i < o.warmup; ++i) {
    step();
    if (i == 0) first_loss = loss;
  }
  GROVE_CUDA_CHECK(cudaDeviceSynchronize());
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < o.steps; ++i) step();
  GROVE_CUDA_CHECK(cudaDeviceSynchronize());
  const double step_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / o.steps;
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);

  const double tokens_per_s = double(N) * o.accum / step_s;
  const double tflops = model.flops_per_step() * o.accum / step_s / 1e12;
  const double peak = o.peak_tflops > 0 ? o.peak_tflops : dense_peak_tflops(device, bf16);
  nlohmann::json cfg = {{"params", c.num_parameters()},
                        {"d_model", o.d_model},
                        {"layers", o.layers},
                        {"heads", o.heads},
                        {"kv_heads", c.kv_heads()},
                        {"experts", o.experts},
                        {"top_k", o.experts > 0 ? o.top_k : 0},
                        {"active_params", c.active_parameters()},
                        {"ffn", c.ffn()},
                        {"vocab", o.vocab},
                        {"seq", o.seq},
                        {"batch", o.batch},
                        {"grad_accum", o.accum},
                        {"precision", o.precision},
                        {"recompute", o.recompute},
                        {"steps", o.steps}};
  auto emit = [&](const char* name, double value, const char* unit, const std::string& peer_name,
                  double peer_value) {
    nlohmann::json j = {
        {"name", name}, {"config", cfg}, {"value", value}, {"unit", unit}, {"device", device}};
    if (!peer_name.empty()) {
      j["peer"] = peer_name;
      j["peer_value"] = peer_value;
      j["ratio"] = peer_value > 0 ? value / peer_value : 0.0;
    }
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  };
  const std::string peer_name = peer.is_object() ? peer.value("peer", std::string("pytorch")) : "";
  const double peer_tps = peer.is_object() ? peer.value("tokens_per_s", 0.0) : 0.0;
  emit("gpu_train_tokens_per_s", tokens_per_s, "tokens/s", peer_name, peer_tps);
  if (peak > 0) {
    // Same model, same FLOPs per token: the peer's MFU scales with its tokens/s.
    const double peer_mfu = tflops / peak * (tokens_per_s > 0 ? peer_tps / tokens_per_s : 0);
    emit("gpu_train_mfu", tflops / peak, "fraction of peak", peer.is_object() ? peer_name : "",
         peer_mfu);
  }
  emit("gpu_train_tflops", tflops, "TFLOP/s", "cublas_gemm_bf16_8192", gemm_tflops);
  nlohmann::json mem = {{"name", "gpu_train_memory"},
                        {"config", cfg},
                        {"model_bytes", model.device_bytes()},
                        {"activation_bytes", int64_t(model.activation_report().total())},
                        {"device_used_bytes", int64_t(total_b - free_b)},
                        {"loss_first", first_loss},
                        {"loss_last", loss},
                        {"device", device}};
  std::printf("%s\n", mem.dump().c_str());
  if (!std::isfinite(loss)) {
    std::fprintf(stderr, "bench_gpu_train: loss is not finite\n");
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace grove

int main(int argc, char** argv) {
  grove::Options o;
  CLI::App app{"GPU training throughput and MFU next to PyTorch (JSON lines)"};
  app.add_option("--vocab", o.vocab);
  app.add_option("--d-model", o.d_model);
  app.add_option("--layers", o.layers);
  app.add_option("--heads", o.heads);
  app.add_option("--kv-heads", o.kv_heads, "0: as --heads");
  app.add_option("--ffn", o.ffn, "0: 8/3 d_model rounded to 64");
  app.add_option("--experts", o.experts, "experts per MoE layer; 0: a dense model");
  app.add_option("--top-k", o.top_k, "experts per token");
  app.add_option("--moe-every", o.moe_every, "every n-th block is an MoE block");
  app.add_option("--expert-ffn", o.expert_ffn, "hidden size of each expert; 0: --ffn");
  app.add_option("--seq", o.seq);
  app.add_option("--batch", o.batch, "sequences per micro-batch");
  app.add_option("--accum", o.accum, "micro-batches per optimizer step");
  app.add_option("--warmup", o.warmup);
  app.add_option("--steps", o.steps);
  app.add_option("--precision", o.precision, "bf16 or fp32");
  app.add_option("--recompute", o.recompute, "none, selective or full");
  app.add_option("--peer", o.peer, "PyTorch peer script; 'none' to skip");
  app.add_option("--python", o.python, "interpreter with torch for the peer");
  app.add_flag("--peer-compile", o.peer_compile, "torch.compile the peer model");
  app.add_option("--peak-tflops", o.peak_tflops, "device peak for MFU; 0: from the data sheet");
  CLI11_PARSE(app, argc, argv);
  try {
    return grove::Main(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_train: %s\n", e.what());
    return 1;
  }
}
