#include "worker/trainer.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "kernels/blas/blas_kernel.h"
#include "kernels/cpu/ops.h"
#include "parallel/lsh_dispatcher.h"
#include "worker/checkpoint.h"

namespace grove {

namespace fs = std::filesystem;

namespace {

StatusOr<int> dataset_vocab(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "meta.json");
  if (!in) return Status::Error("dataset " + dir + " has no meta.json");
  nlohmann::json meta = nlohmann::json::parse(in, nullptr, false);
  if (meta.is_discarded() || !meta.contains("tokenizer") ||
      !meta["tokenizer"].contains("vocab_size"))
    return Status::Error(dir + "/meta.json is corrupt (no tokenizer.vocab_size)");
  return meta["tokenizer"]["vocab_size"].get<int>();
}

std::string checkpoint_root(const TrainConfig& c) {
  return c.out_dir + "/checkpoints";
}

}  // namespace

Trainer::Trainer(const TrainConfig& config, const RunOptions& run,
                 const parallel::ParallelGrid* grid, data::TokenDataset train,
                 data::TokenDataset val)
    : config_(config),
      run_(run),
      grid_(grid),
      train_data_(std::move(train)),
      val_data_(std::move(val)) {}

Trainer::~Trainer() = default;

CheckpointRank Trainer::checkpoint_rank() const {
  if (grid_ == nullptr) return {};
  const parallel::GridCoord& c = grid_->coord();
  return CheckpointRank{c.tp,
                        grid_->shape().tp,
                        c.dp == 0 && c.cp == 0,
                        c.rank,
                        &grid_->world(),
                        c.ep,
                        grid_->shape().ep,
                        c.edp == 0};
}

Weights& Trainer::params() {
  model_->sync_to_host();
  return model_->host_params();
}

StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainConfig& config_in,
                                                   const RunOptions& run,
                                                   const parallel::ParallelGrid* grid) {
  TrainConfig config = config_in;
  GROVE_RETURN_IF_ERROR(config.ResolveLayout(grid ? grid->world().size() : 1));
  if (grid) {
    const parallel::GridShape& g = grid->shape();
    if (g.tp != config.parallel.tp || g.cp != config.parallel.cp || g.dp != config.parallel.dp)
      return Status::Error("the parallel grid (" + g.str() +
                           ") does not match the config's "
                           "parallel section");
  }
  const std::string& dir = config.data.dir;
  if (!fs::is_directory(dir))
    return Status::Error("dataset directory '" + dir +
                         "' (data.dir) does not exist: prepare it with `grove-prepare-data "
                         "--corpus third_party/corpus/brown --out " +
                         dir + "`");
  auto vocab = dataset_vocab(dir);
  if (!vocab.ok()) return vocab.status();
  if (vocab.value() != config.model.vocab_size)
    return Status::Error("model.vocab_size=" + std::to_string(config.model.vocab_size) +
                         " but the dataset in " + dir + " was tokenized with a vocabulary of " +
                         std::to_string(vocab.value()) +
                         "; set model.vocab_size=" + std::to_string(vocab.value()));
  auto train = data::TokenDataset::Open(dir + "/train.bin");
  if (!train.ok()) return train.status();
  auto val = data::TokenDataset::Open(dir + "/val.bin");
  if (!val.ok()) return val.status();

  // Refuse to write over an existing run unless asked to continue it, and to start over when the
  // checkpoint to continue from is missing or damaged (worker/checkpoint.h).
  auto start = ResolveStart(config.out_dir, run.resume, run.resume_from);
  if (!start.ok()) return start.status();

  if (config.train.threads > 0) omp_set_num_threads(config.train.threads);
  std::unique_ptr<Trainer> t(
      new Trainer(config, run, grid, std::move(train).value(), std::move(val).value()));
  const TrainOptions& o = config.train;
  const ParallelOptions& p = config.parallel;
  const int dp_rank = grid ? grid->coord().dp : 0;
  const int local_batch = o.batch_size / p.dp;
  auto tl = data::BatchLoader::Create(
      t->train_data_, {o.seq_len, local_batch, o.seed, /*shuffle=*/true, dp_rank, p.dp});
  if (!tl.ok()) return Status::Error("training data: " + tl.status().message());
  auto vl = data::BatchLoader::Create(
      t->val_data_, {o.seq_len, local_batch, o.seed, /*shuffle=*/false, dp_rank, p.dp});
  if (!vl.ok()) return Status::Error("validation data: " + vl.status().message());
  t->train_loader_.emplace(std::move(tl).value());
  t->val_loader_.emplace(std::move(vl).value());
  auto model = CreateTrainingModel(config, local_batch, grid, t->checkpoint_rank());
  if (!model.ok()) return model.status();
  t->model_ = std::move(model).value();
  t->inputs_.resize(size_t(local_batch) * o.seq_len);
  t->targets_.resize(t->inputs_.size());

  const std::string from = start.value();
  if (!from.empty()) {
    auto state =
        LoadCheckpoint(from, t->model_->host_params(), t->model_->host_opt(), t->checkpoint_rank());
    if (!state.ok()) return state.status();
    GROVE_RETURN_IF_ERROR(t->model_->sync_from_host());
    if (state.value().contains("config") &&
        state.value()["config"]["model"] != ModelConfigToJson(config.model))
      return Status::Error("checkpoint " + from +
                           " was written with a different model config; resume with the same "
                           "model section (see its state.json)");
    auto ls = data::LoaderStateFromJson(state.value()["loader"]);
    if (!ls.ok()) return Status::Error(from + "/state.json: " + ls.status().message());
    t->train_loader_->Restore(ls.value());
    t->step_ = state.value()["step"].get<int>();
    if (!run.quiet && t->leader())
      std::printf("resumed from %s at step %d\n", from.c_str(), t->step_);
  }

  // Only rank 0 writes out_dir; every rank learns whether that worked, so a failure there ends
  // all ranks here instead of leaving the others waiting in the first collective.
  Status out_ok;
  if (t->leader()) {
    std::error_code ec;
    fs::create_directories(config.out_dir, ec);
    if (ec) out_ok = Status::Error("cannot create out_dir " + config.out_dir + ": " + ec.message());
    if (out_ok.ok())
      out_ok = WriteFileAtomic(config.out_dir + "/config.json", config.ToJson().dump(2) + "\n");
    FILE* f = out_ok.ok() ? std::fopen((config.out_dir + "/metrics.jsonl").c_str(), "a") : nullptr;
    if (out_ok.ok() && !f)
      out_ok = Status::Error("cannot open " + config.out_dir + "/metrics.jsonl for writing");
    t->metrics_.reset(f);
  }
  if (grid && grid->world().size() > 1) {
    int32_t failed = out_ok.ok() ? 0 : 1;
    grid->world().all_reduce(&failed, 1, DType::kI32, comm::ReduceOp::kMax);
    if (failed && out_ok.ok()) out_ok = Status::Error("rank 0 could not write out_dir");
  }
  if (!out_ok.ok()) return out_ok;
  return t;
}

void Trainer::Log(const nlohmann::json& j) {
  if (!metrics_) return;  // not the leader
  std::fprintf(metrics_.get(), "%s\n", j.dump().c_str());
  std::fflush(metrics_.get());
}

StepMetrics Trainer::TrainStep() {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const TrainOptions& o = config_.train;
  double loss_sum = 0.0;
  StepMetrics m;
  model_->zero_grads();
  for (int micro = 0; micro < o.grad_accum; ++micro) {
    train_loader_->Next(inputs_.data(), targets_.data());
    model_->set_global_step(step_);
    loss_sum += model_->forward(inputs_.data(), targets_.data());
    model_->backward(1.0f / static_cast<float>(o.grad_accum),
                     /*finalize=*/micro + 1 == o.grad_accum);
    model_->add_moe_metrics(&m, o.grad_accum);
  }
  ++step_;
  m.step = step_;
  m.loss = static_cast<float>(loss_sum / o.grad_accum);
  m.grad_norm = model_->grad_norm();
  m.lr = learning_rate(o, step_);
  model_->step(m.grad_norm, m.lr, o);  // clips, updates, refreshes the compute weights
  m.ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  m.tokens_per_s = double(o.batch_size) * o.seq_len * o.grad_accum / (m.ms / 1000.0);
  m.tflops = model_->flops_per_micro_batch() * o.grad_accum / (m.ms / 1000.0) / 1e12;
  // The model FLOPs of a micro-batch are shared by its tp x cp ranks: MFU is taken against their
  // peaks together.
  const double peak =
      model_->peak_flops() * double(config_.parallel.tp) * double(config_.parallel.cp);
  m.mfu = peak > 0 ? m.tflops * 1e12 / peak : 0.0;
  // The job's all-to-all bytes (after the step's timing: reporting is not training): each rank
  // sends what its own tokens route elsewhere, so rank 0's bytes are the job's only when routing
  // is even. Every rank takes this branch alike (same config, same world).
  m.job_a2a_bytes = m.a2a_bytes;
  m.job_a2a_bytes_uncompressed = m.a2a_bytes_uncompressed;
  if (config_.model.moe.num_experts > 0 && grid_ != nullptr && grid_->world().size() > 1) {
    int64_t bytes[2] = {m.a2a_bytes, m.a2a_bytes_uncompressed};
    grid_->world().all_reduce(bytes, 2, DType::kI64, comm::ReduceOp::kSum);
    m.job_a2a_bytes = bytes[0];
    m.job_a2a_bytes_uncompressed = bytes[1];
  }
  return m;
}

