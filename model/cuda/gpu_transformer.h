// GpuTransformer: the decoder of model/transformer.h on one CUDA device (DESIGN.md §3).
//
// Same math, same parameter names and the same loss normalisation as the CPU Transformer, with
// every buffer on the device and every op from kernels/cuda/ops.h:
//
//   x = wte[tokens]                                   [N, h]   N = s*b, rows ordered (s, b)
//   for each block:
//     x2 = x  + Wo · attention(rope(Wq·rms1(x)), rope(Wk·rms1(x)), Wv·rms1(x))
//     x  = x2 + Wdown · (silu(Wgate·rms2(x2)) * Wup·rms2(x2))
//   logits = lm_head · rmsf(x);  loss = mean over valid targets of cross-entropy
//
// Precision: kFp32 computes in fp32 (no TF32), so it agrees with the CPU model to fp32
// rounding. kBf16 computes in bf16 with fp32 accumulation: matrices are read from a bf16 copy of
// the fp32 master weights (refreshed by sync_compute_weights() after every optimizer step), the
// norm weights, every weight gradient, the attention lse, the norms' rstd and the losses stay
// fp32 (mixed precision as in Megatron/llm.c).
//
// Memory: the master parameters and their gradients are each ONE contiguous fp32 buffer, laid out
// in Weights::named() order, so that the optimizer, gradient clipping and the data-parallel
// all-reduce are single calls over a flat buffer (params()/grads(), layout()). Activations live
// in named per-layer buffers allocated in the constructor for a fixed (b, s), like the CPU stash.
// The attention never stores probabilities (the fused kernel recomputes them from q, k and the
// lse), so recompute=selective keeps exactly what recompute=none keeps; recompute=full keeps only
// each block's input and re-runs the block's forward in its backward.
//
// Parallelism: one device per process. With a data-parallel communicator (NCCL, device buffers)
// the loss is normalised by the valid targets of the whole data-parallel batch and backward()
// all-reduces the flat gradient buffer (over NCCL in per-block ranges started as each block's
// backward finishes, overlapping the rest of the backward), so every rank's gradients equal the
// one-process model's on the global batch. Tensor, sequence, context and expert parallelism run on
// the CPU path only for now.
//
// Mixture of experts (DESIGN.md §7): every MoE block routes, permutes, runs its experts as one
// GEMM per expert on contiguous rows, and combines, all on the device (kernels/cuda moe_*), with
// every expert local (ep = 1) and no capacity dropping; the router's aux and z losses are taken
// over the data-parallel batch, as the CPU model takes them over its stats group.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "comm/communicator.h"
#include "core/status.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/weights.h"

namespace grove {

enum class GpuPrecision { kFp32, kBf16 };
const char* gpu_precision_name(GpuPrecision p);
StatusOr<GpuPrecision> parse_gpu_precision(const std::string& s);

// The name of the current CUDA device ("NVIDIA H100 80GB HBM3"), and the data sheet's dense
// tensor-core peak for a device of that name in TFLOP/s (0 when the name is not known), the
// denominator of MFU.
std::string current_device_name();
double dense_peak_tflops(const std::string& device_name, GpuPrecision p);

// Where one named parameter lives in the flat buffers.
struct FlatEntry {
  std::string name;  // as in Weights::named(): "wte", "layers.3.wq", ...
  Shape shape;
  int64_t offset = 0;  // in elements
  int64_t numel = 0;
  bool decay = false;  // matrices take weight decay; norm weights do not
};

// The flat layout of the parameters of `c` (tp = ep = 1), in Weights::named() order.
std::vector<FlatEntry> FlatLayout(const ModelConfig& c);

class GpuTransformer {
 public:
  // Fails (Status naming the field) for configs the GPU path does not run yet, and when no CUDA
  // device is present. Parameters start as Weights::Init(config) (load_params to replace them).
  static StatusOr<std::unique_ptr<GpuTransformer>> Create(const ModelConfig& config, int batch,
                                                          int seq, Recompute mode,
                                                          GpuPrecision precision,
                                                          comm::Communicator* dp = nullptr);
  virtual ~GpuTransformer() = default;

