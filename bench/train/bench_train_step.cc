// Training-step benchmark (forward + backward + clip + AdamW) on a fixed model, with its peers
// measured in the same run (docs/testing.md#benchmarks):
//   - PyTorch 1.13 CPU running the same model with the same thread count, written two ways:
//     torch_train_step.py (sequence-first nn.Module, as the model is specified) and
//     torch_train_step_fast.py (batch-first, fused QKV and gate|up: the fastest plain PyTorch);
//     the ratio is taken against the faster of the two;
//   - OpenBLAS sgemm throughput, the ceiling for a GEMM-bound step: one 2048^3 sgemm is timed
//     right before each timed step, so the peak and the step see the same machine load, and the
//     ratio is taken between their medians.
// Every figure is the median of --steps timed steps after --warmup untimed ones, with the min,
// max and each step's time; the config names the BLAS kernel (selected at start,
// kernels/blas/blas_kernel.h), the CPU and the threads of both sides. Prints one JSON line per
// measurement.
//
// --precision fp32 bf16 (default: both, bf16 where the CPU has AVX512_BF16 / AMX-BF16): Grove's
// CpuBackend and CpuBf16Backend (bf16 GEMM operands through oneDNN, whose version and ISA the
// config names as "gemm"), each against the same fp32 PyTorch peers measured once at the start of
// the run. Threads: --threads for both sides. OMP_WAIT_POLICY: SelectBlasKernel re-executes the
// benchmark with passive unless the user set it, and the peers inherit it (config
// "omp_wait_policy" says which).
//
// --rounds R (default 1): the whole measurement (both PyTorch peers, then every Grove line) runs R
// times in turn, so that a slow minute of a shared machine lands on both sides of one round rather
// than on one side of the comparison; each line carries its "round", and after the last round one
// "train_step_rounds" line per Grove configuration gives each round's ratio and their median.
//
// --attention mha mla (default: mha): Grove's model with multi-head latent attention (its MLA
// dimensions at their defaults for this width, docs/model.md) is timed after the MHA model of the
// same precision and recompute mode, and that MHA line of the same run is its peer (the PyTorch
// peers implement MHA only); the config gives both models' parameter counts.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/blas/blas_kernel.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/sgemm_peak.h"
#include "model/transformer.h"
#include "worker/optimizer.h"

