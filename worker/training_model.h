// TrainingModel: the device half of the training loop (worker/trainer.h keeps the loop itself,
// the data, logging and checkpoints, the same for every device). It owns the model on its
// backend (TransformerT<B>), the AdamW state next to it, and the communicators the backend
// needs; train.device picks the backend:
//   cpu:  TransformerT<CpuBackend> (fp32, auto) or TransformerT<CpuBf16Backend>
//         (train.precision=bf16: bf16 GEMM operands, on CPUs with AVX512_BF16 / AMX-BF16), MPI
//         for every group of the grid;
//   cuda: TransformerT<CudaBackend<T>> (T from train.precision), one GPU per rank (the rank's
//         node-local index modulo the visible devices), every group of the grid on NCCL (MPI
//         on emulated device memory under the CUDA emulator).
// Checkpoints keep one format: host_params() / host_opt() are the state in host memory (the
// model's own buffers on the CPU, copies refreshed by sync_to_host() on a GPU), so a run moves
// between devices freely.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/weights.h"
#include "parallel/grid.h"
#include "spec/train_config.h"
#include "worker/checkpoint.h"
#include "worker/optimizer.h"

namespace grove {

struct StepMetrics;

class TrainingModel {
 public:
  virtual ~TrainingModel() = default;

  // The optimizer steps completed so far (the trainer's global step, restored from checkpoints),
  // set before every forward: the schedules inside the model follow it (the LSH all-to-all's
  // warm-up, model.moe.lsh.warmup_steps), so a resumed run continues them where it stopped.
  virtual void set_global_step(int64_t step) = 0;
  // As Transformer::forward / backward (mean loss over the global batch's valid targets).
  virtual float forward(const int32_t* inputs, const int32_t* targets) = 0;
  virtual void backward(float loss_scale, bool finalize) = 0;
  virtual void zero_grads() = 0;
  // Global gradient L2 norm over every rank's shards (each element counted once).
  virtual double grad_norm() = 0;
  // Clips to o.grad_clip (scale only when the norm exceeds a finite bound), then one AdamW step
  // with learning rate lr, then refreshes the compute copy of the weights.
  virtual void step(double grad_norm, float lr, const TrainOptions& o) = 0;
  // Adds the last micro-batch's MoE numbers (aux + z / accumulation, expert load, drops,
  // all-to-all bytes and time, LSH compression) to *m.
  virtual void add_moe_metrics(StepMetrics* m, int grad_accum) const = 0;

  // The state as host Weights / AdamW for checkpoints (sync_to_host() first; sync_from_host()
  // after loading into them).
  virtual Weights& host_params() = 0;
  virtual AdamW& host_opt() = 0;
  virtual void sync_to_host() = 0;
  virtual Status sync_from_host() = 0;

  // "device: cpu, ... activations ..." / "device: cuda:0 NVIDIA H100 ..., bf16 ..." for the log.
  virtual std::string describe() const = 0;
  // Model FLOPs of one micro-batch's forward + backward, and the device's dense peak (0: not
  // known, no MFU is reported).
  virtual double flops_per_micro_batch() const = 0;
  virtual double peak_flops() const = 0;
};

// Errors name the field (a config the backend does not run) or the device problem. `rank` says
// which shards this rank owns (for the gradient norm), as for its checkpoints.
StatusOr<std::unique_ptr<TrainingModel>> CreateTrainingModel(const TrainConfig& config,
                                                             int local_batch,
                                                             const parallel::ParallelGrid* grid,
                                                             const CheckpointRank& rank);
// The cuda half of CreateTrainingModel (worker/cuda/training_model_cuda.cc).
StatusOr<std::unique_ptr<TrainingModel>> CreateCudaTrainingModel(const TrainConfig& config,
                                                                 int local_batch,
                                                                 const parallel::ParallelGrid* grid,
                                                                 const CheckpointRank& rank);

}  // namespace grove
