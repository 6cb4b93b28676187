// Trainer: the single-process training loop.
//
// Per optimizer step: zero grads; grad_accum x (next batch, forward, backward with loss scale
// 1/grad_accum); global-norm clip; AdamW with the warmup+cosine learning rate. Every eval_every
// steps the validation loss over eval_batches fixed batches; every checkpoint_every steps an
// atomic checkpoint. One progress line per step on stdout and one JSON line per step in
// out_dir/metrics.jsonl. Resume restores parameters, optimizer moments, the step and the
// data-loader position, so the continued loss curve is bit-identical to an uninterrupted run.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "data/batch_loader.h"
#include "data/token_file.h"
#include "parallel/grid.h"
#include "spec/train_config.h"
#include "worker/checkpoint.h"
#include "worker/optimizer.h"
#include "worker/training_model.h"

namespace grove {

struct StepMetrics;

// What an observer of the training loop (e.g. the coordinator link) asks after a step.
enum class StepControl { kContinue, kCheckpoint, kStop };

struct RunOptions {
  bool resume = false;      // continue from the latest checkpoint in out_dir (or resume_from)
  std::string resume_from;  // a specific checkpoint directory
  int stop_after = 0;       // stop (with a checkpoint) after this step; 0 = run to the end
  bool quiet = false;       // no progress lines
  // Called after every optimizer step (and after its evaluation, if any). kCheckpoint saves a
  // checkpoint now; kStop saves one and ends Run() with OK.
  std::function<StepControl(const StepMetrics&)> on_step;
  // Called on every rank after a checkpoint was saved (step, directory).
  std::function<void(int, const std::string&)> on_checkpoint;
};

struct StepMetrics {
  int step = 0;
  float loss = 0;
  float lr = 0;
  double grad_norm = 0;
  double ms = 0;
  double tokens_per_s = 0;
  double tflops = 0;     // model FLOP/s of this rank's micro-batches (whole model, full sequence)
  double mfu = 0;        // tflops / the device's dense peak (0 when the peak is not known)
  float val_loss = NAN;  // set on steps that ran an evaluation
  // Mixture of experts (empty / zero for a dense model), summed over the step's micro-batches:
  float moe_loss = 0;                             // Σ layers (aux + z), times coefficients
  std::vector<std::vector<int64_t>> expert_load;  // [MoE layer][expert] routed assignments
  int64_t dropped_tokens = 0;                     // assignments dropped by capacity
  int64_t a2a_bytes = 0;                          // this rank, all MoE layers, fwd + bwd
  double a2a_ms = 0;                              // this rank's time in the expert all-to-alls
  // LSH-compressed all-to-all (model.moe.lsh.enabled), this rank, same sums:
  int64_t a2a_bytes_uncompressed = 0;           // what the plain all-to-all would have sent
  int64_t lsh_rows = 0, lsh_centroids = 0;      // token rows, and the centroid rows sent instead
  double lsh_residual = 0, lsh_token_norm = 0;  // Σ‖x − c‖, Σ‖x‖ over those token rows
  // The same two byte counts summed over every rank of the job (one all-reduce a step, MoE
  // models only): what the dashboard and the progress line report. Uncompressed is 0 when no
  // layer of any rank compresses (then the plain all-to-all sent job_a2a_bytes).
  int64_t job_a2a_bytes = 0, job_a2a_bytes_uncompressed = 0;
};

class Trainer {
 public:
  // Opens the dataset, builds the model, and (on resume) loads the checkpoint. Every failure is
  // a Status naming the file or field; nothing in out_dir is modified on failure.
  // With a grid (multi-rank), every rank of grid->world() calls this together; the layout in
  // config.parallel must match the grid. Only world rank 0 prints and writes metrics.
  static StatusOr<std::unique_ptr<Trainer>> Create(const TrainConfig& config, const RunOptions& run,
                                                   const parallel::ParallelGrid* grid = nullptr);

  // Runs from the current step to train.steps (or run.stop_after).
  Status Run();
  // Mean validation loss over eval_batches fixed batches (does not disturb training state).
  float Evaluate();

  int step() const { return step_; }
  const std::vector<StepMetrics>& history() const { return history_; }
  // The parameters in host memory (a copy of the device's on a GPU), as of now.
  Weights& params();
  ~Trainer();

 private:
  Trainer(const TrainConfig& config, const RunOptions& run, const parallel::ParallelGrid* grid,
          data::TokenDataset train, data::TokenDataset val);
  bool leader() const { return grid_ == nullptr || grid_->world().rank() == 0; }
  CheckpointRank checkpoint_rank() const;
  StepMetrics TrainStep();
  Status SaveCheckpointNow(float loss);
  void Log(const nlohmann::json& j);

  TrainConfig config_;
  RunOptions run_;
  const parallel::ParallelGrid* grid_;
  data::TokenDataset train_data_, val_data_;
  std::optional<data::BatchLoader> train_loader_, val_loader_;
  std::unique_ptr<TrainingModel> model_;  // the model on train.device, with its optimizer
  std::vector<int32_t> inputs_, targets_;
  int step_ = 0;
  std::vector<StepMetrics> history_;
  std::unique_ptr<FILE, int (*)(FILE*)> metrics_{nullptr, &std::fclose};
};

}  // namespace grove