float Trainer::Evaluate() {
  val_loader_->Reset();
  double sum = 0.0;
  const int n = static_cast<int>(
      std::min<int64_t>(config_.train.eval_batches, val_loader_->batches_per_epoch()));
  for (int i = 0; i < n; ++i) {
    val_loader_->Next(inputs_.data(), targets_.data());
    model_->set_global_step(step_);
    sum += model_->forward(inputs_.data(), targets_.data());
  }
  return static_cast<float>(sum / std::max(n, 1));
}

Status Trainer::SaveCheckpointNow(float loss) {
  nlohmann::json state = {{"loader", data::LoaderStateToJson(train_loader_->State())},
                          {"config", config_.ToJson()},
                          {"loss", loss}};
  const auto t0 = std::chrono::steady_clock::now();
  model_->sync_to_host();  // a device's state -> the host copies the writer reads
  auto dir =
      SaveCheckpoint(checkpoint_root(config_), step_, model_->host_params(), model_->host_opt(),
                     state, config_.train.keep_checkpoints, checkpoint_rank());
  if (!dir.ok()) return dir.status();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  Log({{"step", step_}, {"checkpoint", dir.value()}, {"save_ms", ms}});
  if (run_.on_checkpoint) run_.on_checkpoint(step_, dir.value());
  if (!run_.quiet && leader())
    std::printf("checkpoint saved: %s (%.0f ms)\n", dir.value().c_str(), ms);
  return Status::Ok();
}

