#include "worker/gpu_training.h"

#include <cmath>
#include <cstdlib>

#ifdef GROVE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "model/cuda/gpu_transformer.h"
#ifdef GROVE_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif
#endif

namespace grove {

#ifdef GROVE_HAVE_CUDA

namespace {

// The rank's index on its node, from the launcher's environment (OpenMPI, Slurm, torchrun-style).
int local_rank() {
  for (const char* var :
       {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "LOCAL_RANK"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return 0;
}

}  // namespace

struct GpuTraining::Impl {
  int device = 0;
  std::string device_name;
  GpuPrecision precision = GpuPrecision::kBf16;
  std::unique_ptr<comm::Communicator> nccl;  // data-parallel group on the devices
  comm::Communicator* dp = nullptr;          // nccl, or the host dp group without NCCL
  std::unique_ptr<GpuTransformer> model;
  std::unique_ptr<GpuAdamW> opt;
};

StatusOr<std::unique_ptr<GpuTraining>> GpuTraining::Create(const TrainConfig& config,
                                                           int local_batch,
                                                           const parallel::ParallelGrid* grid) {
  auto impl = std::make_unique<Impl>();
  const TrainOptions& o = config.train;
  impl->precision = o.precision == "fp32" ? GpuPrecision::kFp32 : GpuPrecision::kBf16;
  Status device_ok;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    device_ok = Status::Error(
        "train.device=cuda but this process sees no CUDA device; check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES, or set train.device=cpu");
  } else {
    impl->device = local_rank() % count;
    if (cudaSetDevice(impl->device) != cudaSuccess)
      device_ok = Status::Error("cannot use CUDA device " + std::to_string(impl->device));
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
  impl->device_name = current_device_name();
  if (grid != nullptr && grid->world().size() > 1) {
    comm::Communicator& dp = grid->group(parallel::Group::kDp);
#ifdef GROVE_HAVE_NCCL
    impl->nccl = comm::NcclCommunicator::create(dp, impl->device, "dp");
    impl->dp = impl->nccl.get();
#else
    impl->dp = &dp;  // host collectives: the model stages gradients through host memory
#endif
  }
  auto model =
      GpuTransformer::Create(config.model, local_batch, o.seq_len,
                             parse_recompute(o.recompute).value(), impl->precision, impl->dp);
  if (!model.ok()) return model.status();
  impl->model = std::move(model).value();
  impl->opt = std::make_unique<GpuAdamW>(impl->model->layout());
  return std::unique_ptr<GpuTraining>(new GpuTraining(std::move(impl)));
}

float GpuTraining::forward(const int32_t* inputs, const int32_t* targets) {
  return impl_->model->forward(inputs, targets);
}
void GpuTraining::backward(float loss_scale, bool finalize) {
  impl_->model->backward(loss_scale, finalize);
}
void GpuTraining::zero_grads() {
  impl_->model->zero_grads();
}

double GpuTraining::grad_norm() {
  return GpuAdamW::grad_norm(impl_->model->grads(), impl_->model->num_params());
}

void GpuTraining::step(double norm, float lr, const TrainOptions& o) {
  // As clip_gradients (worker/optimizer.cc): scale only when the norm exceeds a finite bound.
  float scale = 1.0f;
  if (o.grad_clip > 0 && norm > o.grad_clip && std::isfinite(norm))
    scale = static_cast<float>(o.grad_clip / (norm + 1e-6));
  impl_->opt->step(impl_->model->params(), impl_->model->grads(), scale, lr, o.beta1, o.beta2,
                   o.adam_eps, o.weight_decay);
  impl_->model->sync_compute_weights();
}

float GpuTraining::moe_loss() const {
  return impl_->model->moe_loss();
}
std::vector<std::vector<int64_t>> GpuTraining::expert_load() const {
  return impl_->model->expert_load();
}

void GpuTraining::store(Weights* params, AdamW* opt) const {
  impl_->model->store_params(params);
  impl_->opt->store(&opt->m(), &opt->v());
  opt->set_steps_taken(impl_->opt->steps_taken());
}

Status GpuTraining::load(const Weights& params, AdamW& opt) {
  GROVE_RETURN_IF_ERROR(impl_->model->load_params(params));
  GROVE_RETURN_IF_ERROR(impl_->opt->load(opt.m(), opt.v()));
  impl_->opt->set_steps_taken(opt.steps_taken());
  return Status::Ok();
}

std::string GpuTraining::describe() const {
  const GpuTransformer& m = *impl_->model;
  std::string s = "device: cuda:" + std::to_string(impl_->device) + " " + impl_->device_name +
                  ", " + gpu_precision_name(impl_->precision) +
                  (impl_->precision == GpuPrecision::kBf16 ? " compute, fp32 master weights" : "");
  if (impl_->dp != nullptr)
    s += ", gradients all-reduced over dp=" + std::to_string(impl_->dp->size()) + " with " +
         impl_->dp->backend_name();
  char buf[160];
  std::snprintf(buf, sizeof(buf), "; activations %.1f MiB, model + gradients + buffers %.1f MiB",
                m.activation_bytes() / 1048576.0, m.device_bytes() / 1048576.0);
  return s + buf;
}

double GpuTraining::flops_per_micro_batch() const {
  return impl_->model->flops_per_step();
}
double GpuTraining::peak_flops() const {
  return dense_peak_tflops(impl_->device_name, impl_->precision) * 1e12;
}

#else  // no CUDA in this build: TrainConfig::Validate already refuses train.device=cuda.

struct GpuTraining::Impl {};

StatusOr<std::unique_ptr<GpuTraining>> GpuTraining::Create(const TrainConfig&, int,
                                                           const parallel::ParallelGrid*) {
  return Status::Error(
      "train.device=cuda but this build has no CUDA support: rebuild with -DGROVE_CUDA=ON on a "
      "machine with the CUDA toolkit, or set train.device=cpu");
}
// No GpuTraining object can exist in this build (Create always fails), so these never run.
[[noreturn]] static void no_cuda() {
  GROVE_CHECK(false) << "GpuTraining used in a build without CUDA";
  std::abort();
}
float GpuTraining::forward(const int32_t*, const int32_t*) {
  no_cuda();
}
void GpuTraining::backward(float, bool) {
  no_cuda();
}
void GpuTraining::zero_grads() {
  no_cuda();
}
double GpuTraining::grad_norm() {
  no_cuda();
}
void GpuTraining::step(double, float, const TrainOptions&) {
  no_cuda();
}
float GpuTraining::moe_loss() const {
  no_cuda();
}
std::vector<std::vector<int64_t>> GpuTraining::expert_load() const {
  no_cuda();
}
void GpuTraining::store(Weights*, AdamW*) const {
  no_cuda();
}
Status GpuTraining::load(const Weights&, AdamW&) {
  no_cuda();
}
std::string GpuTraining::describe() const {
  no_cuda();
}
double GpuTraining::flops_per_micro_batch() const {
  no_cuda();
}
double GpuTraining::peak_flops() const {
  no_cuda();
}

#endif

GpuTraining::GpuTraining(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuTraining::~GpuTraining() = default;

}  // namespace grove
