// Training dynamics against PyTorch: the same initial weights, the same Brown batches (from
// Grove's loader), AdamW with the same hyper-parameters, global-norm clipping and the warmup +
// cosine schedule. Grove (fp32) and torch.optim.AdamW on the float64 reference model must give
// the same loss at every step. This covers what a one-step gradient check cannot: the optimizer,
// the schedule, clipping and their interaction over many steps.
//
// Tolerance 1e-3 relative per step: fp32 vs fp64 rounding (~1e-6 on the first step) is amplified
// by the training dynamics over the steps; a wrong optimizer term (bias correction, decay on the
// wrong tensors, a schedule off by one) moves the loss by > 1e-2 within a few steps.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "data/batch_loader.h"
#include "data/token_file.h"
#include "model/transformer.h"
#include "worker/optimizer.h"
#include "spec/train_config.h"

namespace grove {
namespace {

std::string DataDir() {
  const char* d = std::getenv("GROVE_DATA_DIR");
  return d ? d : "runs/data-brown-8192";
}

std::string RunPython(const std::string& script, const std::string& arg) {
  const std::string cmd = std::string(std::getenv("GROVE_TORCH_PYTHON")) + " " +
                          std::getenv("GROVE_SOURCE_DIR") + "/tests/oracle/" + script + " " + arg;
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), &pclose);
  std::string out;
  char buf[4096];
  while (p && fgets(buf, sizeof(buf), p.get())) out += buf;
  return out;
}

TEST(TrainVsTorch, LossCurveMatchesAdamW) {
  ASSERT_TRUE(std::getenv("GROVE_TORCH_PYTHON") && std::getenv("GROVE_SOURCE_DIR"))
      << "run through ctest";
  auto train_data = data::TokenDataset::Open(DataDir() + "/train.bin");
  ASSERT_TRUE(train_data.ok()) << "prepared Brown dataset not found in " << DataDir()
                               << " (run launch/setup.sh): " << train_data.status().message();
  auto cfg = LoadTrainConfig(
      "", {"model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.max_seq_len=32",
           "train.seq_len=32", "train.batch_size=4", "train.steps=25", "train.warmup_steps=5",
           "train.lr=0.01", "train.min_lr=0.001", "train.grad_clip=1.0", "data.dir=" + DataDir()});
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  const TrainConfig& c = cfg.value();
  const TrainOptions& o = c.train;
  auto loader = data::BatchLoader::Create(train_data.value(), {o.seq_len, o.batch_size, o.seed});
  ASSERT_TRUE(loader.ok());

  Transformer model(c.model, o.batch_size, o.seq_len, Recompute::kSelective);
  std::vector<NamedTensor> file;
  for (const NamedTensor& nt : model.params().named())
    file.push_back({"model." + nt.name, nt.tensor.clone()});
  std::vector<Tensor> tokens, targets;
  for (int step = 1; step <= o.steps; ++step) {
    Tensor x = Tensor::empty({o.seq_len, o.batch_size}, DType::kI32);
    Tensor y = Tensor::empty({o.seq_len, o.batch_size}, DType::kI32);
    loader.value().Next(x.data<int32_t>(), y.data<int32_t>());
    tokens.push_back(x);
    targets.push_back(y);
    file.push_back({"tokens." + std::to_string(step), x});
    file.push_back({"targets." + std::to_string(step), y});
  }
  const nlohmann::json train = {{"lr", o.lr},
                                {"min_lr", o.min_lr},
                                {"warmup_steps", o.warmup_steps},
                                {"steps", o.steps},
                                {"weight_decay", o.weight_decay},
                                {"beta1", o.beta1},
                                {"beta2", o.beta2},
                                {"adam_eps", o.adam_eps},
                                {"grad_clip", o.grad_clip}};
  const std::string path =
      (std::filesystem::temp_directory_path() / "grove_train_vs_torch.safetensors").string();
  ASSERT_TRUE(
      WriteSafetensors(path, file,
                       {{"config", ModelConfigToJson(c.model).dump()}, {"train", train.dump()}})
          .ok());
  const std::string out = RunPython("train_reference.py", path);
  std::filesystem::remove(path);
  nlohmann::json want = nlohmann::json::parse(out.substr(out.rfind('{')), nullptr, false);
  ASSERT_FALSE(want.is_discarded()) << "reference failed:\n" << out;

  AdamW opt(c.model);
  double worst = 0;
  for (int step = 1; step <= o.steps; ++step) {
    model.zero_grads();
    const float loss =
        model.forward(tokens[step - 1].data<int32_t>(), targets[step - 1].data<int32_t>());
    model.backward();
    const double norm = grad_global_norm(model.grads());
    clip_gradients(model.grads(), norm, o.grad_clip);
    opt.step(model.params(), model.grads(), learning_rate(o, step), o);
    const double w = want["losses"][step - 1].get<double>();
    const double rel = std::abs(loss - w) / std::abs(w);
    worst = std::max(worst, rel);
    EXPECT_LE(rel, 1e-3) << "step " << step << ": Grove loss " << loss << ", PyTorch " << w
                         << " (grad norm " << norm << " vs "
                         << want["grad_norms"][step - 1].get<double>() << ")";
  }
  std::printf("%d steps: worst relative loss difference to PyTorch AdamW %.2e\n", o.steps, worst);
}

}  // namespace
}  // namespace grove
