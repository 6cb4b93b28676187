// CreateTrainingModel and the CPU backend's TrainingModel; see worker/training_model.h.
#include "worker/training_model.h"

#include <omp.h>

#include <cstdio>

#include "kernels/blas/blas_kernel.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/sgemm_peak.h"
#include "worker/training_model_impl.h"

namespace grove {

template class DeviceTraining<CpuBackend>;
template class DeviceTraining<CpuBf16Backend>;

StatusOr<std::unique_ptr<TrainingModel>> CreateTrainingModel(const TrainConfig& config,
                                                             int local_batch,
                                                             const parallel::ParallelGrid* grid,
                                                             const CheckpointRank& rank) {
  const TrainOptions& o = config.train;
  if (o.device == Device::kCUDA) return CreateCudaTrainingModel(config, local_batch, grid, rank);
  const ParallelOptions& p = config.parallel;
  const ModelParallel par{grid, p.sequence_parallel, p.cp_attention};
  // train.precision on the CPU: fp32 (and auto) -> CpuBackend; bf16 -> CpuBf16Backend, refused
  // (naming train.precision) on a CPU without AVX512_BF16 / AMX-BF16.
  const bool bf16 = o.precision == Precision::kBf16;
  GROVE_RETURN_IF_ERROR(
      bf16 ? TransformerT<CpuBf16Backend>::Supports(config.model, local_batch, o.seq_len, par)
           : TransformerT<CpuBackend>::Supports(config.model, local_batch, o.seq_len, par));
  // The peak MFU is taken against: this rank's sgemm with its threads, measured now while every
  // other rank of the job measures its own (ranks sharing a host share its cores, as they will in
  // training). 1024^3 reaches the library's peak on current CPUs in a few calls.
  if (grid != nullptr && grid->world().size() > 1) grid->world().barrier();
  const double peak_gflops = cpu::sgemm_peak_gflops(1024, 1024, 1024, 0.2);
  char peak[64];
  std::snprintf(peak, sizeof peak, ", sgemm peak %.1f GFLOP/s", peak_gflops);
  const std::string describe =
      std::string("device: cpu, ") +
      (bf16 ? "bf16 GEMMs (" + cpu::bf16_gemm_describe() + "), fp32 elsewhere, " : "fp32, ") +
      std::to_string(omp_get_max_threads()) + " threads per rank, BLAS " +
      blas::CurrentBlasKernel().Describe() + peak;
  comm::Communicator* world = grid ? &grid->world() : nullptr;
  // MFU stays against the fp32 sgemm peak (the reference the CPU's fp32 runs report).
  if (bf16)
    return std::unique_ptr<TrainingModel>(std::make_unique<DeviceTraining<CpuBf16Backend>>(
        config, local_batch, par, rank, world, describe, peak_gflops * 1e9));
  return std::unique_ptr<TrainingModel>(std::make_unique<DeviceTraining<CpuBackend>>(
      config, local_batch, par, rank, world, describe, peak_gflops * 1e9));
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