  const ModelConfig& config() const { return config_; }
  int batch() const { return b_; }
  int seq() const { return s_; }
  GpuPrecision precision() const { return precision_; }
  const std::vector<FlatEntry>& layout() const { return layout_; }
  int64_t num_params() const { return num_params_; }

  // The fp32 master parameters and their gradients, flat on the device ([num_params()]).
  float* params() { return params_.data<float>(); }
  float* grads() { return grads_.data<float>(); }
  void zero_grads();

  // Host <-> device copies of the parameters (full, unsharded Weights of this config). Loading
  // also refreshes the bf16 compute copy.
  Status load_params(const Weights& w);
  void store_params(Weights* w) const;
  void store_grads(Weights* g) const;
  // Re-derive the bf16 compute copy from the fp32 masters (after an optimizer step). No-op fp32.
  virtual void sync_compute_weights() = 0;

  // tokens, targets: host [seq, b] row-major (row = s_idx * b + b_idx); a target < 0 is ignored.
  // Returns the mean loss over the valid targets of the whole data-parallel batch.
  virtual float forward(const int32_t* tokens, const int32_t* targets) = 0;
  // Backward of the last forward; gradients ACCUMULATE into grads() scaled by loss_scale (1 /
  // accumulation steps). `finalize` (last micro-batch) all-reduces grads() over data parallelism.
  virtual void backward(float loss_scale = 1.0f, bool finalize = true) = 0;

  // Mixture of experts: Σ over MoE layers of aux + z (times their coefficients) of the last
  // forward, added to the objective by backward() but not to forward()'s return value; and each
  // MoE layer's routed assignments per expert over the data-parallel batch.
  virtual float moe_loss() const = 0;
  virtual std::vector<std::vector<int64_t>> expert_load() const = 0;

  // Bytes of activations kept across the step, and of everything this model allocated.
  virtual int64_t activation_bytes() const = 0;
  int64_t device_bytes() const;
  // FLOPs of one forward+backward over this rank's b*s tokens (ModelConfig::training_flops).
  double flops_per_step() const;

 protected:
  GpuTransformer(const ModelConfig& c, int b, int s, Recompute mode, GpuPrecision p,
                 comm::Communicator* dp);
  // The device pointer of a named master parameter / gradient.
  float* param(const std::string& name);
  float* grad(const std::string& name);
  int64_t offset_of(const std::string& name) const;

  ModelConfig config_;
  int b_, s_;
  Recompute mode_;
  GpuPrecision precision_;
  comm::Communicator* dp_;
  std::vector<FlatEntry> layout_;
  std::unordered_map<std::string, int64_t> offsets_;  // name -> offset
  int64_t num_params_ = 0;
  Tensor params_, grads_;  // fp32 [num_params] on the device
  int64_t other_bytes_ = 0;
};

// AdamW over the flat fp32 buffers (the same update and bias correction as worker/optimizer.h;
// decay on the entries with FlatEntry::decay). m and v are flat too; store/load go through host
// Weights so checkpoints keep the CPU format ("adam_m.layers.0.wq").
class GpuAdamW {
 public:
  explicit GpuAdamW(const std::vector<FlatEntry>& layout);
  // Global L2 norm of the flat gradient (double accumulation on the device; synchronises).
  static double grad_norm(const float* grads, int64_t n);
  // grads *= scale (clipping), then one AdamW step with learning rate lr.
  void step(float* params, float* grads, float grad_scale, float lr, float beta1, float beta2,
            float eps, float weight_decay);
  int steps_taken() const { return step_; }
  void set_steps_taken(int s) { step_ = s; }
  void store(Weights* m, Weights* v) const;
  Status load(const Weights& m, const Weights& v);

 private:
  std::vector<FlatEntry> layout_;
  int64_t n_ = 0;
  Tensor m_, v_;
  int step_ = 0;
};

}  // namespace grove