namespace {

using grove::Recompute;
using json = nlohmann::json;

struct Timing {
  double ms_per_step;  // median
  double min_ms, max_ms;
  std::vector<double> step_ms;
  std::vector<double> sgemm_gflops;  // the sgemm probe, timed right before each step
  float loss;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

template <class B>
Timing time_grove(const grove::ModelConfig& c, int b, int s, Recompute mode, int warmup, int steps,
                  grove::cpu::SgemmProbe& sgemm) {
  grove::TransformerT<B> model(c, b, s, mode);
  grove::AdamW opt(c);
  grove::TrainOptions t;
  std::vector<int32_t> tokens(size_t(b) * s), targets(tokens.size());
  grove::Rng rng(1);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = int32_t(rng.next_u64() % c.vocab_size);
    targets[i] = int32_t(rng.next_u64() % c.vocab_size);
  }
  float loss = 0;
  auto step = [&] {
    model.zero_grads();
    loss = model.forward(tokens.data(), targets.data());
    model.backward();
    const double norm = grove::grad_global_norm(model.grads());
    grove::clip_gradients(model.grads(), norm, 1.0f);
    opt.step(model.params(), model.grads(), 1e-4f, t);
    model.sync_compute_weights();  // bf16: re-round the GEMMs' weight copy (fp32: nothing)
  };
  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> step_ms, sgemm_gflops;
  for (int i = 0; i < steps; ++i) {
    sgemm_gflops.push_back(sgemm.time_once());
    const auto t0 = std::chrono::steady_clock::now();
    step();
    step_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return {Median(step_ms),
          *std::min_element(step_ms.begin(), step_ms.end()),
          *std::max_element(step_ms.begin(), step_ms.end()),
          step_ms,
          sgemm_gflops,
          loss};
}

json run_torch(const std::string& python, const std::string& script, const grove::ModelConfig& c,
               int b, int s, int threads, int warmup, int steps) {
  const std::string cmd = python + " " + script + " '" + grove::ModelConfigToJson(c).dump() + "' " +
                          std::to_string(b) + " " + std::to_string(s) + " " +
                          std::to_string(threads) + " " + std::to_string(warmup) + " " +
                          std::to_string(steps) + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), &pclose);
  std::string out;
  char buf[4096];
  while (p && fgets(buf, sizeof(buf), p.get())) out += buf;
  const size_t brace = out.rfind('{');
  json j = brace == std::string::npos ? json() : json::parse(out.substr(brace), nullptr, false);
  if (j.is_discarded() || !j.contains("tokens_per_s")) {
    std::fprintf(stderr, "bench_train_step: PyTorch peer failed (%s):\n%s\n", cmd.c_str(),
                 out.c_str());
    return json();
  }
  return j;
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any GEMM: may execute the benchmark again on the right BLAS kernel; the PyTorch peers
  // inherit OPENBLAS_CORETYPE, so both sides run the same kernel.
  const grove::blas::BlasKernel& blas = grove::blas::SelectBlasKernel(argv);
  CLI::App app{"Grove training-step benchmark vs PyTorch and sgemm peak"};
  grove::ModelConfig c;
  c.vocab_size = 8192;
  c.d_model = 512;
  c.n_layers = 4;
  c.n_heads = 8;
  c.max_seq_len = 256;
  int b = 8, s = 256, warmup = 2, steps = 7, rounds = 1;
  int threads = omp_get_max_threads();
  std::string python = GROVE_BENCH_PYTHON, script = GROVE_BENCH_TORCH_SCRIPT,
              fast_script = GROVE_BENCH_TORCH_FAST_SCRIPT;
  std::vector<std::string> modes = {"selective", "none"};
  std::vector<std::string> precisions = {"fp32", "bf16"};
  std::vector<std::string> attentions = {"mha"};
  bool no_torch = false;
  app.add_option("--d-model", c.d_model);
  app.add_option("--layers", c.n_layers);
  app.add_option("--heads", c.n_heads);
  app.add_option("--vocab", c.vocab_size);
  app.add_option("--batch", b);
  app.add_option("--seq", s);
  app.add_option("--warmup", warmup);
  app.add_option("--steps", steps);
  app.add_option("--rounds", rounds, "times the whole comparison runs, peers and Grove in turn")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads);
  app.add_option("--recompute", modes, "recompute modes to time");
  app.add_option("--precision", precisions, "Grove precisions to time (fp32, bf16)");
  app.add_option("--attention", attentions,
                 "Grove attentions to time (mha, mla; mla's peer is the mha line)");
  app.add_flag("--no-torch", no_torch, "skip the PyTorch peer");
  app.add_option("--python", python, "interpreter that imports torch");
  CLI11_PARSE(app, argc, argv);
  c.max_seq_len = std::max(c.max_seq_len, s);
  std::vector<grove::Attention> attention_kinds;
  for (const std::string& a : attentions) {
    auto k = grove::parse_attention(a, "--attention");
    if (!k.ok()) {
      std::fprintf(stderr, "%s\n", k.status().message().c_str());
      return 2;
    }
    attention_kinds.push_back(k.value());
  }
  // MHA first: it is the peer of the MLA line that follows it.
  std::stable_sort(attention_kinds.begin(), attention_kinds.end(),
                   [](grove::Attention x, grove::Attention y) { return int(x) < int(y); });
  omp_set_num_threads(threads);

  const json config = {{"d_model", c.d_model},
                       {"layers", c.n_layers},
                       {"heads", c.n_heads},
                       {"vocab", c.vocab_size},
                       {"batch", b},
                       {"seq", s},
                       {"threads", threads},
                       {"warmup", warmup},
                       {"steps", steps},
                       {"blas", blas.Describe()},
                       {"blas_core", blas.core},
                       {"cpu", blas.cpu},
                       {"omp_wait_policy", env_or("OMP_WAIT_POLICY", "unset")}};
  const double tokens = double(b) * s;
  grove::cpu::SgemmProbe sgemm(2048, 2048, 2048);
  auto peer_json = [&](const json& p, const char* name) {
    return json({{"name", name},
                 {"tokens_per_s", p["tokens_per_s"]},
                 {"ms_per_step", p["ms_per_step"]},
                 {"min_ms", *std::min_element(p["step_ms"].begin(), p["step_ms"].end())},
                 {"max_ms", *std::max_element(p["step_ms"].begin(), p["step_ms"].end())},
                 {"step_ms", p["step_ms"]},
                 {"threads", p["threads"]},
                 {"torch", p["torch"]}});
  };

  // Per Grove configuration (the config's dump), its tokens/s lines and GFLOP/s lines of every
  // round.
  std::map<std::string, std::vector<std::pair<json, json>>> by_config;
  for (int round = 0; round < rounds; ++round) {
    json torch = no_torch ? json() : run_torch(python, script, c, b, s, threads, warmup, steps);
    json torch_fast =
        no_torch ? json() : run_torch(python, fast_script, c, b, s, threads, warmup, steps);
    // The faster peer is the one the ratio is taken against.
    const json* best = nullptr;
    for (const json* p : {&torch, &torch_fast})
      if (!p->is_null() && (best == nullptr || (*p)["tokens_per_s"].get<double>() >
                                                   (*best)["tokens_per_s"].get<double>()))
        best = p;
    for (const std::string& precision : precisions) {
      if (precision != "fp32" && precision != "bf16") {
        std::fprintf(stderr, "--precision must be fp32 or bf16 (got '%s')\n", precision.c_str());
        return 2;
      }
      const bool bf16 = precision == "bf16";
      if (bf16 && !grove::cpu::bf16_gemm_supported()) {
        std::fprintf(stderr, "bench_train_step: bf16 skipped: this CPU has no bf16 GEMMs (%s)\n",
                     grove::cpu::bf16_gemm_describe().c_str());
        continue;
      }
      for (const std::string& m : modes) {
        auto mode = grove::parse_recompute(m);
        if (!mode.ok()) {
          std::fprintf(stderr, "%s\n", mode.status().message().c_str());
          return 2;
        }
        json mha_line;  // this precision and mode's MHA line: the MLA line's peer
        for (grove::Attention attention : attention_kinds) {
          grove::ModelConfig mc = c;
          mc.attention = attention;
          if (grove::Status st = mc.Validate(); !st.ok()) {
            std::fprintf(stderr, "bench_train_step: %s\n", st.message().c_str());
            return 2;
          }
          const bool mla = attention == grove::Attention::kMla;
          const Timing g =
              bf16 ? time_grove<grove::CpuBf16Backend>(mc, b, s, mode.value(), warmup, steps, sgemm)
                   : time_grove<grove::CpuBackend>(mc, b, s, mode.value(), warmup, steps, sgemm);
          const double tok_s = tokens / (g.ms_per_step / 1e3);
          json cfg = config;
          cfg["recompute"] = m;
          cfg["precision"] = precision;
          cfg["attention"] = grove::attention_name(attention);
          cfg["parameters"] = mc.num_parameters();
          if (mla)
            cfg["mla"] = {{"q_lora_rank", mc.mla.q_lora_rank},
                          {"kv_lora_rank", mc.mla_kv_rank()},
                          {"qk_nope_head_dim", mc.mla_nope_dim()},
                          {"qk_rope_head_dim", mc.mla_rope_dim()},
                          {"v_head_dim", mc.mla_v_dim()}};
          cfg["gemm"] =
              bf16 ? grove::cpu::bf16_gemm_describe() + " (bf16 operands, fp32 accumulation)"
                   : "openblas sgemm (" + blas.core + ")";
          cfg["loss"] = g.loss;
          json line = {{"name", "train_step_tokens_per_s"},
                       {"config", cfg},
                       {"value", tok_s},
                       {"unit", "tokens/s"},
                       {"ms_per_step", g.ms_per_step},
                       {"min_ms", g.min_ms},
                       {"max_ms", g.max_ms},
                       {"step_ms", g.step_ms}};
          if (rounds > 1) line["round"] = round;
          if (mla) {
            if (!mha_line.is_null()) {
              line["peer"] = "grove-mha (same run, " + precision + ", " + m + ")";
              line["peer_value"] = mha_line["value"];
              line["peer_ms_per_step"] = mha_line["ms_per_step"];
              line["peer_min_ms"] = mha_line["min_ms"];
              line["peer_max_ms"] = mha_line["max_ms"];
              line["peer_parameters"] = mha_line["config"]["parameters"];
              line["ratio"] = tok_s / mha_line["value"].get<double>();
            }
          } else if (best != nullptr) {
            json peers = json::array();
            if (!torch.is_null()) peers.push_back(peer_json(torch, "pytorch-seq-first"));
            if (!torch_fast.is_null())
              peers.push_back(peer_json(torch_fast, "pytorch-batch-first-fused"));
            line["peers"] = peers;
            line["peer"] =
                std::string(best == &torch ? "pytorch-seq-first" : "pytorch-batch-first-fused") +
                "-" + (*best)["torch"].get<std::string>() + "-cpu";
            line["peer_value"] = (*best)["tokens_per_s"];
            line["peer_threads"] = (*best)["threads"];
            line["ratio"] = tok_s / (*best)["tokens_per_s"].get<double>();
          }
          if (!mla) mha_line = line;
          std::printf("%s\n", line.dump().c_str());
          const double gflops = mc.training_flops(b, s) / (g.ms_per_step / 1e3) / 1e9;
          const double peak = Median(g.sgemm_gflops);
          json gline =
              json({{"name", "train_step_gflops"},
                    {"config", cfg},
                    {"value", gflops},
                    {"unit", "GFLOP/s"},
                    {"peer", "openblas-sgemm-2048^3 (" + blas.core + ")"},
                    {"peer_value", peak},
                    {"peer_min", *std::min_element(g.sgemm_gflops.begin(), g.sgemm_gflops.end())},
                    {"peer_max", *std::max_element(g.sgemm_gflops.begin(), g.sgemm_gflops.end())},
                    {"peer_samples", g.sgemm_gflops},
                    {"ratio", gflops / peak}});
          if (rounds > 1) gline["round"] = round;
          std::printf("%s\n", gline.dump().c_str());
          std::fflush(stdout);
          json key = cfg;
          key.erase("loss");  // the same configuration in every round, whatever its last loss
          by_config[key.dump()].emplace_back(line, gline);
        }
      }
    }
  }
  if (rounds == 1) return 0;
  // One line per Grove configuration: each round's figures and the medians over rounds.
  for (const auto& [cfg_dump, lines] : by_config) {
    std::vector<double> values, peer_values, ratios, gflops_ratios;
    for (const auto& [line, gline] : lines) {
      values.push_back(line["value"].get<double>());
      if (line.contains("ratio")) {
        peer_values.push_back(line["peer_value"].get<double>());
        ratios.push_back(line["ratio"].get<double>());
      }
      gflops_ratios.push_back(gline["ratio"].get<double>());
    }
    const json& last = lines.back().first;
    json summary = {{"name", "train_step_rounds"},
                    {"config", json::parse(cfg_dump)},
                    {"rounds", rounds},
                    {"value", Median(values)},
                    {"unit", "tokens/s"},
                    {"round_values", values},
                    {"gflops_ratio", Median(gflops_ratios)},
                    {"round_gflops_ratios", gflops_ratios}};
    if (!ratios.empty()) {
      summary["peer"] = last["peer"];
      summary["peer_value"] = Median(peer_values);
      summary["round_peer_values"] = peer_values;
      summary["ratio"] = Median(ratios);
      summary["round_ratios"] = ratios;
    }
    std::printf("%s\n", summary.dump().c_str());
  }
  return 0;
}
