// The LSH-compressed MoE layer against the plain one on REAL hidden states: a small MoE model is
// trained on Brown in this test (grove's Trainer, one rank), its weights are loaded into a model
// whose MoE layers record their inputs (RecordingDispatcher), and on a validation batch each MoE
// layer is re-run on its recorded inputs with the LshDispatcher at the default setting
// (LshOptions{} with enabled = true). Measured per layer (docs/lsh.md#accuracy-on-trained-hidden-
// states):
//   e_out    = ‖out_lsh − out_plain‖ / ‖out_plain‖                  (the layer's output)
//   e_stream = ‖out_lsh − out_plain‖ / ‖resid + out_plain‖          (the residual stream after
//              the block, i.e. the error on the scale of what the next block reads)
// and the compression, which must stay ≥ 4 (the point of the setting). The bounds and their
// justification are in docs/lsh.md; the x − c residual compensation, measured alongside, is
// far outside them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <vector>

#include "data/batch_loader.h"
#include "data/token_file.h"
#include "model/transformer.h"
#include "parallel/lsh_dispatcher.h"
#include "parallel/lsh_probe.h"
#include "worker/trainer.h"

namespace grove {
namespace {

namespace fs = std::filesystem;
using parallel::AllToAllDispatcher;
using parallel::LshDispatcher;
using parallel::MoeLayer;
using parallel::RecordingDispatcher;

std::string DataDir() {
  const char* d = std::getenv("GROVE_DATA_DIR");
  return d ? d : "runs/data-brown-8192";
}

double Norm(const std::vector<float>& a) {
  double s = 0;
  for (float v : a) s += double(v) * v;
  return std::sqrt(s);
}

double DiffNorm(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(s);
}

struct LayerError {
  double e_out = 0, e_stream = 0, compression = 0, relative_residual = 0;
};

// A model trained once for the whole test binary, and the recorded MoE inputs of one batch.
class TrainedMoe : public ::testing::Test {
 protected:
  static constexpr int kBatch = 8, kSeq = 64;

  static void SetUpTestSuite() {
    if (!fs::exists(DataDir() + "/val.bin")) return;  // reported by SetUp
    const std::string out = (fs::temp_directory_path() / "grove_lsh_trained").string();
    fs::remove_all(out);
    auto c = LoadTrainConfig(
        "", {"model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.max_seq_len=64",
             "model.moe.num_experts=4", "model.moe.top_k=2", "train.seq_len=64",
             "train.batch_size=8", "train.steps=80", "train.lr=0.006", "train.min_lr=0.0006",
             "train.warmup_steps=10", "train.eval_every=0", "train.checkpoint_every=0",
             "train.threads=1", "data.dir=" + DataDir(), "out_dir=" + out});
    GROVE_CHECK(c.ok()) << c.status().message();
    config_ = new TrainConfig(c.value());
    RunOptions run;
    run.quiet = true;
    auto t = Trainer::Create(*config_, run);
    GROVE_CHECK(t.ok()) << t.status().message();
    GROVE_CHECK(t.value()->Run().ok());
    model_ = new Transformer(config_->model, kBatch, kSeq, Recompute::kNone);
    GROVE_CHECK(model_->load_params(t.value()->params()).ok());
    fs::remove_all(out);
    const int E = config_->model.moe.num_experts, h = config_->model.d_model;
    for (int l = 0; l < config_->model.n_layers; ++l) {
      if (MoeLayer* m = model_->moe_layer(l))
        m->set_dispatcher(std::make_unique<RecordingDispatcher>(
            std::make_unique<AllToAllDispatcher>(E, h, nullptr), h));
    }
    auto val = data::TokenDataset::Open(DataDir() + "/val.bin");
    GROVE_CHECK(val.ok());
    auto vl = data::BatchLoader::Create(val.value(), {kSeq, kBatch, 7, false, 0, 1});
    GROVE_CHECK(vl.ok());
    std::vector<int32_t> tok(kBatch * kSeq), tgt(tok.size());
    vl.value().Next(tok.data(), tgt.data());
    loss_ = model_->forward(tok.data(), tgt.data());
    // What each MoE layer saw and gave; the model's buffer then holds resid + out.
    layers_ = new std::vector<Recorded>(config_->model.n_layers);
    for (int l = 0; l < config_->model.n_layers; ++l) {
      if (!model_->moe_layer(l)) continue;
      auto& rec = static_cast<RecordingDispatcher&>(model_->moe_layer(l)->dispatcher());
      Recorded& r = (*layers_)[l];
      r.T = rec.routing().T;
      r.x = rec.input();
      r.out = rec.output_copy();
      r.stream.assign(rec.output(), rec.output() + int64_t(r.T) * h);
    }
  }
  static void TearDownTestSuite() {
    delete layers_;
    delete model_;
    delete config_;
    layers_ = nullptr;
    model_ = nullptr;
    config_ = nullptr;
  }
  void SetUp() override {
    if (!model_)
      GTEST_FAIL() << "prepared Brown dataset not found in " << DataDir()
                   << ": run launch/setup.sh or set GROVE_DATA_DIR";
  }

