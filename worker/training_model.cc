// CreateTrainingModel and the CPU backend's TrainingModel; see worker/training_model.h.
#include "worker/training_model.h"

#include <omp.h>

#include "worker/training_model_impl.h"

namespace grove {

template class DeviceTraining<CpuBackend>;

StatusOr<std::unique_ptr<TrainingModel>> CreateTrainingModel(const TrainConfig& config,
                                                             int local_batch,
                                                             const parallel::ParallelGrid* grid,
                                                             const CheckpointRank& rank) {
  const TrainOptions& o = config.train;
  if (o.device == Device::kCUDA) return CreateCudaTrainingModel(config, local_batch, grid, rank);
  const ParallelOptions& p = config.parallel;
  const ModelParallel par{grid, p.sequence_parallel, p.cp_attention};
  GROVE_RETURN_IF_ERROR(
      TransformerT<CpuBackend>::Supports(config.model, local_batch, o.seq_len, par));
  const std::string describe =
      "device: cpu, fp32, " + std::to_string(omp_get_max_threads()) + " threads per rank";
  return std::unique_ptr<TrainingModel>(std::make_unique<DeviceTraining<CpuBackend>>(
      config, local_batch, par, rank, grid ? &grid->world() : nullptr, describe, 0.0));
}

#ifndef GROVE_HAVE_CUDA
StatusOr<std::unique_ptr<TrainingModel>> CreateCudaTrainingModel(const TrainConfig&, int,
                                                                 const parallel::ParallelGrid*,
                                                                 const CheckpointRank&) {
  return Status::Error(
      "train.device=cuda but this build has no CUDA support: rebuild with -DGROVE_CUDA=ON on a "
      "machine with the CUDA toolkit, or set train.device=cpu");
}
#endif

}  // namespace grove
