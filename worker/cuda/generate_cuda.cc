// grove-generate --device cuda (worker/generate_device.h): the CUDA Generator on the node-local
// rank's GPU, the cp group on device memory when the build has one.
#include <cuda_runtime_api.h>

#include <chrono>
#include <memory>
#include <string>

#include "model/cuda/cuda_generate.h"
#include "worker/cuda/device_setup.h"
#include "worker/generate_device.h"

namespace grove {

StatusOr<GenerateRun> GenerateOnCuda(const ModelConfig& config, const Weights& weights,
                                     const parallel::ParallelGrid& grid, int capacity,
                                     CpAttention attention, std::span<const int32_t> prompt,
                                     int max_new, int eos_id) {
  Status device_ok;
  int count = 0, device = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    device_ok = Status::Error(
        "--device cuda but this process sees no CUDA device; check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES, or use --device cpu");
  } else {
    device = CudaLocalRank() % count;
    if (cudaSetDevice(device) != cudaSuccess)
      device_ok = Status::Error("cannot use CUDA device " + std::to_string(device));
  }
  // Every rank learns whether every rank has its device before any of them joins NCCL.
  comm::Communicator& world = grid.world();
  if (world.size() > 1) {
    int32_t failed = device_ok.ok() ? 0 : 1;
    world.all_reduce(&failed, 1, DType::kI32, comm::ReduceOp::kMax);
    if (failed && device_ok.ok())
      device_ok = Status::Error("another rank has no usable CUDA device (--device cuda)");
  }
  if (!device_ok.ok()) return device_ok;
  std::unique_ptr<parallel::ParallelGrid> device_grid;
  if (world.size() > 1) device_grid = CudaDeviceGroups(grid, device);
  comm::Communicator& cp = device_grid ? device_grid->cp() : grid.cp();
  CudaGenerator gen(config, weights, &cp, capacity, attention);
  GenerateRun run;
  const auto t0 = std::chrono::steady_clock::now();
  run.tokens = gen.generate(prompt, max_new, eos_id);
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  run.attention_bytes = gen.attention_stats().bytes;
  run.describe =
      "cuda:" + std::to_string(device) + " " + current_device_name() + ", cp group on " +
      cp.backend_name() +
      (cp.device() == Device::kCUDA || cp.size() == 1 ? "" : " (staged through host memory)");
  return run;
}

}  // namespace grove
