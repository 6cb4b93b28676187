// The CUDA backend's TrainingModel (train.device=cuda); see worker/training_model.h.
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <utility>

#include "comm/mpi_communicator.h"
#include "model/cuda/cuda_transformer.h"
#include "worker/cuda/device_setup.h"
#include "worker/training_model.h"
#include "worker/training_model_impl.h"
#ifdef GROVE_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif

namespace grove {

template class DeviceTraining<CudaBackend<float>>;
template class DeviceTraining<CudaBackend<cuda::bf16>>;

namespace {

template <typename T>
std::unique_ptr<TrainingModel> create(const TrainConfig& config, int local_batch,
                                      const ModelParallel& par, const CheckpointRank& rank,
                                      comm::Communicator* world, std::string describe, double peak,
                                      std::unique_ptr<parallel::ParallelGrid> device_grid) {
  return std::make_unique<DeviceTraining<CudaBackend<T>>>(
      config, local_batch, par, rank, world, std::move(describe), peak, std::move(device_grid));
}

}  // namespace

// The rank's index on its node, from the launcher's environment (OpenMPI, Slurm, torchrun-style).
int CudaLocalRank() {
  for (const char* var :
       {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "LOCAL_RANK"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return 0;
}

// The grid's groups as communicators on device memory, over the same ranks, names and member
// order as the host grid's (collective over the host world): NCCL in the product (the world
// from ncclCommInitRank, each group an ncclCommSplit of it); under the CUDA emulator MPI on its
// device memory (comm::mpi_device_communicator). Null when neither exists (a build without
// NCCL): the model then stages every collective through host memory over the host groups.
std::unique_ptr<parallel::ParallelGrid> CudaDeviceGroups(const parallel::ParallelGrid& host,
                                                         [[maybe_unused]] int device) {
  std::shared_ptr<comm::Communicator> world;
#ifdef GROVE_HAVE_NCCL
  world = comm::NcclCommunicator::create(host.world(), device, "world");
#else
  if (comm::mpi_device_buffers_supported()) world = comm::mpi_device_communicator(host.world());
#endif
  if (!world) return nullptr;
  auto grid = parallel::ParallelGrid::create(std::move(world), host.shape());
  GROVE_CHECK(grid.ok()) << "device groups of " << host.shape().str() << ": "
                         << grid.status().message();
  return std::make_unique<parallel::ParallelGrid>(std::move(grid).value());
}

StatusOr<std::unique_ptr<TrainingModel>> CreateCudaTrainingModel(const TrainConfig& config,
                                                                 int local_batch,
                                                                 const parallel::ParallelGrid* grid,
                                                                 const CheckpointRank& rank) {
  const TrainOptions& o = config.train;
  const ParallelOptions& p = config.parallel;
  const bool bf16 = o.precision != Precision::kFp32;
  // What the model does not run on this backend yet (capacity dropping, LSH) is refused here,
  // naming the field, before any device or NCCL work.
  const ModelParallel host_par{grid, p.sequence_parallel, p.cp_attention};
  const Status supported = bf16 ? TransformerT<CudaBackend<cuda::bf16>>::Supports(
                                      config.model, local_batch, o.seq_len, host_par)
                                : TransformerT<CudaBackend<float>>::Supports(
                                      config.model, local_batch, o.seq_len, host_par);
  Status device_ok;
  int count = 0, device = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    device_ok = Status::Error(
        "train.device=cuda but this process sees no CUDA device; check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES, or set train.device=cpu");
  } else if (!supported.ok()) {
    device_ok = supported;
  } else {
    device = CudaLocalRank() % count;
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
  // Several ranks: every group of the grid (tp, cp, dp, dp_cp, ep, edp) on device memory.
  std::unique_ptr<parallel::ParallelGrid> device_grid;
  if (grid != nullptr && grid->world().size() > 1) device_grid = CudaDeviceGroups(*grid, device);
  const parallel::ParallelGrid* model_grid = device_grid ? device_grid.get() : grid;
  const ModelParallel par{model_grid, p.sequence_parallel, p.cp_attention};
  std::string describe = "device: cuda:" + std::to_string(device) + " " + name + ", " +
                         (bf16 ? "bf16 compute, fp32 master weights" : "fp32");
  if (model_grid != nullptr) {
    const parallel::GridShape& g = model_grid->shape();
    describe += ", tp=" + std::to_string(g.tp) +
                (g.tp > 1 && p.sequence_parallel ? " (sequence parallel)" : "") +
                " cp=" + std::to_string(g.cp) +
                (g.cp > 1 ? std::string(" (") + cp_attention_name(p.cp_attention) + ")" : "") +
                " ep=" + std::to_string(g.ep) + " dp=" + std::to_string(g.dp) + ", groups on " +
                model_grid->world().backend_name() +
                (device_grid ? "" : " (staged through host memory)");
  }
  const double peak = dense_peak_tflops(name, bf16) * 1e12;
  comm::Communicator* world = grid ? &grid->world() : nullptr;
  if (bf16)
    return create<cuda::bf16>(config, local_batch, par, rank, world, describe, peak,
                              std::move(device_grid));
  return create<float>(config, local_batch, par, rank, world, describe, peak,
                       std::move(device_grid));
}

}  // namespace grove
