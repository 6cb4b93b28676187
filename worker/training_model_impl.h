// DeviceTraining<B>: TrainingModel (worker/training_model.h) over TransformerT<B>, included by the
// translation units that instantiate a backend (worker/training_model.cc: cpu;
// worker/cuda/training_model_cuda.cc: cuda).
#pragma once

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "model/flat_adamw.h"
#include "model/transformer.h"
#include "model/transformer_impl.h"
#include "parallel/lsh_dispatcher.h"
#include "worker/trainer.h"
#include "worker/training_model.h"

namespace grove {

template <class B>
class DeviceTraining final : public TrainingModel {
 public:
  static constexpr bool kHost = kernels::kHostBackend<B>;

  // `describe`: the device part of describe(); `device_grid`: the grid's groups on device memory
  // (e.g. NCCL) that par.grid points to, kept alive by this object.
  DeviceTraining(const TrainConfig& c, int local_batch, ModelParallel par,
                 const CheckpointRank& rank, comm::Communicator* world, std::string describe,
                 double peak_flops, std::unique_ptr<parallel::ParallelGrid> device_grid = nullptr)
      : device_grid_(std::move(device_grid)),
        model_(c.model, local_batch, c.train.seq_len, c.train.recompute, par),
        opt_(c.model, c.parallel.tp, c.parallel.ep, B::kDevice),
        rank_(rank),
        world_(world),
        describe_(std::move(describe)),
        peak_(peak_flops) {
    if constexpr (!kHost) {
      host_params_ = Weights::Zeros(c.model, c.parallel.tp, c.parallel.ep);
      host_opt_ = std::make_unique<AdamW>(c.model, c.parallel.tp, c.parallel.ep);
    }
    // Each rank's share of the squared gradient norm: the flat ranges of the shards it owns.
    bool all = true;
    for (const NamedTensor& g : model_.grads().named()) {
      const ParamEntry& e = model_.layout().at(g.name);
      if (PlacementOf(g.name, g.tensor, rank_).owner)
        owned_.push_back({e.offset, e.offset + e.numel});
      else
        all = false;
    }
    if (all) owned_ = {{0, model_.layout().size}};  // one pass over the flat buffer
  }

  void set_global_step(int64_t step) override {
    for (int l = 0; l < model_.config().n_layers; ++l) {
      if constexpr (kHost) {
        parallel::MoeLayer* layer = model_.moe_layer(l);
        auto* lsh = layer ? dynamic_cast<parallel::LshDispatcher*>(&layer->dispatcher()) : nullptr;
        if (lsh) lsh->set_step(step);
      } else {
        if (LocalMoe<B>* layer = model_.moe_layer(l)) layer->set_step(step);
      }
    }
  }
  float forward(const int32_t* inputs, const int32_t* targets) override {
    return model_.forward(inputs, targets);
  }
  void backward(float loss_scale, bool finalize) override { model_.backward(loss_scale, finalize); }
  void zero_grads() override { model_.zero_grads(); }

  double grad_norm() override {
    double sq = 0.0;
    for (const auto& [begin, end] : owned_)
      sq += B::sum_squares(model_.flat_grads() + begin, end - begin);
    if (world_ != nullptr && world_->size() > 1)
      world_->all_reduce(&sq, 1, DType::kF64, comm::ReduceOp::kSum);
    return std::sqrt(sq);
  }

  void step(double norm, float lr, const TrainOptions& o) override {
    float* grads = model_.flat_grads();
    float* params = model_.flat_params();
    const ParamLayout& layout = model_.layout();
    if (o.grad_clip > 0 && norm > o.grad_clip && std::isfinite(norm))
      B::scale_inplace(grads, static_cast<float>(o.grad_clip / (norm + 1e-6)), layout.size);
    const int step = opt_.steps_taken() + 1;
    opt_.set_steps_taken(step);
    flat_adamw_step<B>(layout, params, grads, opt_.m_flat(), opt_.v_flat(), step, lr, o.beta1,
                       o.beta2, o.adam_eps, o.weight_decay);
    model_.sync_compute_weights();
  }

  void add_moe_metrics(StepMetrics* m, int grad_accum) const override {
    m->moe_loss += model_.moe_loss() / static_cast<float>(grad_accum);
    const std::vector<parallel::MoeMetrics> moe = model_.moe_metrics();
    m->expert_load.resize(moe.size());
    for (size_t i = 0; i < moe.size(); ++i) {
      m->expert_load[i].resize(moe[i].tokens_per_expert.size());
      for (size_t e = 0; e < moe[i].tokens_per_expert.size(); ++e)
        m->expert_load[i][e] += moe[i].tokens_per_expert[e];
      m->dropped_tokens += moe[i].dropped;
      m->a2a_bytes += moe[i].a2a_bytes_sent;
      m->a2a_ms += moe[i].a2a_ms();
    }
    if constexpr (kHost) {
      auto& model = const_cast<TransformerT<B>&>(model_);
      for (int l = 0; l < model.config().n_layers; ++l) {
        parallel::MoeLayer* layer = model.moe_layer(l);
        const auto* lsh =
            layer ? dynamic_cast<const parallel::LshDispatcher*>(&layer->dispatcher()) : nullptr;
        if (!lsh) continue;
        const parallel::LshMetrics& q = lsh->metrics();
        m->a2a_bytes_uncompressed += q.bytes_uncompressed;
        m->lsh_rows += q.assignments;
        m->lsh_centroids += q.centroids;
        m->lsh_residual += q.residual_norm_sum;
        m->lsh_token_norm += q.token_norm_sum;
      }
    }
  }

  Weights& host_params() override {
    if constexpr (kHost) return model_.params();
    return host_params_;
  }
  AdamW& host_opt() override {
    if constexpr (kHost) return opt_;
    return *host_opt_;
  }
  void sync_to_host() override {
    if constexpr (!kHost) {
      model_.store_params(&host_params_);
      host_opt_->copy_from(opt_);
    }
  }
  Status sync_from_host() override {
    if constexpr (!kHost) {
      GROVE_RETURN_IF_ERROR(model_.load_params(host_params_));
      opt_.copy_from(*host_opt_);
    } else {
      model_.sync_compute_weights();
    }
    return Status::Ok();
  }

  std::string describe() const override {
    char buf[200];
    std::snprintf(buf, sizeof(buf), "; %s; model + gradients + buffers %.1f MiB",
                  model_.activation_report().to_string().c_str(),
                  model_.device_bytes() / 1048576.0);
    return describe_ + buf;
  }
  double flops_per_micro_batch() const override { return model_.flops_per_step(); }
  double peak_flops() const override { return peak_; }

 private:
  std::unique_ptr<parallel::ParallelGrid> device_grid_;  // destroyed after the model
  TransformerT<B> model_;
  AdamW opt_;                        // flat m, v on the model's device
  Weights host_params_;              // device backends: host copies for checkpoints
  std::unique_ptr<AdamW> host_opt_;  // (the host backend uses model_.params() and opt_)
  CheckpointRank rank_;
  comm::Communicator* world_;
  std::string describe_;
  double peak_;
  std::vector<std::pair<int64_t, int64_t>> owned_;  // flat ranges of the shards this rank owns
};

}  // namespace grove
