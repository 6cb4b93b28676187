// lsh_probe: trains a model on Brown in this process (grove's Trainer, one rank, ep = 1) and,
// every --probe-every steps, looks at the MoE layers' real inputs (docs/lsh.md#what-keeps-a-
// bucket-together). The trained weights are loaded into a probe model whose MoE layers record
// their input (RecordingDispatcher); on one fixed validation batch it reports per MoE layer:
//   anisotropy   ‖mean_t x_t/‖x_t‖‖ (1: every input points the same way, ~1/sqrt(T): isotropic)
//   for each --settings entry (LshOptions keys; enabled, rotation_dim and min_tokens from the
//   trained config unless given): the compression (kept rows / centroids) and relative residual
//   Σ‖x − c‖ / Σ‖x‖ an LshDispatcher would form on these inputs and routing, and the error of
//   the compressed layer's output against the plain layer's on the same inputs and weights,
//   ‖Δout‖ / ‖out‖, ‖Δout‖ / ‖resid‖ (resid: the residual stream the block adds the layer's
//   output to) and ‖Δout‖ / ‖resid + out‖ (err_stream: on the scale of the stream after the
//   block), whether or not the model was trained with LSH.
// JSON lines on stdout; the trainer's own metrics.jsonl (loss, val_loss, moe.lsh) in out_dir.
// Run: lsh_probe --config base.json [--set key=value ...] [--probe-every 10]
//      [--settings '[{"num_hashes":1},{"num_hashes":3,"center":true}]']
#include "parallel/lsh_probe.h"

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/batch_loader.h"
#include "data/token_file.h"
#include "kernels/blas/blas_kernel.h"
#include "model/transformer.h"
#include "parallel/lsh_dispatcher.h"
#include "spec/train_config.h"
#include "worker/trainer.h"

namespace {

using grove::LshOptions;
using grove::parallel::AllToAllDispatcher;
using grove::parallel::Dispatcher;
using grove::parallel::LshDispatcher;
using grove::parallel::MoeLayer;
using grove::parallel::RecordingDispatcher;
using json = nlohmann::json;

LshOptions ApplySetting(LshOptions o, const json& s) {
  o.enabled = true;
  o.warmup_steps = 0;  // a layer evaluation: compress now (warm-up is the training's schedule)
  for (auto it = s.begin(); it != s.end(); ++it) {
    const std::string& k = it.key();
    if (k == "num_hashes")
      o.num_hashes = it->get<int>();
    else if (k == "rotation_dim")
      o.rotation_dim = it->get<int>();
    else if (k == "min_tokens")
      o.min_tokens = it->get<int>();
    else if (k == "center")
      o.center = it->get<bool>();
    else if (k == "target_compression")
      o.target_compression = it->get<double>();
    else if (k == "compensate")
      o.compensate = it->get<bool>();
    else {
      std::fprintf(stderr, "--settings: unknown key '%s'\n", k.c_str());
      std::exit(2);
    }
  }
  return o;
}

double Norm(const float* a, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(a[i]) * a[i];
  return std::sqrt(s);
}

double DiffNorm(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(s);
}

}  // namespace

