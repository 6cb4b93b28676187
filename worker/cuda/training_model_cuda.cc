// The CUDA backend's TrainingModel (train.device=cuda); see worker/training_model.h.
#include <cuda_runtime_api.h>

#include <cstdlib>

#include "model/cuda/cuda_transformer.h"
#include "worker/training_model.h"
#include "worker/training_model_impl.h"
#ifdef GROVE_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif

namespace grove {

template class DeviceTraining<CudaBackend<float>>;
template class DeviceTraining<CudaBackend<cuda::bf16>>;

namespace {

// The rank's index on its node, from the launcher's environment (OpenMPI, Slurm, torchrun-style).
int local_rank() {
  for (const char* var :
       {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "LOCAL_RANK"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return 0;
}

template <typename T>
StatusOr<std::unique_ptr<TrainingModel>> create(
    const TrainConfig& config, int local_batch, const ModelParallel& par,
    const CheckpointRank& rank, comm::Communicator* world, std::string describe, double peak,
    std::vector<std::unique_ptr<comm::Communicator>> c) {
  GROVE_RETURN_IF_ERROR(
      TransformerT<CudaBackend<T>>::Supports(config.model, local_batch, config.train.seq_len, par));
  return std::unique_ptr<TrainingModel>(std::make_unique<DeviceTraining<CudaBackend<T>>>(
      config, local_batch, par, rank, world, std::move(describe), peak, std::move(c)));
}

}  // namespace

StatusOr<std::unique_ptr<TrainingModel>> CreateCudaTrainingModel(const TrainConfig& config,
                                                                 int local_batch,
                                                                 const parallel::ParallelGrid* grid,
                                                                 const CheckpointRank& rank) {
  const TrainOptions& o = config.train;
  const ParallelOptions& p = config.parallel;
  if (p.tp > 1 || p.cp > 1 || p.ep > 1)
    return Status::Error("parallel.tp=" + std::to_string(p.tp) + ", parallel.cp=" +
                         std::to_string(p.cp) + ", parallel.ep=" + std::to_string(p.ep) +
                         ": tensor, context and expert parallelism run on train.device=cpu only "
                         "so far; set them to 1 on train.device=cuda");
  const bool bf16 = o.precision != Precision::kFp32;
  Status device_ok;
  int count = 0, device = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    device_ok = Status::Error(
        "train.device=cuda but this process sees no CUDA device; check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES, or set train.device=cpu");
  } else {
    device = local_rank() % count;
    if (cudaSetDevice(device) != cudaSuccess)
      device_ok = Status::Error("cannot use CUDA device " + std::to_string(device));
  }
  // Every rank learns whether every rank has its device before any of them joins NCCL, so one
  // rank without a GPU ends the job with this error instead of leaving the others waiting.
  if (grid != nullptr && grid->world().size() > 1) {
    int32_t failed = device_ok.ok() ? 0 : 1;
    grid->world().all_reduce(&failed, 1, DType::kI32, comm::ReduceOp::kMax);
    if (failed && device_ok.ok())
      device_ok = Status::Error(
          "another rank has no usable CUDA device (train.device=cuda): check nvidia-smi and "
          "CUDA_VISIBLE_DEVICES on every node");
  }
  if (!device_ok.ok()) return device_ok;
  const std::string name = current_device_name();
  std::vector<std::unique_ptr<comm::Communicator>> comms;
  comm::Communicator* dp = nullptr;
  if (grid != nullptr && grid->world().size() > 1) {
    comm::Communicator& host_dp = grid->group(parallel::Group::kDp);
#ifdef GROVE_HAVE_NCCL
    comms.push_back(comm::NcclCommunicator::create(host_dp, device, "dp"));
    dp = comms.back().get();
#else
    dp = &host_dp;  // host collectives: the model stages its gradients through host memory
#endif
  }
  // One device per rank, data parallel: the model sees no grid, only the data-parallel group.
  const ModelParallel par{nullptr, false, p.cp_attention, dp};
  std::string describe = "device: cuda:" + std::to_string(device) + " " + name + ", " +
                         (bf16 ? "bf16 compute, fp32 master weights" : "fp32");
  if (dp != nullptr)
    describe += ", gradients all-reduced over dp=" + std::to_string(dp->size()) + " with " +
                dp->backend_name();
  const double peak = dense_peak_tflops(name, bf16) * 1e12;
  comm::Communicator* world = grid ? &grid->world() : nullptr;
  if (bf16)
    return create<cuda::bf16>(config, local_batch, par, rank, world, describe, peak,
                              std::move(comms));
  return create<float>(config, local_batch, par, rank, world, describe, peak, std::move(comms));
}

}  // namespace grove
