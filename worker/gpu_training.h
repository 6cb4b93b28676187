// GpuTraining: the trainer's device side when train.device=cuda (DESIGN.md §3, §5).
//
// Owns the GPU model (model/cuda), its AdamW state on the device, and the NCCL communicator of
// the data-parallel group; the trainer keeps the loop, the data, logging and checkpoints. Each
// rank drives one GPU: the rank's local index (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID or
// LOCAL_RANK) modulo the visible devices. Gradients are all-reduced over data parallelism inside
// backward(finalize), so every rank then holds the same gradients and takes the same step.
//
// Checkpoints keep the CPU format: store() copies parameters and moments into host Weights /
// AdamW, load() copies them back, so a run can move between train.device=cpu and cuda.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/weights.h"
#include "parallel/grid.h"
#include "worker/optimizer.h"
#include "worker/train_config.h"

namespace grove {

class GpuTraining {
 public:
  // Errors name the field (a config the GPU path does not run) or the device problem.
  static StatusOr<std::unique_ptr<GpuTraining>> Create(const TrainConfig& config, int local_batch,
                                                       const parallel::ParallelGrid* grid);
  ~GpuTraining();

  // As Transformer::forward / backward (mean loss over the global batch's valid targets).
  float forward(const int32_t* inputs, const int32_t* targets);
  void backward(float loss_scale, bool finalize);
  void zero_grads();
  // Global gradient L2 norm (gradients are identical on every rank after finalize).
  double grad_norm();
  // Clip to max_norm (as clip_gradients), then one AdamW step with learning rate lr.
  void step(double grad_norm, float lr, const TrainOptions& o);

  // Mixture of experts, as Transformer::moe_loss / the expert load of its metrics.
  float moe_loss() const;
  std::vector<std::vector<int64_t>> expert_load() const;

  void store(Weights* params, AdamW* opt) const;
  Status load(const Weights& params, AdamW& opt);

  // "cuda:0 NVIDIA H100 80GB HBM3, bf16 mixed precision, NCCL 2.28.3 over dp=4; ..." for the log.
  std::string describe() const;
  // Model FLOPs of one micro-batch's forward + backward, and the device's dense peak (0: unknown).
  double flops_per_micro_batch() const;
  double peak_flops() const;

 private:
  struct Impl;
  explicit GpuTraining(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace grove