int main(int argc, char** argv) {
  grove::blas::SelectBlasKernel(argv);  // before any GEMM (may re-execute)
  CLI::App app{"LSH probe: compression and layer error on a model trained on Brown"};
  std::string config;
  std::vector<std::string> sets;
  int every = 10;
  std::string settings_s =
      R"([{"num_hashes":1},{"num_hashes":2},{"num_hashes":3},{"num_hashes":4}])";
  app.add_option("--config", config)->required();
  app.add_option("--set", sets, "key=value overrides");
  app.add_option("--probe-every", every);
  app.add_option("--settings", settings_s, "JSON list of LshOptions to evaluate");
  CLI11_PARSE(app, argc, argv);
  const json settings = json::parse(settings_s);

  auto cfg_or = grove::LoadTrainConfig(config, sets);
  if (!cfg_or.ok()) {
    std::fprintf(stderr, "%s\n", cfg_or.status().message().c_str());
    return 2;
  }
  grove::TrainConfig cfg = cfg_or.value();
  const grove::ModelConfig& mc = cfg.model;
  const int b = cfg.train.batch_size, s = cfg.train.seq_len, h = mc.d_model;
  const int E = mc.moe.num_experts;
  if (E == 0) {
    std::fprintf(stderr, "model.moe.num_experts=0: nothing to probe\n");
    return 2;
  }
  auto val = grove::data::TokenDataset::Open(cfg.data.dir + "/val.bin");
  if (!val.ok()) {
    std::fprintf(stderr, "%s\n", val.status().message().c_str());
    return 2;
  }
  auto vl = grove::data::BatchLoader::Create(val.value(), {s, b, cfg.train.seed, false, 0, 1});
  if (!vl.ok()) {
    std::fprintf(stderr, "%s\n", vl.status().message().c_str());
    return 2;
  }
  std::vector<int32_t> tok(size_t(b) * s), tgt(tok.size());
  vl.value().Next(tok.data(), tgt.data());

  // The probe model: the trained config with plain dispatchers (recorded); LSH layers are
  // evaluated on the recorded inputs below.
  grove::ModelConfig pc = mc;
  pc.moe.lsh.enabled = false;
  grove::Transformer probe(pc, b, s, grove::Recompute::kNone);
  std::vector<int> layers;
  for (int l = 0; l < mc.n_layers; ++l) {
    if (MoeLayer* m = probe.moe_layer(l)) {
      m->set_dispatcher(std::make_unique<RecordingDispatcher>(
          std::make_unique<AllToAllDispatcher>(E, h, nullptr), h));
      layers.push_back(l);
    }
  }

  grove::RunOptions run;
  run.quiet = true;
  std::unique_ptr<grove::Trainer> trainer;
  run.on_step = [&](const grove::StepMetrics& sm) {
    if (sm.step != 1 && sm.step % every != 0 && sm.step != cfg.train.steps)
      return grove::StepControl::kContinue;
    GROVE_CHECK(probe.load_params(trainer->params()).ok());
    const float loss = probe.forward(tok.data(), tgt.data());
    for (int l : layers) {
      MoeLayer& layer = *probe.moe_layer(l);
      auto& rec = static_cast<RecordingDispatcher&>(layer.dispatcher());
      const int T = rec.routing().T;
      const int64_t n = int64_t(T) * h;
      const std::vector<float> x = rec.input();
      const std::vector<float> plain_out = rec.output_copy();
      std::vector<float> resid(n);
      for (int64_t i = 0; i < n; ++i) resid[i] = rec.output()[i] - plain_out[i];
      const double stream_norm = Norm(rec.output(), n);  // before `rec` is replaced below
      std::vector<double> mean(h, 0.0);
      for (int t = 0; t < T; ++t) {
        const double inv = 1.0 / std::max(1e-30, Norm(x.data() + int64_t(t) * h, h));
        for (int j = 0; j < h; ++j) mean[j] += x[int64_t(t) * h + j] * inv / T;
      }
      double aniso = 0;
      for (double v : mean) aniso += v * v;
      json row = {{"step", sm.step},
                  {"layer", l},
                  {"train_loss", sm.loss},
                  {"probe_loss", loss},
                  {"anisotropy", std::sqrt(aniso)},
                  {"out_norm_rel_resid", Norm(plain_out.data(), n) / Norm(resid.data(), n)}};
      json res = json::array();
      std::vector<float> out(n);
      for (const json& st : settings) {
        const LshOptions o = ApplySetting(mc.moe.lsh, st);
        // Swap an LSH dispatcher in for one forward of the layer on the recorded inputs.
        auto recorder = std::make_unique<RecordingDispatcher>(
            std::make_unique<LshDispatcher>(E, h, nullptr, o), h);
        RecordingDispatcher* r = recorder.get();
        layer.set_dispatcher(std::move(recorder));
        layer.forward(out.data(), x.data(), T);
        const auto& lm = static_cast<LshDispatcher&>(r->inner()).metrics();
        const double d = DiffNorm(out.data(), plain_out.data(), n);
        res.push_back({{"setting", st},
                       {"compression", lm.compression_ratio()},
                       {"relative_residual", lm.relative_residual()},
                       {"mean_hash_codes", lm.mean_hash_codes()},
                       {"err_out", d / Norm(plain_out.data(), n)},
                       {"err_resid", d / Norm(resid.data(), n)},
                       {"err_stream", d / stream_norm}});
        layer.set_dispatcher(std::make_unique<RecordingDispatcher>(
            std::make_unique<AllToAllDispatcher>(E, h, nullptr), h));
      }
      row["lsh"] = res;
      std::printf("%s\n", row.dump().c_str());
      std::fflush(stdout);
    }
    return grove::StepControl::kContinue;
  };
  auto t = grove::Trainer::Create(cfg, run);
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", t.status().message().c_str());
    return 2;
  }
  trainer = std::move(t).value();
  const grove::Status st = trainer->Run();
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.message().c_str());
    return 1;
  }
  std::printf("%s\n", json({{"final_val_loss", trainer->Evaluate()}}).dump().c_str());
  return 0;
}