Status Trainer::Run() {
  const TrainOptions& o = config_.train;
  const int last = run_.stop_after > 0 ? std::min(run_.stop_after, o.steps) : o.steps;
  const bool print = !run_.quiet && leader();
  if (print && step_ == 0) {
    const ParallelOptions& par = config_.parallel;
    std::printf(
        "layout: %d rank(s), tp=%d cp=%d ep=%d dp=%d%s%s\n", grid_ ? grid_->world().size() : 1,
        par.tp, par.cp, par.ep, par.dp,
        par.tp > 1 && par.sequence_parallel ? ", sequence parallel" : "",
        par.cp > 1
            ? (std::string(", ") + cp_attention_name(par.cp_attention) + " attention").c_str()
            : "");
    std::printf(
        "model: %lld parameters, %d layers, d_model %d, %d heads, vocab %d; "
        "global batch %d x seq %d x accum %d; recompute %s; %d threads per rank\n",
        static_cast<long long>(config_.model.num_parameters()), config_.model.n_layers,
        config_.model.d_model, config_.model.n_heads, config_.model.vocab_size, o.batch_size,
        o.seq_len, o.grad_accum, recompute_name(o.recompute), omp_get_max_threads());
    std::printf("%s\n", model_->describe().c_str());
    std::printf("metrics: %s/metrics.jsonl, checkpoints: %s/checkpoints\n", config_.out_dir.c_str(),
                config_.out_dir.c_str());
  }
  // What this process runs on, once per start (resumes add their own), so a run's speed can be
  // read against its BLAS kernel and peak.
  const blas::BlasKernel& blas = blas::CurrentBlasKernel();
  Log({{"start",
        {{"step", step_},
         {"device", model_->describe()},
         {"threads", omp_get_max_threads()},
         {"blas",
          {{"library", blas.library},
           {"core", blas.core},
           {"source", blas.source},
           {"chosen_by_library", blas.chosen_by_library},
           {"below_cpu", blas.warning}}},
         {"cpu", blas.cpu},
         {"peak_gflops", model_->peak_flops() / 1e9}}}});
  float loss = 0;
  while (step_ < last) {
    StepMetrics m = TrainStep();
    loss = m.loss;
    history_.push_back(m);
    if (!std::isfinite(m.loss))
      return Status::Error("loss is " + std::to_string(m.loss) + " at step " +
                           std::to_string(m.step) +
                           ": training diverged; lower train.lr or raise train.warmup_steps");
    // The float loss widened to double prints exactly, so resume tests can compare bits.
    nlohmann::json row = {{"step", m.step}, {"loss", static_cast<double>(m.loss)},
                          {"lr", m.lr},     {"grad_norm", m.grad_norm},
                          {"ms", m.ms},     {"tokens_per_s", m.tokens_per_s}};
    row["tflops"] = m.tflops;
    if (m.mfu > 0) row["mfu"] = m.mfu;
    if (!m.expert_load.empty())
      row["moe"] = {{"aux_loss", m.moe_loss},           {"expert_load", m.expert_load},
                    {"dropped", m.dropped_tokens},      {"a2a_bytes", m.a2a_bytes},
                    {"job_a2a_bytes", m.job_a2a_bytes}, {"a2a_ms", m.a2a_ms},
                    {"a2a_share", m.a2a_ms / m.ms}};
    if (m.lsh_rows > 0 || m.lsh_centroids > 0)
      row["moe"]["lsh"] = {
          {"compression_ratio", m.lsh_centroids > 0 ? double(m.lsh_rows) / m.lsh_centroids : 1.0},
          {"a2a_bytes_uncompressed", m.a2a_bytes_uncompressed},
          {"job_a2a_bytes_uncompressed", m.job_a2a_bytes_uncompressed},
          {"mean_residual_norm", m.lsh_rows > 0 ? m.lsh_residual / double(m.lsh_rows) : 0.0},
          {"relative_residual", m.lsh_token_norm > 0 ? m.lsh_residual / m.lsh_token_norm : 0.0}};
    Log(row);
    if (print) {
      std::printf("step %5d/%d | loss %.4f | lr %.3e | grad norm %.3f | %8.0f tok/s | %7.1f ms",
                  m.step, o.steps, m.loss, m.lr, m.grad_norm, m.tokens_per_s, m.ms);
      if (!m.expert_load.empty())
        std::printf(" | moe aux %.4f, a2a %.0f%%", m.moe_loss, 100.0 * m.a2a_ms / m.ms);
      // LSH: the job's all-to-all bytes against the plain all-to-all's (100% in the warm-up).
      if (m.job_a2a_bytes_uncompressed > 0)
        std::printf(" (LSH: %.0f%% of the bytes)",
                    100.0 * double(m.job_a2a_bytes) / double(m.job_a2a_bytes_uncompressed));
      if (m.mfu > 0) std::printf(" | %.1f GFLOP/s, MFU %.1f%%", m.tflops * 1e3, 100.0 * m.mfu);
      std::printf("\n");
    }
    const bool eval_now = (o.eval_every > 0 && step_ % o.eval_every == 0) || step_ == o.steps;
    if (eval_now) {
      m.val_loss = Evaluate();
      history_.back().val_loss = m.val_loss;
      Log({{"step", step_}, {"val_loss", m.val_loss}});
      if (print) std::printf("eval  %5d | val loss %.4f\n", step_, m.val_loss);
    }
    const StepControl control = run_.on_step ? run_.on_step(m) : StepControl::kContinue;
    const bool stop = control == StepControl::kStop;
    const bool ckpt_now = (o.checkpoint_every > 0 && step_ % o.checkpoint_every == 0) ||
                          step_ == last || control != StepControl::kContinue;
    if (ckpt_now) GROVE_RETURN_IF_ERROR(SaveCheckpointNow(loss));
    if (stop) {
      if (print) std::printf("stopping at step %d as requested\n", step_);
      break;
    }
    std::fflush(stdout);
  }
  return Status::Ok();
}

}  // namespace grove