  // Layer l re-run on its recorded inputs with an LshDispatcher(o).
  static LayerError Compare(int l, const LshOptions& o) {
    MoeLayer& layer = *model_->moe_layer(l);
    const int E = config_->model.moe.num_experts, h = config_->model.d_model;
    const Recorded& r = (*layers_)[l];
    auto lsh = std::make_unique<LshDispatcher>(E, h, nullptr, o);
    LshDispatcher* d = lsh.get();
    layer.set_dispatcher(std::move(lsh));
    std::vector<float> out(r.x.size());
    layer.forward(out.data(), r.x.data(), r.T);
    LayerError e;
    const double diff = DiffNorm(out, r.out);
    e.e_out = diff / Norm(r.out);
    e.e_stream = diff / Norm(r.stream);
    e.compression = d->metrics().compression_ratio();
    e.relative_residual = d->metrics().relative_residual();
    return e;
  }

  struct Recorded {
    int T = 0;
    std::vector<float> x, out, stream;  // [T, h]: the layer's input, output, resid + output
  };
  static std::vector<Recorded>* layers_;
  static TrainConfig* config_;
  static Transformer* model_;
  static float loss_;
};

TrainConfig* TrainedMoe::config_ = nullptr;
Transformer* TrainedMoe::model_ = nullptr;
float TrainedMoe::loss_ = 0;
std::vector<TrainedMoe::Recorded>* TrainedMoe::layers_ = nullptr;

// Bounds at the default setting, per block (docs/lsh.md#accuracy-on-trained-hidden-states).
// Training is deterministic for one BLAS kernel, but the trained model, and with it the error,
// depends on which OpenBLAS kernel ran the training's GEMMs. Measured (blocks 0 / 1):
//   e_out    Haswell 0.135 / 0.061, SkylakeX 0.075 / 0.041, Cooperlake 0.115 / 0.072,
//            Prescott 0.088 / 0.146
//   e_stream Haswell 0.132 / 0.0078, SkylakeX 0.073 / 0.0047, Cooperlake 0.113 / 0.0113,
//            Prescott 0.086 / 0.0063
// The bounds leave about 1.3x over the largest. Block 1's output is small next to the residual
// stream it is added to, so its e_stream bound is the tight one: a residual taken against
// another bucket's centroid gives e_stream 0.020 there (Haswell) and fails.
constexpr double kMaxOutError[] = {0.17, 0.19}, kMaxStreamError[] = {0.17, 0.015};

// The default setting, compressing from the first call (warm-up is a training schedule; a
// layer re-run here has had no training passes).
LshOptions Default() {
  LshOptions o;
  o.enabled = true;
  o.warmup_steps = 0;
  return o;
}

TEST_F(TrainedMoe, DefaultSettingStaysWithinTheBound) {
  std::printf("trained model: loss %.4f on the probe batch\n", loss_);
  ASSERT_EQ(config_->model.n_layers, 2);
  for (int l = 0; l < config_->model.n_layers; ++l) {
    SCOPED_TRACE(::testing::Message() << "block " << l);
    const LayerError e = Compare(l, Default());
    std::printf("block %d default: e_out %.4f e_stream %.4f compression %.2f rel_residual %.3f\n",
                l, e.e_out, e.e_stream, e.compression, e.relative_residual);
    LshOptions nocomp = Default();
    nocomp.compensate = false;
    const LayerError c = Compare(l, nocomp);
    std::printf("block %d without x-c: e_out %.4f e_stream %.4f compression %.2f\n", l, c.e_out,
                c.e_stream, c.compression);
    LshOptions old = Default();  // the earlier default: one raw hash of 16 buckets, x − c
    old.num_hashes = 1;
    old.center = false;
    old.target_compression = 0;
    const LayerError d = Compare(l, old);
    std::printf("block %d L=1 r=8 raw: e_out %.4f e_stream %.4f compression %.2f\n", l, d.e_out,
                d.e_stream, d.compression);
    EXPECT_GE(e.compression, 4.0);
    EXPECT_LE(e.e_out, kMaxOutError[l]);
    EXPECT_LE(e.e_stream, kMaxStreamError[l]);
    // The earlier default sends 5-20x fewer rows; its error is larger on every kernel measured
    // (by 1.08x to 3.7x: the trained states follow the BLAS kernel's rounding; 1.08x in block 0
    // with OpenBLAS's Haswell kernel on an AMD Zen 5, 1.22x and more on the other kernels
    // measured).
    EXPECT_GT(d.e_out, 1.05 * e.e_out);
  }
}

}  // namespace
}  // namespace grove
